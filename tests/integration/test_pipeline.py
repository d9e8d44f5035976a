"""The default model's recipe in miniature (jobs/recipes/ci.yaml), end to end on the session's Ray cluster:
make-dataset -> train-tokenizer -> train-vae -> evaluate-vae -> prepare -> t2m -> v2m -> quality -> publish,
then the published model generates from a prompt alone and for a video, and a rerun redoes nothing."""

import hashlib
import json
import subprocess
import sys

import pytest
import soundfile as sf

from jobs.pipeline import STEPS

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _cli(*args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def chain(tmp_path_factory, ray_address):
    root = tmp_path_factory.mktemp("pipeline")
    out, published = root / "run", root / "published"
    result = _cli(
        "pipeline", "--recipe", "ci", "--out", str(out), "--address", ray_address, "--publish", str(published)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, published


def test_every_step_of_the_recipe_ran_and_is_recorded(chain):
    out, _ = chain
    record = json.loads((out / "pipeline.json").read_text())
    assert set(record["steps"]) == set(STEPS)
    for name, step in record["steps"].items():
        assert step["wall_s"] > 0 and "CPU" in step["device"], name
    heldout = [json.loads(line) for line in (out / "dataset" / "heldout.jsonl").read_text().splitlines()]
    train = [json.loads(line) for line in (out / "dataset" / "train.jsonl").read_text().splitlines()]
    assert heldout and train and not {r["piece"] for r in heldout} & {r["piece"] for r in train}
    vae = json.loads((out / "vae_report" / "vae_metrics.json").read_text())["summary"]
    assert vae["clips"] == 2 and vae["stft_distance"] > 0 and 0 <= vae["key_kept"] <= 1
    quality = json.loads((out / "quality" / "quality.json").read_text())["conditions"]
    assert set(quality) == {"references", "prompted", "still_video"}
    assert quality["references"]["fd_musicnn"] < 1e-3  # the references against themselves
    assert quality["prompted"]["clips"] == 2


def test_the_published_model_is_fp16_with_a_provenance_that_matches_its_files(chain):
    out, published = chain
    provenance = json.loads((published / "provenance.json").read_text())
    for name, digest in provenance["files"].items():
        assert hashlib.sha256((published / name).read_bytes()).hexdigest() == digest, name
    assert "config.json" in provenance["files"] and provenance["bytes"] < 50 * 2**20
    assert provenance["recipe"]["t2m"]["steps"] == 3 and set(provenance["steps"]) == set(STEPS)
    assert provenance["quality"]["prompted"]["clips"] == 2
    from safetensors import safe_open

    with safe_open(str(published / "model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float16"}
    config = json.loads((published / "config.json").read_text())
    assert config["vae"]["family"] == "spectral" and config["text"]["tokenizer"] == "tokenizer"


def test_the_published_model_writes_music_from_a_prompt_alone_and_for_a_video(chain, tmp_path):
    out, published = chain
    wav = tmp_path / "prompt.wav"
    result = _cli("generate", "--checkpoint", str(published), "--prompt", "a slow piano piece in A minor, 70 BPM",
                  "--duration", "2.5", "--out", str(wav), "--steps", "2", timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    audio, rate = sf.read(wav)
    assert rate == 48000 and audio.shape == (120000, 2) and abs(audio).max() > 0
    video = json.loads((out / "dataset" / "heldout.jsonl").read_text().splitlines()[0])["video"]
    result = _cli("generate", "--checkpoint", str(published), "--video", video, "--out", str(tmp_path / "v.wav"),
                  "--steps", "2", timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert sf.info(str(tmp_path / "v.wav")).duration == pytest.approx(3.0, abs=0.05)


def test_a_rerun_skips_every_finished_step_and_a_lost_export_is_redone_alone(chain, ray_address):
    out, _ = chain
    result = _cli("pipeline", "--recipe", "ci", "--out", str(out), "--address", ray_address)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("complete, skipped") == len(STEPS) and ": running" not in result.stderr
    (out / "v2m" / "training.json").unlink()
    result = _cli("pipeline", "--recipe", "ci", "--out", str(out), "--address", ray_address, "--only", "v2m")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "v2m: running" in result.stderr and "t2m: running" not in result.stderr
    assert json.loads((out / "v2m" / "training.json").read_text())["step"] == 3  # the run resumed at its end


def test_bad_recipes_and_steps_are_one_line_errors(tmp_path, ray_address):
    for args, message in (
        (["--recipe", "nope"], "unknown recipe"),
        (["--recipe", "ci", "--set", "t2m=["], "recipe"),
        (["--recipe", "ci", "--only", "train-everything"], "unknown step"),
        (["--recipe", "ci", "--set", "shipping.fast=1"], "shipping"),
    ):
        result = _cli("pipeline", "--out", str(tmp_path / "x"), "--address", ray_address, *args, timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (args, result.stderr[-1500:])
        assert message in result.stderr and result.stderr.count("\n") == 1, (args, result.stderr)
