"""Catalogues (what to score) and score manifests (what was written), read and written through fsspec.

A catalogue is a Parquet/CSV/JSONL manifest with columns `id`, `video` and optional `prompt`, `seed`,
`duration`, or a glob over an fsspec URI (`s3://bucket/videos/*.mp4`), where the id is the file stem.
"""

from __future__ import annotations

import glob as globlib
import io
import math
import os
import re
import zlib

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from model.config import STATIC_PROMPT
from model.errors import InputError
from model.io import glob_uris, read_bytes, write_bytes_atomic

CATALOGUE_SUFFIXES = (".parquet", ".csv", ".jsonl", ".json")
_SAFE = re.compile(r"[^A-Za-z0-9._-]")

MANIFEST_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("video", pa.string()),
        ("prompt", pa.string()),
        ("seed", pa.int64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("audio", pa.string()),
        ("mp4", pa.string()),
        ("duration_s", pa.float64()),
        ("checkpoint", pa.string()),
        ("probe_s", pa.float64()),
        ("encode_s", pa.float64()),
        ("generate_s", pa.float64()),
        ("decode_s", pa.float64()),
        ("write_s", pa.float64()),
        ("finished_at", pa.float64()),
    ]
)


class CatalogueError(InputError):
    """A catalogue that cannot be read, with a one-line reason."""


def default_seed(video_id: str) -> int:
    """A stable per-video seed, so reruns and retries reproduce the same music."""
    return zlib.crc32(video_id.encode("utf-8"))


def output_stem(video_id: str) -> str:
    """A file-name-safe, deterministic, collision-free stem for an id."""
    safe = _SAFE.sub("_", video_id)
    return safe if safe == video_id else f"{safe}-{zlib.crc32(video_id.encode()):08x}"


def _parse_table(uri: str) -> pa.Table:
    data = read_bytes(uri)
    if uri.endswith(".parquet"):
        return pq.read_table(io.BytesIO(data))
    if uri.endswith(".csv"):
        return pacsv.read_csv(io.BytesIO(data))
    return pajson.read_json(io.BytesIO(data))


def read_table(uri: str) -> list[dict]:
    """The rows of a .parquet/.csv/.jsonl manifest at any fsspec URI; CatalogueError when unusable."""
    if not uri.endswith(CATALOGUE_SUFFIXES):
        raise CatalogueError(f"{uri}: a manifest is .parquet, .csv or .jsonl")
    try:
        rows = _parse_table(uri).to_pylist()
    except FileNotFoundError:
        raise CatalogueError(f"{uri}: no such manifest") from None
    except pa.ArrowInvalid as err:
        raise CatalogueError(f"{uri}: unreadable manifest ({' '.join(str(err).split())[:200]})") from None
    if not rows:
        raise CatalogueError(f"{uri}: the manifest is empty")
    return rows


def _glob_rows(pattern: str) -> list[dict]:
    return [{"id": os.path.splitext(os.path.basename(uri))[0], "video": uri} for uri in glob_uris(pattern)]


def read_catalogue(uri: str, default_prompt: str | None) -> list[dict]:
    """Rows with `id`, `video`, `prompt` (default: `default_prompt`, else the static prompt), `seed` (default: a
    hash of the id) and `duration` (None: the video's)."""
    if globlib.has_magic(uri):
        raw = _glob_rows(uri)
        if not raw:
            raise CatalogueError(f"{uri}: the glob matches no file")
    elif uri.endswith(CATALOGUE_SUFFIXES):
        raw = read_table(uri)
    else:
        raise CatalogueError(f"{uri}: a catalogue is a .parquet/.csv/.jsonl manifest or a glob like dir/*.mp4")
    missing = {"id", "video"} - set(raw[0])
    if missing:
        raise CatalogueError(f"{uri}: missing column(s) {', '.join(sorted(missing))}")
    rows, seen = [], set()
    for r in raw:
        vid = str(r["id"])
        if vid in seen:
            raise CatalogueError(f"{uri}: duplicate id {vid!r}")
        seen.add(vid)
        duration = r.get("duration")
        prompt = r.get("prompt")
        seed = r.get("seed")
        rows.append(
            {
                "id": vid,
                "video": str(r["video"]),
                "prompt": prompt if isinstance(prompt, str) and prompt.strip() else default_prompt or STATIC_PROMPT,
                "seed": int(seed)
                if seed is not None and not (isinstance(seed, float) and math.isnan(seed))
                else default_seed(vid),
                "duration": float(duration) if duration is not None and not math.isnan(float(duration)) else None,
            }
        )
    return rows


def write_manifest(uri: str, rows: list[dict]) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), buf)
    write_bytes_atomic(uri, buf.getvalue())


def read_manifests(uris: list[str]) -> dict[str, dict]:
    """id -> its latest row across manifest files; an unreadable file (a killed writer's) is skipped."""
    latest: dict[str, dict] = {}
    for uri in uris:
        try:
            rows = pq.read_table(io.BytesIO(read_bytes(uri))).to_pylist()
        except (pa.ArrowInvalid, OSError):
            continue
        for row in rows:
            if row["id"] not in latest or row["finished_at"] >= latest[row["id"]]["finished_at"]:
                latest[row["id"]] = row
    return latest
