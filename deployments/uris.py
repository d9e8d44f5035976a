"""Which `video_uri`s the API may read: only under configured prefixes, never a private address (SSRF)."""

from __future__ import annotations

import ipaddress
import os
import posixpath
import socket
import urllib.parse

from deployments.errors import ApiError

SCHEMES = ("file", "s3", "gs", "gcs", "http", "https")


def _refuse(uri: str, why: str, field: str) -> ApiError:
    return ApiError("uri_not_allowed", f"{field} {uri!r} is not allowed: {why}")


def _normalise(uri: str) -> str:
    """scheme://host/path with `..` and `.` resolved; file paths also through symlinks."""
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return "file://" + os.path.realpath(urllib.parse.unquote(parts.path))
    path = posixpath.normpath(parts.path or "/") if parts.path else "/"
    return urllib.parse.urlunsplit((scheme, parts.netloc.lower(), path, "", ""))


def _public_host(host: str) -> bool:
    """True only if every address `host` resolves to is a public unicast one."""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast:
            return False
        if ip.is_unspecified:
            return False
    return True


def check_video_uri(uri: str, allowed_prefixes: list[str], field: str = "video_uri") -> str:
    """The normalised URI to read, or ApiError("uri_not_allowed")."""
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme not in SCHEMES:
        raise _refuse(uri, f"scheme {scheme or '(none)'!r}; use one of {', '.join(SCHEMES)}", field)
    target = _normalise(uri)
    prefixes = [_normalise(p).rstrip("/") + "/" for p in allowed_prefixes]
    if not any(target.startswith(p) for p in prefixes):
        raise _refuse(uri, "outside the allowed prefixes", field)
    if scheme in ("http", "https"):
        host = urllib.parse.urlsplit(target).hostname or ""
        if not _public_host(host):
            raise _refuse(uri, f"host {host!r} is a private, loopback or link-local address", field)
    return target
