"""Evaluation maths on constructed cases; tempo, key and cut checks on real renders and real videos."""

import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from jobs.dataset import make_dataset
from jobs.evaluation.cuts import cut_alignment, detect_cuts
from jobs.evaluation.distribution import (
    density_coverage,
    frechet_distance,
    frechet_distance_between,
    inception_score,
    kl_divergence,
    paired_cosine,
)
from jobs.evaluation.music import Key, beat_times, estimate_key, key_score, parse_key, parse_tempo, tempo_score
from jobs.evaluation.qc import technical_qc
from model.media import write_sample_video

# ---- distribution metrics -------------------------------------------------------------------------------


def test_frechet_distance_equals_the_closed_form_for_commuting_gaussians():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    a, b = rng.uniform(0.5, 3, 6), rng.uniform(0.5, 3, 6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_is_zero_for_a_set_against_itself_and_grows_with_a_shift():
    x = np.random.default_rng(1).standard_normal((2000, 16))
    assert abs(frechet_distance_between(x, x)) < 1e-6
    shifted = [frechet_distance_between(x + s, x) for s in (0.25, 0.5, 1.0, 2.0)]
    assert shifted == sorted(shifted)
    assert shifted[-1] == pytest.approx(16 * 2.0**2, rel=1e-6)  # only the means differ: ||shift||^2


def test_density_and_coverage_on_matching_shifted_and_collapsed_sets():
    rng = np.random.default_rng(2)
    real = rng.standard_normal((500, 32))
    same = density_coverage(real, rng.standard_normal((500, 32)))
    shifted = density_coverage(real, rng.standard_normal((500, 32)) + 1.0)
    collapsed = density_coverage(real, real[:1].repeat(500, axis=0) + 0.01 * rng.standard_normal((500, 32)))
    assert same["density"] > 0.8 and same["coverage"] > 0.9
    assert shifted["density"] < 0.3 * same["density"] and shifted["coverage"] < 0.5 * same["coverage"]
    assert collapsed["coverage"] < 0.05  # one mode covers almost none of the reference


def test_inception_score_and_kl_on_constructed_probabilities():
    confident_varied = np.eye(10)  # each clip one class, all classes used
    assert inception_score(confident_varied) == pytest.approx(10, rel=1e-4)
    assert inception_score(np.tile(np.eye(10)[:1], (10, 1))) == pytest.approx(1, rel=1e-4)  # one class only
    assert inception_score(np.full((10, 10), 0.1)) == pytest.approx(1, rel=1e-6)  # no confidence
    p = np.array([[0.5, 0.5], [0.9, 0.1]])
    assert kl_divergence(p, p) == pytest.approx(0, abs=1e-9)
    q = np.array([[0.25, 0.75], [0.9, 0.1]])  # generated; the reference is p
    expected = (0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75)) / 2
    assert kl_divergence(q, p) == pytest.approx(expected, rel=1e-6)


def test_paired_cosine():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert paired_cosine(a, a) == pytest.approx(1.0)
    assert paired_cosine(a, np.array([[0.0, 1.0], [0.0, -1.0]])) == pytest.approx(-0.5)


# ---- prompt parsing and scoring -------------------------------------------------------------------------


def test_prompts_are_parsed_for_tempo_and_key():
    assert parse_tempo("lo-fi piano, 90 BPM, A minor, builds at the end") == 90
    assert parse_key("lo-fi piano, 90 BPM, A minor, builds at the end") == Key(9, True)
    assert parse_key("Ragtime for piano by Scott Joplin, in A-flat major, 90 BPM") == Key(8, False)
    assert parse_key("F# minor") == Key(6, True) == parse_key("f sharp min")
    assert parse_key("Bb major") == Key(10, False) == parse_key("B♭ maj")
    assert parse_tempo("no tempo here") is None and parse_key("ambient drone") is None


def test_tempo_and_key_scores_follow_mir_conventions():
    assert tempo_score(91.5, 90) == {"match": True, "octave_match": True}
    assert tempo_score(180, 90) == {"match": False, "octave_match": True}
    assert tempo_score(120, 90)["octave_match"] is False
    a_minor = Key(9, True)
    assert key_score(a_minor, a_minor) == 1.0
    assert key_score(Key(4, True), a_minor) == 0.5  # E minor: a fifth above
    assert key_score(Key(0, False), a_minor) == 0.3  # C major: relative
    assert key_score(Key(9, False), a_minor) == 0.2  # A major: parallel
    assert key_score(Key(3, True), a_minor) == 0.0  # D# minor: a tritone away


# ---- on real renders ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    root = tmp_path_factory.mktemp("renders")
    manifest = make_dataset(str(root), clips=8, seconds=10.0)
    return [json.loads(line) for line in open(manifest)]


@pytest.mark.ray  # `renders`: make_dataset starts a local Ray
def test_tempo_and_key_are_recovered_from_real_scores_and_mismatches_fail(renders):
    tempo_hits, key_hits, wrong_tempo, wrong_key = 0, 0, 0, 0
    for row in renders:
        audio, rate = sf.read(row["audio"], always_2d=True)
        tempo, _beats = beat_times(audio.T, rate)
        key = estimate_key(audio.T, rate)
        asked_key = parse_key(row["caption"])
        assert asked_key == parse_key(row["key"]) and parse_tempo(row["caption"]) == row["tempo_bpm"]
        tempo_hits += tempo_score(tempo, row["tempo_bpm"])["octave_match"]
        key_hits += key_score(key, asked_key) == 1.0
        wrong_tempo += tempo_score(tempo, row["tempo_bpm"] * 1.3)["octave_match"]
        wrong_key += key_score(key, Key((asked_key.tonic + 6) % 12, asked_key.minor)) > 0
        print(f"\n{row['source']}: tempo {tempo:.1f} (asked {row['tempo_bpm']}), key {key} (asked {asked_key})")
    # Measured on these 8: 6 and 6 on an AVX2 CPU, 7 and 5 on an AVX-512 one (the renders and the analysis
    # differ in the last bits, which tips a borderline key); chance is about 1 in 8 for a key.
    assert tempo_hits >= 6 and key_hits >= 5, (tempo_hits, key_hits)
    assert wrong_tempo <= 1 and wrong_key == 0


# ---- cuts and alignment ---------------------------------------------------------------------------------


def test_cuts_are_found_within_one_frame_and_motion_is_not_a_cut(tmp_path):
    path = str(tmp_path / "cuts.mp4")
    write_sample_video(path, duration_s=6.0, fps=25, cut_every_s=1.2, size=96)  # a moving square between cuts
    cuts = detect_cuts(path)
    np.testing.assert_allclose(cuts, [1.2, 2.4, 3.6, 4.8], atol=1 / 25 + 1e-9)


def _clicks(times: np.ndarray, seconds: float, rate: int = 48000) -> np.ndarray:
    audio = np.zeros(int(seconds * rate), np.float32)
    burst = np.hanning(480) * np.sin(2 * np.pi * 1500 * np.arange(480) / rate)
    for t in times:
        i = int(t * rate)
        audio[i : i + 480] += burst[: len(audio) - i]
    return np.stack([audio, audio])


def test_beats_on_the_cuts_align_and_shifted_beats_do_not(tmp_path):
    path = str(tmp_path / "pace.mp4")
    write_sample_video(path, duration_s=8.0, fps=25, cut_every_s=0.5, size=64)
    cuts = detect_cuts(path)
    on_cuts = beat_times(_clicks(np.arange(0.0, 8.0, 0.5), 8.0), 48000)[1]
    off_cuts = beat_times(_clicks(np.arange(0.25, 8.0, 0.5), 8.0), 48000)[1]
    aligned, shifted = cut_alignment(cuts, on_cuts), cut_alignment(cuts, off_cuts)
    assert aligned["f_measure"] > 0.8 and shifted["f_measure"] < 0.2, (aligned, shifted)


# ---- technical QC ---------------------------------------------------------------------------------------


def test_technical_qc_measures_loudness_clipping_silence_and_dc():
    rate = 48000
    t = np.arange(rate * 4) / rate
    sine = np.float32(10 ** (-23 / 20)) * np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    clean = technical_qc(np.stack([sine, sine]), rate)
    assert clean["loudness_lufs"] == pytest.approx(-23.0, abs=0.5)  # EBU Tech 3341's stereo 1 kHz case
    assert clean["clipped_fraction"] == 0 and clean["silent_fraction"] == 0 and clean["dc_offset"] < 1e-3
    loud = np.clip(sine * 40, -1, 1)
    assert technical_qc(np.stack([loud, loud]), rate)["clipped_fraction"] > 0.3
    gap = np.concatenate([sine[: rate * 2], np.zeros(rate * 2, np.float32)])
    assert technical_qc(np.stack([gap, gap]), rate)["silent_fraction"] == pytest.approx(0.5, abs=0.02)
    assert technical_qc(np.stack([sine + 0.1, sine]), rate)["dc_offset"] == pytest.approx(0.1, abs=1e-3)


# ---- a real pretrained embedder, offline ----------------------------------------------------------------


@pytest.fixture(scope="module")
def musicnn():
    from jobs.evaluation.embedders import load_audio_embedder

    return load_audio_embedder("musicnn", None)  # the weights shipped with the package


def test_the_shipped_musicnn_weights_are_the_wheels_checkpoint(tmp_path):
    """The safetensors file in the package is musicnn's own TF checkpoint, converted: same tags and
    embedding for the same input, to the last bit."""
    from jobs.evaluation.embedders.musicnn import MusicnnEmbedder, default_weights, export_safetensors, wheel_checkpoint
    from model.weights import read_safetensors

    original = wheel_checkpoint()
    if original is None:
        pytest.skip("the musicnn wheel (the reference) is not installed")
    export_safetensors(original, str(tmp_path / "converted.safetensors"))  # how the shipped file was made
    again, ours = read_safetensors(str(tmp_path / "converted.safetensors")), read_safetensors(default_weights())
    assert again.keys() == ours.keys() and all(torch.equal(again[k], ours[k]) for k in ours)
    shipped, converted = MusicnnEmbedder(default_weights()), MusicnnEmbedder(original)
    audio = np.random.default_rng(0).standard_normal((2, 48000 * 4)).astype(np.float32) * 0.1
    a, b = shipped(audio, 48000), converted(audio, 48000)
    assert np.array_equal(a.embedding, b.embedding) and np.array_equal(a.probabilities, b.probabilities)


def test_evaluate_checks_embedder_weights_before_starting_anything(tmp_path, capsys):
    from jobs.cli import main

    (tmp_path / "gen").mkdir()
    args = ["evaluate", "--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "gen")]
    args += ["--out", str(tmp_path / "out"), "--embedder", f"vggish={tmp_path / 'missing.pth'}"]
    assert main(args) == 2
    assert f"embedder vggish: no weights at {tmp_path / 'missing.pth'}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _top_tags(embedder, audio: np.ndarray, rate: int, n: int = 3) -> list[str]:
    features = embedder(audio, rate)
    return [embedder.labels[i] for i in np.argsort(-features.probabilities)[:n]]


@pytest.mark.ray  # `renders`: make_dataset starts a local Ray
def test_musicnn_port_tags_real_renders_as_a_listener_would(renders, musicnn):
    """The TF checkpoint read without TensorFlow, in our PyTorch port, hears what the renders are: each render's
    instrument family is a musicnn tag (make-dataset chose them so), and it is among the top five tags of
    most renders (7 of these 8 on an AVX2 CPU: harpsichord, strings, violin, harp, guitar, the synth pad heard as
    strings; 5 on an AVX-512 one, where both harpsichord renders are heard as guitar and piano)."""
    hits = 0
    for row in renders:
        audio, rate = sf.read(row["audio"], always_2d=True)
        tags = _top_tags(musicnn, audio.T, rate, n=5)
        print(row["family"], tags)
        hits += row["family"] in tags
    assert hits >= 5, hits
    noise = 0.3 * np.random.default_rng(0).standard_normal((2, 48000 * 10))
    assert "classical" not in _top_tags(musicnn, noise, 48000, n=5)


@pytest.mark.ray  # `renders`: make_dataset starts a local Ray
def test_musicnn_embeddings_separate_music_from_noise(renders, musicnn):
    music = np.array([musicnn(sf.read(r["audio"], always_2d=True)[0].T, 48000).embedding for r in renders])
    rng = np.random.default_rng(1)
    noise = np.array([musicnn(rng.standard_normal((2, 48000 * 5)) * g, 48000).embedding for g in (0.05, 0.1, 0.2, 0.4)])
    assert frechet_distance_between(music[:4], music[4:]) < frechet_distance_between(music[:4], noise) / 2


# ---- published embedders: only where their weights are on disk --------------------------------------------


def _weights(var: str) -> str:
    path = os.environ.get(var)
    if not path or not os.path.exists(path):
        pytest.skip(f"set {var} to the checkpoint to run this test (weights are never downloaded)")
    return path


AUDIOSET_MUSIC = 137  # "Music" in AudioSet's class_labels_indices.csv


@pytest.mark.ray  # `renders`: make_dataset starts a local Ray
def test_panns_cnn14_hears_music_in_real_renders(renders):
    from jobs.evaluation.embedders import load_audio_embedder

    panns = load_audio_embedder("panns", _weights("VIDEOROBIN_PANNS_WEIGHTS"))
    for row in renders[:3]:
        features = panns(sf.read(row["audio"], always_2d=True)[0].T, 48000)
        assert features.embedding.shape == (2048,) and features.probabilities[AUDIOSET_MUSIC] > 0.5


@pytest.mark.ray  # `renders`: make_dataset starts a local Ray
def test_vggish_embeddings_separate_music_from_noise(renders):
    from jobs.evaluation.embedders import load_audio_embedder

    vggish = load_audio_embedder("vggish", _weights("VIDEOROBIN_VGGISH_WEIGHTS"))
    music = np.array([vggish(sf.read(r["audio"], always_2d=True)[0].T, 48000).embedding for r in renders])
    noise = np.array([vggish(np.random.default_rng(i).standard_normal(48000 * 5), 48000).embedding for i in range(4)])
    assert music.shape[1] == 128
    assert frechet_distance_between(music[:4], music[4:]) < frechet_distance_between(music[:4], noise)


@pytest.mark.ray  # `renders`: make_dataset starts a local Ray
def test_clap_scores_a_matching_prompt_above_a_mismatched_one(renders):
    from jobs.evaluation.embedders.clap import ClapScorer

    clap = ClapScorer(_weights("VIDEOROBIN_CLAP_WEIGHTS"))
    harpsichord = next(r for r in renders if r["family"] == "harpsichord")
    audio = clap.audio(sf.read(harpsichord["audio"], always_2d=True)[0].T, 48000)
    assert audio @ clap.text("baroque harpsichord") > audio @ clap.text("a heavy metal band with distorted guitars")


@pytest.mark.ray  # `renders`: make_dataset starts a local Ray
def test_imagebind_hears_the_same_music_closer_than_noise(renders, tmp_path):
    from jobs.evaluation.embedders.imagebind import ImageBindScorer

    imagebind = ImageBindScorer(_weights("VIDEOROBIN_IMAGEBIND_WEIGHTS"))
    audio = sf.read(renders[0]["audio"], always_2d=True)[0].T
    music, shifted = imagebind.audio(audio, 48000), imagebind.audio(np.roll(audio, 480, axis=1), 48000)
    noise = imagebind.audio(np.random.default_rng(0).standard_normal((2, 48000 * 10)) * 0.1, 48000)
    assert music @ shifted > music @ noise
    video = imagebind.video(renders[0]["video"])
    other = imagebind.video(renders[1]["video"])
    assert video.shape == music.shape and np.isfinite(video).all()
    assert not np.allclose(video, other, atol=1e-4)  # another video, another embedding
