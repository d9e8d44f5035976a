import json

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.catalogue import (
    CatalogueError,
    default_seed,
    output_stem,
    read_catalogue,
    read_manifests,
    write_manifest,
)
from model.config import STATIC_PROMPT


def test_manifest_formats_agree(tmp_path):
    rows = [
        {"id": "a", "video": "s3://b/a.mp4", "prompt": "jazz", "seed": 7, "duration": 3.0},
        {"id": "b", "video": "s3://b/b.mp4", "prompt": None, "seed": None, "duration": None},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "c.csv").write_text("id,video,prompt,seed,duration\na,s3://b/a.mp4,jazz,7,3.0\nb,s3://b/b.mp4,,,\n")
    expected = [
        {"id": "a", "video": "s3://b/a.mp4", "prompt": "jazz", "seed": 7, "duration": 3.0},
        {"id": "b", "video": "s3://b/b.mp4", "prompt": "calm", "seed": default_seed("b"), "duration": None},
    ]
    for name in ("c.parquet", "c.jsonl", "c.csv"):
        assert read_catalogue(str(tmp_path / name), "calm") == expected, name
    assert read_catalogue(str(tmp_path / "c.jsonl"), None)[1]["prompt"] == STATIC_PROMPT


def test_a_glob_over_local_and_fsspec_uris_lists_videos(tmp_path):
    for name in ("b.mp4", "a.mp4", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [r["id"] for r in read_catalogue(str(tmp_path / "*.mp4"), None)] == ["a", "b"]
    fs = fsspec.filesystem("memory")
    fs.pipe({"/lib/x/one.mp4": b"1", "/lib/x/two.mp4": b"2"})
    rows = read_catalogue("memory://lib/x/*.mp4", None)
    assert [(r["id"], r["video"]) for r in rows] == [
        ("one", "memory:///lib/x/one.mp4"),
        ("two", "memory:///lib/x/two.mp4"),
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"id": "a"}\n', "missing column"),
        ('{"id": "a", "video": "x"}\n{"id": "a", "video": "y"}\n', "duplicate id"),
        ("", "empty|unreadable"),
        ("not json at all\n", "unreadable"),
    ],
)
def test_bad_catalogues_are_refused_with_a_reason(tmp_path, content, message):
    (tmp_path / "c.jsonl").write_text(content)
    with pytest.raises(CatalogueError, match=message):
        read_catalogue(str(tmp_path / "c.jsonl"), None)


def test_missing_catalogue_and_unknown_kind(tmp_path):
    with pytest.raises(CatalogueError, match="no such manifest"):
        read_catalogue(str(tmp_path / "nope.parquet"), None)
    with pytest.raises(CatalogueError, match="manifest or a glob"):
        read_catalogue(str(tmp_path / "videos.txt"), None)


def test_output_names_are_safe_deterministic_and_distinct():
    assert output_stem("clip-01") == "clip-01"
    assert output_stem("a/b") != output_stem("a_b") and output_stem("a/b") == output_stem("a/b")
    assert "/" not in output_stem("../../etc/passwd")


def test_latest_manifest_row_wins_and_a_truncated_part_is_skipped(tmp_path):
    base = {k: None for k in ("video", "prompt", "error", "audio", "mp4", "checkpoint")} | {
        "seed": 1,
        "duration_s": 1.0,
        "probe_s": 0.0,
        "encode_s": 0.0,
        "generate_s": 0.0,
        "decode_s": 0.0,
        "write_s": 0.0,
    }
    write_manifest(str(tmp_path / "m1.parquet"), [base | {"id": "a", "status": "failed", "finished_at": 1.0}])
    write_manifest(str(tmp_path / "m2.parquet"), [base | {"id": "a", "status": "ok", "finished_at": 2.0}])
    (tmp_path / "m3.parquet").write_bytes((tmp_path / "m2.parquet").read_bytes()[:40])
    latest = read_manifests([str(tmp_path / f"m{i}.parquet") for i in (2, 1, 3)])
    assert latest["a"]["status"] == "ok"
