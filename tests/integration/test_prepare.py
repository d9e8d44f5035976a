"""`videorobin prepare` over a real make-dataset dataset on the session's Ray cluster."""

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from model.config import load_config
from model.text import ByteTokenizer
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
