"""`videorobin score` on a real local Ray cluster, over real videos, run as the console script."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from jobs.catalogue import default_seed
from model.build import build_bundle
from model.checkpoint import save_bundle
from model.config import load_config
from model.engine import Engine, GenerationParams
from model.media import write_sample_video
from tests.fault_injection import job_env
from tests.media_files import write_audio_only

pytestmark = pytest.mark.ray

DURATIONS = [2.0, 3.5, 5.0, 6.2, 8.0, 9.6, 11.0, 12.4, 14.0, 15.5, 17.8, 20.0]
HOP_S = 1920 / 48000
STEPS = "4"


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """12 good videos of 2-20 s, 2 corrupt files and 1 audio-only file, a JSONL catalogue, a checkpoint."""
    root = tmp_path_factory.mktemp("library")
    rows = []
    for i, duration in enumerate(DURATIONS):
        path = str(root / f"clip{i:02d}.mp4")
        write_sample_video(path, duration, cut_every_s=0.4 + 0.1 * i, size=64)
        rows.append({"id": f"clip{i:02d}", "video": path, "prompt": "lo-fi piano, 90 BPM" if i % 3 == 0 else None})
    with open(rows[0]["video"], "rb") as f:
        head = f.read(2000)
    (root / "corrupt_header.mp4").write_bytes(b"\x00" * 64 + head[64:])
    (root / "random_bytes.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    write_audio_only(str(root / "song.m4a"))
    rows += [
        {"id": "corrupt_header", "video": str(root / "corrupt_header.mp4")},
        {"id": "random_bytes", "video": str(root / "random_bytes.mp4")},
        {"id": "audio_only", "video": str(root / "song.m4a")},
    ]
    with open(root / "catalogue.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    save_bundle(build_bundle(load_config("tiny"), seed=0), str(root / "ckpt"))
    return root


def score(library, out, address, *extra, wait=True):
    args = [
        sys.executable,
        "-m",
        "jobs.cli",
        "score",
        "--catalogue",
        str(library / "catalogue.jsonl"),
        "--out",
        str(out),
        "--checkpoint",
        str(library / "ckpt"),
        "--decode-dtype",
        "float32",  # compared with the engine's audio below: bf16 kernels round differently per process
        "--address",
        address,
        "--steps",
        STEPS,
        "--mux",
        *extra,
    ]
    if not wait:
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    return subprocess.run(args, capture_output=True, text=True, timeout=900)


def _summary(result) -> dict:
    return dict(
        line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line and not line.startswith("score:")
    )


def _leftovers(out) -> list[str]:
    return [
        os.path.join(d, f) for d, _, files in os.walk(out) for f in files if f.startswith(".") or f.endswith(".tmp")
    ]


@pytest.fixture(scope="module")
def first_run(library, ray_address, tmp_path_factory):
    out = tmp_path_factory.mktemp("scored")
    result = score(library, out, ray_address)
    return out, result


def test_every_good_video_gets_its_soundtrack_and_bad_ones_are_failed_rows(library, first_run):
    out, result = first_run
    assert result.returncode == 1, result.stderr[-3000:]  # some rows failed: the exit status says so
    assert "score: 12 ok, 3 failed, 0 skipped" in result.stdout
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert [r["id"] for r in manifest] == [f"clip{i:02d}" for i in range(12)] + [
        "corrupt_header",
        "random_bytes",
        "audio_only",
    ]
    for row, duration in zip(manifest[:12], DURATIONS, strict=False):
        assert row["status"] == "ok" and row["error"] == ""
        info = sf.info(row["audio"])
        assert (info.samplerate, info.channels) == (48000, 2)
        assert abs(info.duration - duration) <= HOP_S, row["id"]
        with av.open(row["mp4"]) as c:
            assert sorted(s.type for s in c.streams) == ["audio", "video"]
        assert row["generate_s"] > 0 and row["decode_s"] > 0 and len(row["checkpoint"]) == 16
    errors = {r["id"]: r["error"] for r in manifest[12:]}
    assert all(r["status"] == "failed" for r in manifest[12:])
    assert "no video stream" in errors["audio_only"]
    assert "not a readable video" in errors["random_bytes"]
    assert errors["corrupt_header"].startswith("probe: ")
    assert len(os.listdir(out / "audio")) == 12 and not _leftovers(out) and not (out / "parts").exists()


def test_a_rerun_does_no_generation_work_and_leaves_the_manifest_unchanged(library, first_run, ray_address):
    out, _ = first_run
    before = pq.read_table(out / "manifest.parquet")
    stamps = {p: os.stat(out / "audio" / p).st_mtime_ns for p in os.listdir(out / "audio")}
    result = score(library, out, ray_address, "--skip-failed")
    assert result.returncode == 1
    summary = _summary(result)
    assert (summary["generated"], summary["skipped"]) == ("0", "15")
    assert float(summary["videos_per_s"]) == 0  # not one row went through the pipeline
    assert pq.read_table(out / "manifest.parquet").equals(before)
    assert {p: os.stat(out / "audio" / p).st_mtime_ns for p in os.listdir(out / "audio")} == stamps
    retried = score(library, out, ray_address)  # default: failed rows are retried, ok rows untouched
    summary = _summary(retried)
    assert (summary["generated"], summary["skipped"], summary["failed"]) == ("0", "12", "3")
    after = pq.read_table(out / "manifest.parquet").to_pylist()
    assert after[:12] == before.to_pylist()[:12]


def test_per_video_output_equals_the_engine_alone(library, first_run):
    out, _ = first_run
    row = pq.read_table(out / "manifest.parquet").to_pylist()[3]
    engine = Engine(
        __import__("model.checkpoint", fromlist=["load_bundle"]).load_bundle(str(library / "ckpt")),
        decode_dtype="float32",
    )
    request = engine.make_request(
        video=row["video"],
        prompt=row["prompt"],
        params=GenerationParams(seed=default_seed(row["id"]), steps=int(STEPS)),
    )
    assert row["seed"] == default_seed(row["id"])
    (alone,) = engine.generate([request])
    written, _ = sf.read(row["audio"], always_2d=True)
    assert written.shape == alone.audio.T.shape
    assert np.abs(written - np.clip(alone.audio.T, -1, 1)).max() < 2e-3  # 16-bit PCM quantisation
    cfg = load_config("tiny")  # what `library` saved
    hop = round(HOP_S * 48000)  # audio samples per latent frame
    assert alone.latents.shape[0] == cfg.latent_dim
    assert 0 <= alone.latents.shape[1] * hop - written.shape[0] < cfg.patch_size * hop  # whole patches cover it


@pytest.mark.faults
def test_a_killed_job_rerun_ends_with_every_video_written_once(library, ray_cluster, tmp_path):
    """One generation actor is killed mid-run, then the driver: the rerun finishes the catalogue."""
    out = tmp_path / "killed"
    proc = score(library, out, ray_cluster.address, "--rows-per-block", "1", "--generate-batch", "2", wait=False)
    deadline = time.time() + 600
    killed_actor = False
    while time.time() < deadline and proc.poll() is None:
        written = len(os.listdir(out / "audio")) if (out / "audio").exists() else 0
        if written >= 1 and not killed_actor:
            killed_actor = ray_cluster.kill_one("GenerateLatents") is not None
        if written >= 2 and killed_actor:
            break
        time.sleep(0.2)
    assert killed_actor and proc.poll() is None, "the job finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    written_before = len(os.listdir(out / "audio"))
    assert 2 <= written_before < 12
    result = score(library, out, ray_cluster.address)
    assert result.returncode == 1, result.stderr[-3000:]
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    ids = [r["id"] for r in manifest]
    assert len(ids) == len(set(ids)) == 15
    assert sum(r["status"] == "ok" for r in manifest) == 12
    assert sorted(os.listdir(out / "audio")) == [f"clip{i:02d}.wav" for i in range(12)]
    assert sorted(os.listdir(out / "mp4")) == [f"clip{i:02d}.mp4" for i in range(12)]
    assert not _leftovers(out) and not (out / "parts").exists()
    for row in manifest[:12]:
        assert abs(sf.info(row["audio"]).duration - DURATIONS[int(row["id"][4:])]) <= HOP_S


def test_the_jobs_metrics_reach_prometheus(first_run, metrics_port):
    deadline, text = time.time() + 60, ""
    while time.time() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        if "ray_videorobin_score_videos_total{" in text and "ray_videorobin_score_stage_seconds_bucket" in text:
            break
        time.sleep(2)
    written = [
        line
        for line in text.splitlines()
        if line.startswith("ray_videorobin_score_videos_total{") and 'stage="write"' in line and 'status="ok"' in line
    ]
    assert written and sum(float(line.rsplit(" ", 1)[1]) for line in written) >= 12
    assert "ray_videorobin_score_audio_seconds_total" in text


@pytest.mark.faults
def test_a_row_that_raises_in_any_stage_fails_alone_and_only_scores_own_leftovers_go(library, ray_address, tmp_path):
    """PyAV raises an unexpected error for one video in probe (a task), one in generation's set-up and one in
    the middle of the batched patch loop (actors): each is a `failed` row with its stage, every other row is
    `ok`. Files under --out that score did not write survive the leftover clean-up; its own are removed."""
    videos, out = tmp_path / "videos", tmp_path / "out"
    videos.mkdir()
    spec = {"good-a": 2.0, "poison-task-b": 2.0, "poison-actor-c": 2.0, "poison-late-d": 12.0, "good-e": 12.0}
    rows = []
    for name, seconds in spec.items():
        write_sample_video(str(videos / f"{name}.mp4"), seconds, cut_every_s=0.5, size=64)
        rows.append({"id": name, "video": str(videos / f"{name}.mp4")})
    with open(tmp_path / "catalogue.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    (out / "audio").mkdir(parents=True)
    (out / "notes").mkdir()
    theirs = [out / ".keep", out / "notes" / ".draft.txt", out / "audio" / ".clip.wav.tmp"]
    for path in theirs:
        path.write_text("not score's")
    ours = out / "audio" / f".good-a.wav.{'0' * 32}.wav"  # what a killed writer leaves
    ours.write_bytes(b"half a file")
    args = [sys.executable, "-m", "jobs.cli", "score", "--catalogue", str(tmp_path / "catalogue.jsonl")]
    args += ["--out", str(out), "--checkpoint", str(library / "ckpt"), "--address", ray_address, "--steps", STEPS]
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, env={**os.environ, **job_env()})
    assert result.returncode == 1, result.stderr[-3000:]  # some rows failed: the exit status says so
    manifest = {r["id"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    assert {k: r["status"] for k, r in manifest.items()} == {
        "good-a": "ok",
        "poison-task-b": "failed",
        "poison-actor-c": "failed",
        "poison-late-d": "failed",
        "good-e": "ok",
    }
    assert manifest["poison-task-b"]["error"].startswith("probe: injected fault")
    assert manifest["poison-actor-c"]["error"].startswith("generate: injected fault")
    assert (
        manifest["poison-late-d"]["error"].startswith("generate: ")
        and "injected fault" in manifest["poison-late-d"]["error"]
    )
    for name in ("good-a", "good-e"):
        assert abs(sf.info(manifest[name]["audio"]).duration - spec[name]) <= HOP_S
    assert all(path.read_text() == "not score's" for path in theirs)
    assert not ours.exists()


@pytest.mark.faults
def test_log_json_makes_the_workers_log_lines_json_objects_too(ray_cluster, tmp_path):
    """Under --log-json, a line logged inside a generation actor (a batch that raised: the fault hook fails
    PyAV on the video's later windows) is one JSON object in the job's worker logs, the files under the
    cluster's session dir where score's workers write (score does not forward them to the driver)."""
    video = tmp_path / "poison-late-json.mp4"
    write_sample_video(str(video), 12.0, cut_every_s=0.5, size=64)
    (tmp_path / "catalogue.jsonl").write_text(json.dumps({"id": "late", "video": str(video)}) + "\n")
    args = [sys.executable, "-m", "jobs.cli", "--log-json", "score", "--catalogue", str(tmp_path / "catalogue.jsonl")]
    args += ["--out", str(tmp_path / "out"), "--preset", "tiny", "--address", ray_cluster.address, "--steps", "1"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, env={**os.environ, **job_env()})
    assert result.returncode == 1, result.stderr[-3000:]  # the poisoned row failed
    logs = Path(ray_cluster.temp_dir, "session_latest", "logs").glob("worker-*.err")
    lines = [line for path in logs for line in path.read_text().splitlines() if video.name in line]
    assert lines and all(line.startswith("{") for line in lines), lines  # in text: the traceback's last line
    records = [json.loads(line) for line in lines]
    (warning,) = [r for r in records if r["message"].startswith("a generation batch failed")]
    assert (warning["levelname"], warning["name"]) == ("WARNING", "jobs.score")
    assert f"injected fault: PyAV cannot open {video.name}" in warning["exc_text"]  # the traceback, in the object
