"""`videorobin prepare` over a real make-dataset dataset on the session's Ray cluster."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from model.config import load_config
from model.text import ByteTokenizer
from tests.fault_injection import job_env
from tests.media_files import dataset_with_corrupt_row, write_jsonl

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, ray_address):
    root = tmp_path_factory.mktemp("prep")
    rows = dataset_with_corrupt_row(root, clips=4, seconds=2.0)
    rows[1]["start"], rows[1]["duration"] = 0.5, 1.0  # a window inside the clip
    write_jsonl(root / "train.jsonl", rows)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.cli",
            "prepare",
            "--manifest",
            str(root / "train.jsonl"),
            "--out",
            str(root / "prepared"),
            "--address",
            ray_address,
            "--rows-per-shard",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return root / "prepared", rows, result


def test_shards_hold_latents_features_and_tokens_of_every_readable_clip(prepared):
    out, rows, result = prepared
    assert result.returncode == 1, result.stderr[-3000:]  # one row failed: the exit status says so
    cfg = load_config("tiny")
    table = pq.read_table(sorted(str(p) for p in (out / "shards").iterdir())).to_pylist()
    assert len(list((out / "shards").iterdir())) == 2  # 4 rows at 3 per shard
    by_id = {r["id"]: r for r in table}
    assert sorted(by_id) == ["clip00000", "clip00001", "clip00002", "clip00003"]
    for row in rows[:4]:
        got = by_id[row["id"]]
        seconds = row.get("duration", 2.0)
        assert got["n_frames"] == round(seconds * 25) and len(got["latents"]) == got["n_frames"] * cfg.latent_dim
        assert got["n_features"] == round(seconds * cfg.vision.fps)
        assert len(got["features"]) == got["n_features"] * cfg.vision.feature_dim
        assert got["token_ids"] == ByteTokenizer().encode(row["caption"])
        assert np.isfinite(got["latents"]).all()


def test_latent_statistics_and_errors_are_recorded(prepared):
    out, _, _ = prepared
    stats = json.loads((out / "latent_stats.json").read_text())
    assert len(stats["mean"]) == len(stats["std"]) == 16 and stats["frames"] == 50 * 3 + 25
    assert all(s > 0 for s in stats["std"])
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    assert [e["id"] for e in errors] == ["broken"] and "broken.wav" in errors[0]["error"]
    assert json.loads((out / "config.json").read_text())["latent_dim"] == 16


def _prepare(manifest, out, ray_address, *extra, env=None):
    args = [sys.executable, "-m", "jobs.cli", "prepare", "--manifest", str(manifest), "--out", str(out)]
    args += ["--address", ray_address, "--rows-per-shard", "3", *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def _files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.faults
def test_a_rerun_never_mixes_runs_and_a_row_that_raises_fails_alone(prepared, ray_address):
    """Into an existing output, a rerun is refused without --overwrite (nothing changes); with it, the output
    is exactly the new run's (no shard of the old one left beside it). In the new run PyAV raises an error the
    reader does not expect for one clip: that clip is an errors.parquet row, the other one is prepared."""
    out, rows, _ = prepared
    before = _files(out)
    refused = _prepare(out.parent / "train.jsonl", out, ray_address)
    assert refused.returncode == 2 and "pass --overwrite" in refused.stderr and "Traceback" not in refused.stderr
    assert _files(out) == before
    poison = out.parent / "poison-task-clip.wav"
    shutil.copy(rows[0]["audio"], poison)
    write_jsonl(out.parent / "small.jsonl", [rows[0], {**rows[0], "id": "poisoned", "audio": str(poison)}])
    result = _prepare(out.parent / "small.jsonl", out, ray_address, "--overwrite", env=job_env())
    assert result.returncode == 1, result.stderr[-3000:]
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard-00000.parquet"]
    assert [r["id"] for r in pq.read_table(out / "shards").to_pylist()] == [rows[0]["id"]]
    assert json.loads((out / "latent_stats.json").read_text())["frames"] == 50
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    assert [e["id"] for e in errors] == ["poisoned"] and "RuntimeError: injected fault" in errors[0]["error"]
    assert [p.name for p in out.parent.iterdir() if ".staging-" in p.name or ".old-" in p.name] == []
