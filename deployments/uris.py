"""Which URIs the API may read, and reading them safely.

Only URIs under the configured prefixes, never a host that resolves to an address that is not globally
routable (SSRF), and an http(s) download connects to exactly the addresses that were checked: the host is
resolved once, so a DNS answer that changes between the check and the connection (rebinding) cannot lead
it elsewhere. Both functions block (DNS, network): the API calls them in a thread.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import socket
import urllib.parse
from dataclasses import dataclass

import aiohttp
import fsspec
from aiohttp.abc import AbstractResolver

from deployments.errors import ApiError

SCHEMES = ("file", "s3", "gs", "gcs", "http", "https")
COPY_BYTES = 1 << 20

# Special-purpose blocks (IANA registries) that older `ipaddress` tables count as global.
NOT_GLOBAL = [
    ipaddress.ip_network(n)
    for n in ("192.0.0.0/24", "192.88.99.0/24", "198.18.0.0/15", "64:ff9b::/96", "64:ff9b:1::/48", "2002::/16")
]
GLOBAL_EXCEPTIONS = [ipaddress.ip_address("192.0.0.9"), ipaddress.ip_address("192.0.0.10")]


@dataclass(frozen=True)
class CheckedURI:
    uri: str  # normalised
    addresses: tuple[str, ...] = ()  # http(s): the checked addresses the download must connect to


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


def is_global_address(address: str) -> bool:
    """True only for a globally routable unicast address (an IPv4-mapped IPv6 one is judged as IPv4)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in GLOBAL_EXCEPTIONS:
        return True
    return ip.is_global and not ip.is_multicast and not any(ip in net for net in NOT_GLOBAL)


def resolve_public(host: str, port: int) -> tuple[str, ...] | None:
    """Every address `host` resolves to, or None if it does not resolve or any of them is not global."""
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return None
    addresses = tuple(dict.fromkeys(info[4][0] for info in infos))
    return addresses if addresses and all(is_global_address(a) for a in addresses) else None


def check_uri(uri: str, allowed_prefixes: list[str], field: str = "video_uri") -> CheckedURI:
    """The URI to read and, for http(s), the addresses to connect to; or ApiError("uri_not_allowed")."""
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme not in SCHEMES:
        raise _refuse(uri, f"scheme {scheme or '(none)'!r}; use one of {', '.join(SCHEMES)}", field)
    target = _normalise(uri)
    prefixes = [_normalise(p).rstrip("/") + "/" for p in allowed_prefixes]
    if not any(target.startswith(p) for p in prefixes):
        raise _refuse(uri, "outside the allowed prefixes", field)
    if scheme not in ("http", "https"):
        return CheckedURI(target)
    parts = urllib.parse.urlsplit(target)
    addresses = resolve_public(parts.hostname or "", parts.port or (443 if scheme == "https" else 80))
    if addresses is None:
        raise _refuse(uri, f"host {parts.hostname!r} does not resolve to globally routable addresses only", field)
    return CheckedURI(target, addresses)


class PinnedResolver(AbstractResolver):
    """aiohttp's resolver for one host: the addresses checked before, never a second DNS lookup."""

    def __init__(self, host: str, addresses: tuple[str, ...]) -> None:
        self.host, self.addresses = host, addresses

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict]:
        if host != self.host:
            raise OSError(f"{host}: only {self.host} may be reached by this download")
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in self.addresses
        ]

    async def close(self) -> None:
        pass


def _filesystem(checked: CheckedURI, timeout_s: float):
    if not checked.addresses:
        return fsspec.core.url_to_fs(checked.uri)
    host = urllib.parse.urlsplit(checked.uri).hostname

    async def pinned_client(**kwargs) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(resolver=PinnedResolver(host, checked.addresses))
        return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s), **kwargs)

    fs = fsspec.filesystem("http", get_client=pinned_client, skip_instance_cache=True, allow_redirects=False)
    return fs, checked.uri


def too_large(size: int, limit: int) -> ApiError:
    return ApiError("payload_too_large", f"{size} bytes; the limit is {limit}")


def copy_capped(src, path: str, limit: int) -> None:
    """Copy a binary file object to `path`, refusing as soon as it passes `limit` bytes."""
    written = 0
    with open(path, "wb") as out:
        while chunk := src.read(COPY_BYTES):
            written += len(chunk)
            if written > limit:
                raise too_large(written, limit)
            out.write(chunk)


def download(checked: CheckedURI, path: str, limit: int, what: str = "video", timeout_s: float = 300.0) -> None:
    """Copy a checked URI to `path` (redirects refused: they could lead to a private address)."""
    fs, remote = _filesystem(checked, timeout_s)
    try:
        size = fs.size(remote)
        if size is not None and size > limit:
            raise too_large(size, limit)
        with fs.open(remote, "rb") as src:
            copy_capped(src, path, limit)
    except (FileNotFoundError, IsADirectoryError):
        raise ApiError(f"{what}_not_found", f"{checked.uri}: no such file") from None
    except (TimeoutError, OSError, aiohttp.ClientError) as err:
        raise ApiError(f"{what}_not_found", f"{checked.uri}: cannot be read ({type(err).__name__}: {err})") from None
