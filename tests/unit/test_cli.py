"""The `videorobin` console script, run as a user runs it (a real subprocess, or `main` in this process)."""

import os
import subprocess
import sys

import av
import pytest
import soundfile as sf

from tests.media_files import write_bad_inputs

HOP_S = 1920 / 48000


def videorobin(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_generate_writes_48k_stereo_of_the_video_duration_and_a_muxed_mp4(tmp_path, videos):
    out, muxed = tmp_path / "music.wav", tmp_path / "with_music.mp4"
    result = videorobin(
        "generate",
        "--video",
        videos["long"],
        "--prompt",
        "lo-fi piano, 90 BPM",
        "--out",
        str(out),
        "--mux",
        str(muxed),
        "--steps",
        "4",
        "--seed",
        "3",
    )
    assert result.returncode == 0, result.stderr
    info = sf.info(str(out))
    assert (info.samplerate, info.channels) == (48000, 2)
    with av.open(videos["long"]) as c:
        video_s = float(c.streams.video[0].duration * c.streams.video[0].time_base)
    assert abs(info.duration - video_s) <= HOP_S
    with av.open(str(muxed)) as c:
        assert sorted(s.type for s in c.streams) == ["audio", "video"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["music.wav", "with_music.mp4"]  # no temp files left


def test_duration_flag_overrides_the_video_length(tmp_path, videos):
    out = tmp_path / "short.flac"
    result = videorobin("generate", "--video", videos["long"], "--out", str(out), "--duration", "1.5", "--steps", "2")
    assert result.returncode == 0, result.stderr
    assert abs(sf.info(str(out)).duration - 1.5) <= HOP_S


BAD = {
    "missing file": (["--video", "{tmp}/nope.mp4"], "no such file"),
    "not a video": (["--video", "{bad}/notes.txt"], "not a readable video"),
    "audio only": (["--video", "{bad}/audio_only.m4a"], "no video stream"),
    "zero-length video": (["--video", "{bad}/no_frames.mp4"], "zero-length"),
    "empty file": (["--video", "{bad}/empty.mp4"], "empty"),
    "still image": (["--video", "{bad}/still.png"], "a still image (png_pipe), not a video"),
    "unknown preset": (["--video", "{good}", "--preset", "giant"], "unknown preset"),
    "steps < 1": (["--video", "{good}", "--steps", "0"], "steps must be at least 1"),
    "cfg < 0": (["--video", "{good}", "--cfg", "-1"], "guidance (cfg) must be >= 0"),
    "bad output name": (["--video", "{good}", "--out", "{tmp}/x.mp3"], "must end in .wav or .flac"),
    "neither video nor prompt": (["--duration", "2"], "give --video, or --prompt / --audio-prompt and --duration"),
    "audio prompt not audio": (["--video", "{good}", "--audio-prompt", "{bad}/notes.txt"], "not an audio file"),
    "audio prompt too long": (
        ["--video", "{good}", "--audio-prompt", "{bad}/audio_only.m4a", "--max-duration", "0.5"],
        "audio longer than the limit of 0.5 s",
    ),
    "--from beyond the track": (
        ["--audio-prompt", "{bad}/audio_only.m4a", "--from", "9"],
        "--from 9 s is outside the track (0 to 1.0",
    ),
    "--include-prompt alone": (["--video", "{good}", "--include-prompt"], "need --audio-prompt"),
    "--align-cuts without video": (["--prompt", "x", "--duration", "1", "--align-cuts", "2"], "needs --video"),
    "prompt without duration": (["--prompt", "calm harp, 60 BPM"], "--duration says how many seconds"),
    "prompt-only with --mux": (["--prompt", "calm", "--duration", "2", "--mux", "{tmp}/x.mp4"], "--mux needs --video"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_exits_nonzero_with_one_line(tmp_path, videos, case):
    bad = tmp_path / "bad"
    bad.mkdir()
    write_bad_inputs(bad, videos["short"])
    args, message = BAD[case]
    args = [a.format(tmp=tmp_path, bad=bad, good=videos["short"]) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out.wav")]
    result = videorobin("generate", *args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("videorobin: error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.wav").exists()


def test_info_prints_parameter_counts_per_component():
    result = videorobin("info", "--preset", "paper")
    assert result.returncode == 0, result.stderr
    table = dict(line.split()[:2] for line in result.stdout.splitlines() if line and not line.startswith("latent"))
    assert (
        int(table["semantic_lm"].replace(",", ""))
        == 24 * (2 * 1024 * 1024 + 2 * 1024 * 128 + 3 * 1024 * 4096 + 2 * 1024) + 1024
    )
    assert "rite" in table and "locdit" in table and "63 patches per 10 s" in result.stdout


def test_demo_writes_a_sample_video_its_soundtrack_and_the_muxed_mp4(tmp_path):
    result = videorobin("demo", "--out-dir", str(tmp_path), "--duration", "2", "--steps", "2")
    assert result.returncode == 0, result.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"sample.mp4", "sample.wav", "sample_with_music.mp4"}
    assert abs(sf.info(str(tmp_path / "sample.wav")).duration - 2.0) <= HOP_S


def test_without_checkpoint_every_command_runs_the_shipped_default(tmp_path, videos):
    """The default model in the package: `generate` without --checkpoint writes exactly what it writes with
    --checkpoint pointing at model/default, and random weights only come when --preset asks for them."""
    from model.checkpoint import default_checkpoint

    shipped = default_checkpoint()
    assert shipped is not None
    common = ["--video", videos["mid"], "--prompt", "a bright flute melody in G major, 120 BPM", "--steps", "3"]
    implicit = videorobin("generate", *common, "--out", str(tmp_path / "implicit.wav"))
    explicit = videorobin("generate", *common, "--out", str(tmp_path / "explicit.wav"), "--checkpoint", shipped)
    random = videorobin("generate", *common, "--out", str(tmp_path / "random.wav"), "--preset", "small")
    assert implicit.returncode == explicit.returncode == random.returncode == 0, implicit.stderr
    assert (tmp_path / "implicit.wav").read_bytes() == (tmp_path / "explicit.wav").read_bytes()
    assert (tmp_path / "random.wav").read_bytes() != (tmp_path / "implicit.wav").read_bytes()
    assert "randomly initialised" in random.stderr and "randomly initialised" not in implicit.stderr


def test_a_prompt_alone_makes_music_of_the_asked_length(tmp_path):
    out = tmp_path / "prompt.flac"
    result = videorobin("generate", "--prompt", "melancholic solo cello, E minor, 66 BPM", "--duration", "2.4",
                        "--out", str(out), "--steps", "3")  # fmt: skip
    assert result.returncode == 0, result.stderr
    info = sf.info(str(out))
    assert (info.samplerate, info.channels) == (48000, 2) and abs(info.duration - 2.4) <= HOP_S


def _tone(path, seconds, rate):
    import numpy as np

    t = np.arange(int(seconds * rate)) / rate
    sf.write(str(path), 0.4 * np.sin(2 * np.pi * 220 * t), rate)


def test_continuation_follows_its_prompt_with_no_gap_and_from_rewrites_the_rest(tmp_path):
    """A 44.1 kHz mono prompt is resampled; --include-prompt puts it first, then the new music at once."""
    import numpy as np

    prompt = tmp_path / "prompt.wav"
    _tone(prompt, 2.0, 44100)
    both, track = tmp_path / "both.wav", tmp_path / "track.wav"
    args = ["--preset", "tiny", "--steps", "2", "--prompt", "more"]
    result = videorobin(
        "generate", *args, "--audio-prompt", str(prompt), "--duration", "1.5", "--include-prompt", "--out", str(both)
    )
    assert result.returncode == 0, result.stderr
    audio, rate = sf.read(str(both), always_2d=True)
    assert rate == 48000 and audio.shape == (round(3.5 * 48000), 2)
    seam = np.abs(audio[96000 : 96000 + 480]).max(axis=1)  # the first 10 ms after the prompt
    assert seam.max() > 0
    result = videorobin("generate", *args, "--audio-prompt", str(both), "--from", "1.0", "--out", str(track))
    assert result.returncode == 0, result.stderr
    rewritten, _ = sf.read(str(track), always_2d=True)
    assert rewritten.shape == audio.shape  # the whole track, as long as before
    kept = 6 * 7680  # --from 1.0 s keeps 6 whole patches (0.96 s)
    assert np.allclose(rewritten[:kept], audio[:kept], atol=1 / 32767)
    assert not np.allclose(rewritten[kept:], audio[kept:], atol=1e-2)


# ---- errors a user can act on (exit 2, one line) vs bugs (exit 70, traceback saved) -------------------------


def _main(capsys, *args: str) -> tuple[int, str]:
    """`videorobin ARGS` in this process (fast: torch is already imported), as (exit status, stderr)."""
    from jobs.cli import main

    status = main(list(args))
    return status, capsys.readouterr().err


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A fresh, empty temporary directory for the command (its crash reports, its scratch files)."""
    import tempfile

    where = tmp_path / "tmp"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    return where


def _mismatched_checkpoint(tmp_path) -> str:
    import json

    from model.build import build_bundle
    from model.checkpoint import save_bundle
    from model.config import load_config

    save_bundle(build_bundle(load_config("tiny")), str(tmp_path / "ck"))
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    config["semantic_lm"]["layers"] += 1  # valid on its own, but the saved weights have one layer fewer
    (tmp_path / "ck" / "config.json").write_text(json.dumps(config))
    return str(tmp_path / "ck")


USER_FIXABLE = {  # input a user can fix, that used to end in a traceback
    "config file not YAML": (["info", "--preset", "{tmp}/bad.yaml"], "bad.yaml: not valid YAML"),
    "config file not a mapping": (["info", "--preset", "{tmp}/list.yaml"], "must hold a mapping"),
    "--set value not YAML": (["info", "--preset", "tiny", "--set", "semantic_lm.layers=[1"], "not valid YAML"),
    "checkpoint that does not fit its config": (
        ["generate", "--checkpoint", "{ck}", "--prompt", "x", "--duration", "1", "--out", "{tmp}/o.wav"],
        "weights do not fit its config.json",
    ),
}


@pytest.mark.parametrize("case", USER_FIXABLE)
def test_input_a_user_can_fix_is_one_line_and_exit_2(tmp_path, scratch, capsys, case):
    (tmp_path / "bad.yaml").write_text("semantic_lm: {layers: 2\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    args, message = USER_FIXABLE[case]
    ck = _mismatched_checkpoint(tmp_path) if "{ck}" in " ".join(args) else None
    status, err = _main(capsys, *[a.format(tmp=tmp_path, ck=ck) for a in args])
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("videorobin: error: ") and message in lines[0], err
    assert list(scratch.iterdir()) == []  # no crash report: not a bug


def _libsndfile_fails(monkeypatch, error: type[Exception]) -> None:
    """The FLAC writer (a library generate calls, not our code) fails as a bug in it or in our use of it would."""
    import soundfile

    def broken(*args, **kwargs):
        raise error("libsndfile: internal buffer overrun")

    monkeypatch.setattr(soundfile, "SoundFile", broken)


GENERATE_FLAC = ["generate", "--preset", "tiny", "--prompt", "x", "--duration", "1", "--steps", "1"]


@pytest.mark.parametrize("error", [RuntimeError, ValueError])  # a ValueError from inside is a bug too, not input
def test_an_unexpected_exception_is_a_bug_exit_70_with_its_traceback_in_a_file(
    tmp_path, scratch, capsys, monkeypatch, error
):
    _libsndfile_fails(monkeypatch, error)
    out = tmp_path / "music.flac"
    status, err = _main(capsys, *GENERATE_FLAC, "--out", str(out))
    assert status == 70, err
    lines = [line for line in err.splitlines() if line.startswith("videorobin:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    line = lines[0]
    assert line.startswith(f"videorobin: internal error: {error.__name__}: libsndfile: internal buffer overrun")
    assert "this is a bug" in line and "traceback written to " in line
    report = line.split("traceback written to ")[1].strip()
    assert os.path.dirname(report) == str(scratch) and os.path.basename(report).startswith("videorobin-crash-")
    text = open(report).read()
    assert "Traceback (most recent call last)" in text and "write_audio_stream" in text
    assert f"{error.__name__}: libsndfile: internal buffer overrun" in text
    assert [p.name for p in scratch.iterdir()] == [os.path.basename(report)]  # --preset left no checkpoint
    assert not out.exists()


def test_verbose_prints_the_traceback_before_or_after_the_command(tmp_path, scratch, capsys, monkeypatch):
    _libsndfile_fails(monkeypatch, RuntimeError)
    status, err = _main(capsys, "--verbose", *GENERATE_FLAC, "--out", str(tmp_path / "music.flac"))
    assert status == 70
    assert "Traceback (most recent call last)" in err and "write_audio_stream" in err
    assert err.strip().splitlines()[-1].startswith("videorobin: internal error: RuntimeError: libsndfile")
    assert list(scratch.iterdir()) == []  # the traceback went to stderr, not to a file
    status, err = _main(capsys, "info", "--preset", "giant", "--verbose")  # bad input: the traceback too
    assert status == 2
    assert "Traceback (most recent call last)" in err and "load_config" in err
    assert err.strip().splitlines()[-1].startswith("videorobin: error: unknown preset")


def test_serve_with_a_preset_removes_its_random_checkpoint_when_it_ends(scratch, capsys, monkeypatch):
    """serve --preset saves random weights for its replicas to load; they go when the command ends, here when
    the Ray cluster cannot be reached (a user error: the address)."""
    import ray

    def unreachable(*args, **kwargs):
        raise ConnectionError("could not connect to the Ray cluster at 10.0.0.1:6379")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", unreachable)
    status, err = _main(capsys, "serve", "--preset", "tiny", "--address", "10.0.0.1:6379", "--mode", "fused")
    assert status == 2 and err.strip().splitlines()[-1].startswith("videorobin: error: could not connect"), err
    assert list(scratch.iterdir()) == []
