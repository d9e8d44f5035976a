"""`videorobin evaluate` end to end: real renders, real videos with cuts, a real Ray cluster, the CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from jobs.catalogue import write_manifest
from jobs.dataset import make_dataset
from tests.media_files import write_jsonl

# Every test starts Ray: `library` runs make_dataset in this process (a private local cluster).
pytestmark = pytest.mark.ray

SECONDS = 8.0


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """8 rendered pieces with their videos and prompts; a perfect generator (the references themselves,
    plus one corrupt file) and a bad one (noise), the latter given as a `score` manifest."""
    root = tmp_path_factory.mktemp("evaluate")
    rows = [json.loads(line) for line in open(make_dataset(str(root / "data"), clips=8, seconds=SECONDS))]
    write_jsonl(root / "prompts.jsonl", [{"id": r["id"], "prompt": r["caption"]} for r in rows])
    perfect = root / "perfect"
    shutil.copytree(root / "data" / "audio", perfect)
    (perfect / "broken.wav").write_bytes(b"RIFF not really a wav")
    noise = np.random.default_rng(0)
    manifest = []
    for r in rows:
        path = root / "noise" / f"{r['id']}.wav"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, 0.1 * noise.standard_normal((int(SECONDS * 48000), 2)), 48000)
        manifest.append(_manifest_row(r["id"], r["video"], r["caption"], "ok", "", str(path)))
    manifest.append(_manifest_row("lost", rows[0]["video"], "", "failed", "generate: out of memory", ""))
    write_manifest(str(root / "noise" / "manifest.parquet"), manifest)
    return root


def _manifest_row(id_, video, prompt, status, error, audio) -> dict:
    return {"id": id_, "video": video, "prompt": prompt, "seed": 0, "status": status, "error": error, "audio": audio}


def evaluate(root, generated, out, address=None, *extra):
    args = [sys.executable, "-m", "jobs.cli", "evaluate", "--generated", str(generated)]
    args += ["--reference", str(root / "data" / "audio"), "--out", str(out), *extra]
    args += ["--videos", str(root / "data" / "video"), "--prompts", str(root / "prompts.jsonl")]
    if address:
        args += ["--address", address]
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


def _by_name(metrics: dict) -> dict:
    return {(m["name"], m["embedder"]): m["value"] for m in metrics["metrics"]}


@pytest.fixture(scope="module")
def perfect(library, ray_address):
    result = evaluate(library, library / "perfect", library / "out-perfect", ray_address)
    return result, json.loads((library / "out-perfect" / "metrics.json").read_text())


@pytest.fixture(scope="module")
def noisy(library, ray_address):
    result = evaluate(library, library / "noise" / "manifest.parquet", library / "out-noise", ray_address)
    return result, json.loads((library / "out-noise" / "metrics.json").read_text())


def test_evaluate_writes_metrics_json_and_a_report_whose_images_exist(library, perfect):
    result, metrics = perfect
    assert result.returncode == 1, result.stderr  # one clip failed, the rest were evaluated
    assert metrics["counts"] == {"ok": 8, "failed": 1, "references": 8}
    failed = [c for c in metrics["clips"] if c["status"] == "failed"]
    assert [c["name"] for c in failed] == ["broken"] and failed[0]["error"].startswith("evaluate: ")
    assert all(m["embedder"] for m in metrics["metrics"])  # every number names what produced it
    values = _by_name(metrics)
    assert values[("FD", "musicnn-MTT")] < 1e-3  # the references scored against themselves
    assert values[("Coverage", "musicnn-MTT")] == 1.0 and values[("KL", "musicnn-MTT")] < 1e-6
    # The analysers' ceiling on real renders (random excerpts, 60-180 BPM, varied instruments): measured 0.75
    # tempo and 0.69 key score on these 8; on 100 such clips 0.75 and 0.67.
    assert values[("tempo match (octave-tolerant)", "librosa beat tracker")] >= 0.625
    assert values[("key score (MIREX)", "essentia KeyExtractor")] >= 0.6
    assert any(name == "beat-to-cut F-measure" for name, _ in values)
    page = (library / "out-perfect" / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == 8
    for image in images:
        assert (library / "out-perfect" / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "musicnn-MTT" in page and "broken" in page


def test_a_worse_generator_scores_worse_and_a_score_manifest_is_read(perfect, noisy):
    result, bad = noisy
    assert result.returncode == 1, result.stderr  # the manifest's failed row stays failed
    assert bad["counts"] == {"ok": 8, "failed": 1, "references": 8}
    assert [c["error"] for c in bad["clips"] if c["status"] == "failed"] == ["generate: out of memory"]
    good, worse = _by_name(perfect[1]), _by_name(bad)
    key = ("FD", "musicnn-MTT")
    assert worse[key] > 1.0 > good[key]
    for name in ("Coverage", "Density"):
        assert worse[(name, "musicnn-MTT")] < good[(name, "musicnn-MTT")]
    assert worse[("KL", "musicnn-MTT")] > good[("KL", "musicnn-MTT")] + 0.1
    tempo = ("tempo match (octave-tolerant)", "librosa beat tracker")
    assert worse[tempo] < good[tempo]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--embedder", "wav2vec"), "unknown embedder 'wav2vec'"),
        (("--embedder", "vggish"), "embedder vggish needs its weights"),
    ],
)
def test_bad_evaluate_flags_are_one_line_errors(library, tmp_path, extra, message):
    result = evaluate(library, library / "perfect", tmp_path / "out", None, *extra)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_a_missing_reference_directory_is_a_one_line_error(library, tmp_path):
    args = [sys.executable, "-m", "jobs.cli", "evaluate", "--generated", str(library / "perfect")]
    result = subprocess.run(
        [*args, "--reference", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "no such directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
