"""`videorobin train` on the session's Ray cluster: 2 CPU workers (gloo), DeepSpeed ZeRO-2, real prepared data.

make-dataset -> prepare (with a corrupt audio row) -> train t2m -> train v2m from its export -> generate,
distill a few-step LocDiT from the t2m export -> generate, plus loss going down, resume after a killed driver,
and recovery from a killed worker.
"""

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import soundfile as sf
import torch

from jobs.train_runs import latest_train_state
from model.weights import read_safetensors
from tests.media_files import dataset_with_corrupt_row, write_jsonl

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, timeout=timeout)


def _train_args(data, storage, ray_address, name, steps, *extra) -> list[str]:
    return [
        "train",
        "--data",
        str(data),
        "--storage",
        str(storage),
        "--address",
        ray_address,
        "--name",
        name,
        "--steps",
        str(steps),
        "--workers",
        "2",
        "--batch-size",
        "2",
        "--clip-seconds",
        "2",
        "--log-every",
        "1",
        *extra,
    ]


def _has_checkpoint(storage, name) -> bool:
    try:
        return latest_train_state(str(storage), name) is not None
    except (FileNotFoundError, json.JSONDecodeError):  # Ray is writing the snapshot this moment
        return False


def _final_state(storage, name) -> dict:
    """train_state.json of the run's latest registered checkpoint."""
    return latest_train_state(str(storage), name)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, ray_address):
    root = tmp_path_factory.mktemp("train")
    write_jsonl(root / "train.jsonl", dataset_with_corrupt_row(root, clips=16, seconds=2.0))
    result = _cli(
        "prepare", "--manifest", str(root / "train.jsonl"), "--out", str(root / "prepared"), "--address", ray_address
    )
    assert result.returncode == 1, result.stderr[-3000:]  # the corrupt row is reported, the rest prepared
    assert "failed: 1" in result.stdout and "prepared: 16" in result.stdout
    return root


def _train_gauges(metrics_port: int, run: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    lines = [line for line in text.splitlines() if line.startswith("ray_videorobin_train_") and f'run="{run}"' in line]
    return {line.split("{", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines}


@pytest.fixture(scope="module")
def stage1(prepared, ray_address, metrics_port):
    """A 30-step stage-1 run, exported; Ray's Prometheus endpoint is scraped while it trains."""
    cmd = [
        *(sys.executable, "-m", "jobs.cli"),
        *_train_args(prepared / "prepared", prepared / "runs", ray_address, "t2m", 30, "--stage", "t2m"),
        *("--lr", "2e-3", "--checkpoint-every", "15", "--export", str(prepared / "t2m_export")),
    ]
    out, err = prepared / "t2m.out", prepared / "t2m.err"
    scraped: list[dict[str, float]] = []
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, text=True)
        while proc.poll() is None:
            scraped.append(_train_gauges(metrics_port, "t2m"))
            time.sleep(1)
    result = subprocess.CompletedProcess(cmd, proc.returncode, out.read_text(), err.read_text())
    assert result.returncode == 0, result.stderr[-4000:]
    return result, [g for g in scraped if g]


def test_stage1_learns_then_stage2_exports_a_checkpoint_that_generate_loads(prepared, stage1, ray_address):
    root, storage = prepared, prepared / "runs"
    stage1, _ = stage1
    assert "steps: 30" in stage1.stdout and "step 30/30 loss" in stage1.stdout + stage1.stderr  # progress
    losses = [h["loss"] for h in _final_state(storage, "t2m")["history"]]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    print(f"\nstage 1 loss over 30 steps: first five {first:.3f}, last five {last:.3f}")
    assert len(losses) == 30 and last < 0.8 * first
    assert json.loads((root / "t2m_export" / "config.json").read_text())["vision"] is None

    v2m = _cli(
        *_train_args(root / "prepared", storage, ray_address, "v2m", 2, "--stage", "v2m", "--input-mask", "0.2"),
        "--init-from",
        str(root / "t2m_export"),
        "--export",
        str(root / "v2m_export"),
    )
    assert v2m.returncode == 0, v2m.stderr[-4000:]
    provenance = json.loads((root / "v2m_export" / "training.json").read_text())
    assert provenance["stage"] == "v2m" and provenance["step"] == 2
    assert provenance["init_from"] == str(root / "t2m_export")
    # Stage 2 starts from stage 1: its first loss is well below a fresh model's.
    assert _final_state(storage, "v2m")["history"][0]["loss"] < 0.8 * first

    video = root / "data" / "video" / "clip00000.mp4"
    gen = _cli(
        "generate",
        "--checkpoint",
        str(root / "v2m_export"),
        "--video",
        str(video),
        "--out",
        str(root / "out.wav"),
        "--steps",
        "4",
    )
    assert gen.returncode == 0, gen.stderr[-3000:]
    audio, rate = sf.read(root / "out.wav")
    assert rate == 48000 and audio.shape == (2 * 48000, 2)


def test_distill_trains_only_locdit_and_exports_a_few_step_model_that_generate_loads(prepared, stage1, ray_address):
    root, teacher, student = prepared, prepared / "t2m_export", prepared / "distilled"
    distill = _cli(
        *_train_args(root / "prepared", root / "runs", ray_address, "distill", 4, "--stage", "distill"),
        *("--init-from", str(teacher), "--student-steps", "2", "--teacher-steps", "4", "--distill-patches", "16"),
        *("--lr", "1e-3", "--export", str(student)),
    )
    assert distill.returncode == 0, distill.stderr[-4000:]
    assert "train distill: 4 steps" in distill.stdout
    config = json.loads((student / "config.json").read_text())
    assert config["flow"]["steps"] == 2 and config["flow"]["solver"] == "euler"  # requests default to few steps
    provenance = json.loads((student / "training.json").read_text())
    assert provenance["stage"] == "distill" and provenance["distill"]["teacher_steps"] == 4
    before, after = (read_safetensors(str(d / "model.safetensors")) for d in (teacher, student))
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k].float(), after[k].float())}
    assert changed and all(k.startswith("locdit.") for k in changed)  # the AR-Head is the teacher's, bit for bit
    assert (student / "latent_stats.json").read_text() == (teacher / "latent_stats.json").read_text()

    gen = _cli(
        *("generate", "--checkpoint", str(student), "--prompt", "a calm piano piece", "--duration", "2"),
        *("--out", str(root / "fast.wav")),
    )
    assert gen.returncode == 0, gen.stderr[-3000:]
    audio, rate = sf.read(root / "fast.wav")
    assert rate == 48000 and audio.shape == (2 * 48000, 2)


def test_resumed_run_takes_the_steps_an_unbroken_run_takes(prepared, ray_address):
    storage, data = prepared / "runs", prepared / "prepared"
    common = ("--stage", "t2m", "--checkpoint-every", "2")
    whole = _cli(*_train_args(data, storage, ray_address, "whole", 6, *common))
    assert whole.returncode == 0, whole.stderr[-4000:]

    # The same run, its driver killed once the first checkpoint is registered, then resumed.
    cmd = [sys.executable, "-m", "jobs.cli", *_train_args(data, storage, ray_address, "broken", 6, *common)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not _has_checkpoint(storage, "broken") and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL  # it was stopped before finishing
    stopped_at = _final_state(storage, "broken")["step"]
    assert stopped_at < 6

    refused = _cli(*_train_args(data, storage, ray_address, "broken", 6, *common))
    assert refused.returncode == 2 and "--resume" in refused.stderr  # never continues a run silently
    resumed = _cli(*_train_args(data, storage, ray_address, "broken", 6, *common, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-4000:]

    a, b = _final_state(storage, "whole"), _final_state(storage, "broken")
    assert b["resumed_at"] == [stopped_at] and b["step"] == 6
    for x, y in zip(a["history"][stopped_at:], b["history"][stopped_at:], strict=True):
        assert y["step"] == x["step"]
        assert y["lr"] == pytest.approx(x["lr"], rel=1e-6)
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4, abs=1e-5)


def _kill_one_worker_after_first_checkpoint(storage, name, cluster, killed: list) -> None:
    """Kills one RayTrainWorker of the session's cluster (never another cluster's) once `name` has a checkpoint."""
    deadline = time.time() + 300
    while not _has_checkpoint(storage, name) and time.time() < deadline:
        time.sleep(0.05)
    pid = cluster.kill_one("RayTrainWorker")
    if pid is not None:
        killed.append(pid)


def test_a_killed_worker_is_recovered_from_the_latest_checkpoint(prepared, ray_cluster, ray_address):
    storage = prepared / "runs"
    killed: list[int] = []
    killer = threading.Thread(
        target=_kill_one_worker_after_first_checkpoint, args=(storage, "lost", ray_cluster, killed)
    )
    killer.start()
    result = _cli(
        *_train_args(
            prepared / "prepared",
            storage,
            ray_address,
            "lost",
            8,
            "--stage",
            "t2m",
            "--checkpoint-every",
            "2",
            "--max-failures",
            "2",
        )
    )
    killer.join()
    assert killed, "no training worker was found to kill"
    assert result.returncode == 0, result.stderr[-4000:]
    state = _final_state(storage, "lost")
    assert state["step"] == 8 and len(state["resumed_at"]) == 1 and state["resumed_at"][0] >= 2
    assert [h["step"] for h in state["history"]] == list(range(1, 9))


def test_training_metrics_reach_prometheus_while_it_trains(stage1):
    _, scraped = stage1
    assert scraped, "no ray_videorobin_train_* gauge was scraped during the run"
    steps = [g["ray_videorobin_train_step"] for g in scraped if "ray_videorobin_train_step" in g]
    assert steps == sorted(steps) and 0 < steps[-1] <= 30
    for name in ("loss", "lr", "grad_norm", "samples_per_second", "patches_per_second"):
        assert scraped[-1].get(f"ray_videorobin_train_{name}", 0) > 0, name
