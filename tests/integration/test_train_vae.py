"""`videorobin train-vae` on the session's Ray cluster over real renders (one corrupt file among them), then
the export through `prepare --vae` and `evaluate-vae`."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from jobs.train_runs import latest_train_state
from jobs.train_vae import read_export
from model.config import SpectralVAEConfig
from model.media import read_audio
from model.vae import load_vae
from tests.media_files import dataset_with_corrupt_row, write_jsonl

pytestmark = [pytest.mark.ray, pytest.mark.slow]

NARROW = ["vae.width=64", "vae.encoder_frame_blocks=1", "vae.encoder_latent_blocks=1", "vae.decoder_latent_blocks=1",
          "vae.decoder_frame_blocks=2"]  # fmt: skip


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, timeout=timeout)


def _train_vae(manifest, storage, address, steps, *extra) -> subprocess.CompletedProcess:
    sets = [a for s in NARROW for a in ("--set", s)]
    return _cli("train-vae", "--manifest", str(manifest), "--storage", str(storage), "--steps", str(steps),
                "--address", address, "--batch-size", "4", "--crop-seconds", "1", "--checkpoint-every", "20",
                "--log-every", "5", "--lr", "2e-3", *sets, *extra)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ray_address):
    root = tmp_path_factory.mktemp("train_vae")
    rows = dataset_with_corrupt_row(root, clips=6, seconds=3.0)
    write_jsonl(root / "clips.jsonl", rows)
    write_jsonl(root / "good.jsonl", rows[:-1])
    result = _train_vae(root / "clips.jsonl", root / "runs", ray_address, 40, "--export", str(root / "vae"))
    assert result.returncode == 0, result.stderr[-3000:]
    return root, result


def test_loss_falls_and_the_corrupt_clip_is_skipped_not_fatal(trained):
    root, result = trained
    history = latest_train_state(str(root / "runs"), "videorobin-vae")["history"]
    losses = [h["loss"] for h in history]
    assert len(losses) == 40 and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    assert "skipping broken" in result.stderr


def test_the_export_loads_through_the_vae_config_and_encodes_real_audio(trained):
    root, _ = trained
    cfg = read_export(str(root / "vae"))
    assert isinstance(cfg, SpectralVAEConfig) and cfg.width == 64 and cfg.checkpoint.endswith("vae.safetensors")
    vae = load_vae(cfg)
    row = json.loads((root / "good.jsonl").read_text().splitlines()[0])
    audio = torch.from_numpy(read_audio(row["audio"], 48000))[None]
    latents = vae.encode(audio)
    assert latents.shape == (1, cfg.latent_dim, 75)  # 3 s at 25 latents per second
    assert vae.decode(latents).shape == (1, 2, 75 * 1920)


def test_a_finished_run_is_refused_without_resume_and_extended_with_it(trained, ray_address):
    root, _ = trained
    refused = _train_vae(root / "clips.jsonl", root / "runs", ray_address, 44)
    assert refused.returncode == 2 and "--resume" in refused.stderr and "Traceback" not in refused.stderr
    resumed = _train_vae(root / "clips.jsonl", root / "runs", ray_address, 44, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    state = latest_train_state(str(root / "runs"), "videorobin-vae")
    assert state["step"] == 44 and state["resumed_at"] == [40]


def test_prepare_encodes_with_the_trained_vae_and_evaluate_vae_reports_it(trained, ray_address):
    root, _ = trained
    result = _cli("prepare", "--manifest", str(root / "good.jsonl"), "--out", str(root / "prepared"), "--preset",
                  "small", "--vae", str(root / "vae"), "--address", ray_address)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    config = json.loads((root / "prepared" / "config.json").read_text())
    assert config["vae"]["family"] == "spectral" and config["vae"]["width"] == 64
    import pyarrow.parquet as pq

    shard = pq.read_table(next((root / "prepared" / "shards").glob("*.parquet"))).to_pylist()
    assert (
        len(shard) == 6
        and {r["n_frames"] for r in shard} == {75}
        and len(shard[0]["latents"]) == 75 * config["latent_dim"]
    )
    report_dir = root / "report"
    result = _cli("evaluate-vae", "--vae", str(root / "vae"), "--manifest", str(root / "good.jsonl"), "--clips", "3",
                  "--figures", "1", "--out", str(report_dir), "--address", ray_address, "--actors", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((root / "report" / "vae_metrics.json").read_text())
    assert report["summary"]["clips"] == 3 and report["summary"]["stft_distance"] > 0
    assert {"key_kept", "tempo_kept", "mel_distance"} <= set(report["summary"])
    assert len(list((root / "report" / "spectrograms").glob("*.png"))) == 1


def test_bad_inputs_are_one_line_errors(tmp_path, ray_address):
    cases = (
        (["train-vae", "--manifest", str(tmp_path / "none.jsonl"), "--storage", str(tmp_path), "--steps", "2",
          "--address", ray_address], "none.jsonl"),
        (["train-vae", "--manifest", str(tmp_path / "none.jsonl"), "--storage", str(tmp_path), "--steps", "2",
          "--preset", "tiny"], "spectral"),
        (["prepare", "--manifest", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "p"), "--vae",
          str(tmp_path / "no-vae")], "no-vae"),
        (["evaluate-vae", "--vae", str(tmp_path / "no-vae"), "--manifest", "m.jsonl", "--out", str(tmp_path)],
         "neither a train-vae export"),
    )  # fmt: skip
    for args, message in cases:
        result = _cli(*args, timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (args, result.stderr[-1500:])
        assert message in result.stderr, (args, result.stderr[-1500:])
