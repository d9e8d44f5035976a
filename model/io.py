"""Reading and writing files at local paths or fsspec URIs (s3://, gs://, memory://, ...).

Writes go to a temporary name beside the target and are renamed into place, so a crash never leaves a
half-written file under its final name. Torch-free, so media workers import it cheaply (`model/weights.py`
holds the tensor files).
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

import fsspec


def _is_local(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def is_local_uri(uri: str) -> bool:
    return _is_local(fsspec.core.url_to_fs(uri)[0])


def absolute_uri(uri: str) -> str:
    """A relative local path made absolute (other processes, e.g. Ray workers, run in other directories)."""
    return uri if "://" in uri else os.path.abspath(uri)


def glob_uris(pattern: str) -> list[str]:
    """Sorted URIs matching a glob at any fsspec URI (local results stay plain paths)."""
    fs, path = fsspec.core.url_to_fs(pattern)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    matches = sorted(fs.glob(path))
    return matches if _is_local(fs) else [f"{protocol}://{m}" for m in matches]


def uri_join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def uri_exists(uri: str) -> bool:
    fs, path = fsspec.core.url_to_fs(uri)
    return fs.exists(path)


def open_uri(uri: str, mode: str = "rb"):
    return fsspec.open(uri, mode).open()


def read_bytes(uri: str) -> bytes:
    with open_uri(uri, "rb") as f:
        return f.read()


TEMP_SIBLING = re.compile(r"^\..+\.[0-9a-f]{32}\.[A-Za-z0-9]+$")


def temp_sibling(path: str, suffix: str = ".tmp") -> str:
    """A hidden temporary name beside `path`, `.<name>.<32 hex digits><suffix>`: what every writer here
    writes before the move onto `path`, and the only names a job may treat as its own leftovers."""
    parent, name = os.path.split(path)
    return os.path.join(parent, f".{name}.{uuid.uuid4().hex}{suffix or '.tmp'}")


def is_temp_sibling(name: str) -> bool:
    return TEMP_SIBLING.match(os.path.basename(name)) is not None


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write `data` to a temporary sibling, then move it onto `uri` (the sibling is removed if that fails)."""
    fs, path = fsspec.core.url_to_fs(uri)
    parent = os.path.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)


@contextmanager
def local_copy(uri: str, suffix: str = ""):
    """A local path holding `uri`'s bytes, for libraries that only take file names (open_clip, PyAV)."""
    fs, path = fsspec.core.url_to_fs(uri)
    if _is_local(fs):
        yield str(Path(path))
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "data" + suffix)
        fs.get(path, local)
        yield local


@contextmanager
def local_dir_copy(uri: str):
    """A local directory holding the tree at `uri` (for transformers' `from_pretrained`)."""
    fs, path = fsspec.core.url_to_fs(uri)
    if _is_local(fs):
        yield str(Path(path))
        return
    with tempfile.TemporaryDirectory() as tmp:
        fs.get(path.rstrip("/") + "/", tmp, recursive=True)
        yield tmp
