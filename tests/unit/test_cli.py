"""The `videorobin` console script, run as a user runs it (a real subprocess, or `main` in this process)."""

import os
import subprocess
import sys

import av
import pytest
import soundfile as sf

from tests.media_files import write_bad_inputs

HOP_S = 1920 / 48000
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
                        "--out", str(out), "--steps", "2", "--solver", "midpoint")  # fmt: skip
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


HIDE_MODULES = """
import importlib.abc, os, sys

class Hidden(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in os.environ["HIDDEN_MODULES"].split(","):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, Hidden())
"""


@pytest.mark.parametrize(
    ("command", "hidden", "extra"),
    [
        (["train", "--stage", "t2m", "--data", "d", "--storage", "s", "--steps", "1"], "deepspeed", "train"),
        (["serve"], "fastapi", "serve"),
        (["score", "--catalogue", "c.jsonl", "--out", "o"], "pyarrow", "data"),
        (["evaluate", "--generated", "g", "--reference", "r", "--out", "o"], "librosa", "eval"),
    ],
)
def test_a_command_whose_extra_is_missing_names_it_in_one_line(tmp_path, command, hidden, extra):
    """As in an install without the role's extra: the module is not there, and the command says which extra
    to install before it starts anything."""
    (tmp_path / "sitecustomize.py").write_text(HIDE_MODULES)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "HIDDEN_MODULES": hidden}
    result = subprocess.run(
        [sys.executable, "-m", "jobs.cli", *command], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"videorobin: error: `videorobin {command[0]}` needs the [{extra}] extra: "
        f"pip install 'video-robin[{extra}]' (missing: {hidden})"
    ]


# ---- a CLI that explains itself (issue #14): help, examples, --config, logs, --json, progress ---------------


def _commands() -> dict:
    import argparse

    from jobs.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {"": parser, **sub.choices}


def test_the_module_docstring_lists_every_command():
    import re

    import jobs.cli

    section = jobs.cli.__doc__.split("Commands:", 1)[1].split("Global flags", 1)[0]
    listed = re.findall(r"^    ([a-z][a-z-]*)  ", section, re.MULTILINE)
    assert sorted(listed) == sorted(name for name in _commands() if name)


def test_every_option_has_help_text_and_shows_its_default():
    import argparse

    for name, command in _commands().items():
        text = " ".join(command.format_help().split())
        for action in command._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help and action.help.strip(), (name, action.dest)
            default = action.default
            if default in (None, argparse.SUPPRESS) or default is False or default == []:
                continue
            help_text = " ".join((action.help % {"default": default}).split())
            assert "default" in help_text or f"{help_text} (default: {default})" in text, (name, action.dest)


def test_every_command_has_an_example_that_runs_as_written():
    import shlex

    from jobs.cli import build_parser

    for name, command in _commands().items():
        assert command.epilog and "example:" in command.epilog, name
        examples = [line.strip() for line in command.epilog.splitlines() if line.strip().startswith("videorobin ")]
        assert examples and all(line.startswith(f"videorobin {name}") for line in examples), name
        for line in examples:
            argv = shlex.split(line.split("   #")[0])[1:]
            if "--config" not in argv:
                build_parser().parse_args(argv)  # every flag in it exists and its values parse


def test_guidance_is_named_as_in_the_api_and_cfg_is_the_same_flag():
    from jobs.cli import build_parser

    needs = {
        "generate": ["--prompt", "x", "--out", "o.wav"],
        "demo": [],
        "score": ["--catalogue", "c.jsonl", "--out", "o"],
        "quality": ["--manifest", "m.jsonl", "--out", "o"],
    }
    for name, rest in needs.items():
        assert build_parser().parse_args([name, *rest, "--guidance", "2.5"]).guidance == 2.5
        assert build_parser().parse_args([name, *rest, "--cfg", "1.5"]).guidance == 1.5
    root = os.path.join(ROOT, "cluster")
    for folder, _, files in os.walk(root):
        for file in files:
            assert "--cfg" not in open(os.path.join(folder, file), errors="replace").read(), file


SCORE = ["score", "--catalogue", "c.jsonl", "--out", "{tmp}/o"]
PROMPT_ONLY = ["generate", "--prompt", "x", "--duration", "1", "--out", "{tmp}/o.wav"]
UNUSED = {  # a flag the job would ignore, or one another flag overrules
    "score --seed": ([*SCORE, "--seed", "3"], "unrecognized arguments: --seed 3"),
    "score --device": ([*SCORE, "--device", "cuda"], "unrecognized arguments: --device cuda"),
    "--checkpoint with --preset": ([*PROMPT_ONLY, "--checkpoint", "ck", "--preset", "tiny"], "and --preset both"),
    "--set without --preset": ([*PROMPT_ONLY, "--set", "rite=null"], "--set overrides a --preset's config"),
    "prepare --checkpoint --preset": (
        ["prepare", "--manifest", "m.jsonl", "--out", "{tmp}/o", "--checkpoint", "ck", "--preset", "tiny"],
        "--checkpoint brings its own",
    ),
}


@pytest.mark.parametrize("case", UNUSED)
def test_flags_a_job_does_not_use_are_refused_in_one_line(tmp_path, scratch, capsys, case):
    args, flag = UNUSED[case]
    status, err = _main(capsys, *[a.format(tmp=tmp_path) for a in args])
    assert status == 2, err
    (line,) = err.strip().splitlines()
    assert line.startswith("videorobin: error: ") and flag in line, err
    assert list(tmp_path.iterdir()) == [scratch]  # refused before anything ran


def _config(tmp_path, text: str) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return str(path)


def test_config_file_gives_a_jobs_settings_and_flags_given_on_the_command_line_win(tmp_path):
    from jobs.cli import build_parser
    from jobs.cli_common import job_flags
    from jobs.prepare import PrepareConfig

    path = _config(
        tmp_path,
        "catalogue: films.parquet\nout: scored\ngenerate-actors: 3\nactor_cpus: 0.25\nmax_duration_s: 60\n"
        "guidance: 2.5\nmux: true\nformat: flac\n",
    )
    args = build_parser().parse_args(["score", "--config", path, "--generate-actors", "1", "--cfg", "1.5"])
    assert (args.catalogue, args.out, args.actor_cpus, args.max_duration, args.mux, args.format) == (
        "films.parquet", "scored", 0.25, 60.0, True, "flac")  # fmt: skip
    assert (args.generate_actors, args.guidance) == (1, 1.5)  # given, though 1 is also the flag's default
    text = "manifest: train.jsonl\nout: prepared\nencode_batch: 16\nread_cpus: 0.5\nset: [rite=null]\n"
    path = _config(tmp_path, text)
    args = build_parser().parse_args(["prepare", "--config", path])
    flags = job_flags(args, PrepareConfig)
    assert (flags["encode_batch"], flags["read_cpus"], args.set) == (16, 0.5, ["rite=null"])  # a field with no flag too


CONFIG_REFUSED = {
    "unknown key": ("catalog: films.parquet\n", "unknown key catalog (did you mean catalogue?)"),
    "wrong type": ("generate_batch: eight\n", "generate_batch: 'eight' is not int"),
    "not a choice": ("format: mp3\n", "format: 'mp3' is not one of wav, flac"),
    "a switch": ("mux: 1\n", "mux: expected true or false"),
    "not a mapping": ("- 1\n", "must hold a mapping"),
    "not YAML": ("out: [1\n", "not valid YAML"),
    "a required flag missing": ("out: scored\n", "the following arguments are required: --catalogue"),
}


@pytest.mark.parametrize("case", CONFIG_REFUSED)
def test_a_bad_config_file_is_refused_in_one_line_before_the_job_starts(tmp_path, scratch, capsys, case):
    text, message = CONFIG_REFUSED[case]
    status, err = _main(capsys, "score", "--config", _config(tmp_path, text))
    assert status == 2, err
    (line,) = err.strip().splitlines()
    assert line.startswith("videorobin: error: ") and message in line, err


def test_every_field_of_a_jobs_config_can_come_from_its_config_file():
    """Each field of a job's pydantic config is a flag, a field name mapped onto one, a field passed through
    from --config as it is, or computed by the command from its flags (named here)."""
    from jobs.dataset import DatasetConfig
    from jobs.evaluate import EvaluateConfig
    from jobs.prepare import PrepareConfig
    from jobs.quality import QualityConfig
    from jobs.score import ScoreConfig
    from jobs.train import TrainConfig
    from jobs.train_vae import TrainVAEConfig
    from jobs.vae_report import VAEReportConfig

    jobs = {
        "score": (ScoreConfig, set()),
        "evaluate": (EvaluateConfig, set()),
        "evaluate-vae": (VAEReportConfig, set()),  # vae: read from the --vae export
        "quality": (QualityConfig, set()),
        "make-dataset": (DatasetConfig, set()),
        "prepare": (PrepareConfig, {"model"}),  # from --checkpoint, or --preset/--set and --vae
        "train": (TrainConfig, set()),
        "train-vae": (TrainVAEConfig, {"vae"}),  # from --preset/--set
    }
    commands = _commands()
    for name, (config_cls, computed) in jobs.items():
        command = commands[name]
        reachable = {a.dest for a in command._actions} | set(command.get_default("config_keys"))
        reachable |= set(command.get_default("config_extras")) | computed
        assert set(config_cls.model_fields) <= reachable, (name, set(config_cls.model_fields) - reachable)
    with_config = {name for name, c in commands.items() if any(a.dest == "config_file" for a in c._actions)}
    assert with_config == {*jobs, "train-tokenizer"}  # pipeline: --recipe (alias --config); serve: its own


def test_log_level_and_json_log_lines(monkeypatch, capsys):
    import json
    import logging

    from jobs.cli import JSONLogFormatter, main

    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in a fresh process: nothing configured yet
    assert main(["--log-json", "info", "--preset", "tiny", "--log-level", "DEBUG"]) == 0
    assert logging.getLogger("jobs").level == logging.DEBUG
    logging.getLogger("jobs.score").debug("rows %d", 3)
    logging.getLogger("some.library").info("not ours: stays at WARNING")
    line = json.loads(capsys.readouterr().err.strip())
    assert {k: line[k] for k in ("level", "logger", "message")} == {"level": "DEBUG", "logger": "jobs.score",
                                                                      "message": "rows 3"}  # fmt: skip
    assert line["time"].endswith("+00:00")
    assert main(["--log-level", "WARNING", "info", "--preset", "tiny"]) == 0
    logging.getLogger("videorobin").info("hidden")
    logging.getLogger("videorobin").warning("shown")
    assert capsys.readouterr().err == "WARNING videorobin: shown\n"  # text again, on the same handler
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("jobs", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    assert "ValueError: boom" in json.loads(JSONLogFormatter().format(record))["exception"]


def test_json_prints_the_summary_as_one_json_line_and_the_rest_on_stderr(capsys):
    import json

    from jobs.cli import main

    for argv in (["--json", "info", "--preset", "tiny"], ["info", "--preset", "tiny", "--json"]):
        assert main(argv) == 0
        out, err = capsys.readouterr()
        (line,) = out.splitlines()
        assert json.loads(line)["parameters"]["semantic_lm"] > 0
        assert "semantic_lm" in err  # the table, for people
    assert main(["info", "--preset", "tiny"]) == 0
    assert "semantic_lm" in capsys.readouterr().out


def test_a_batch_job_prints_one_progress_line_with_an_eta(caplog, capsys):
    import logging

    from jobs.progress import Progress, track

    now = [0.0]
    with caplog.at_level(logging.INFO, logger="jobs.progress"):
        rows = track(range(100), "score", 100, every_s=10, clock=lambda: now[0], interactive=False)
        for _ in rows:
            now[0] += 0.5  # a row every 0.5 s, counted as it arrives
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "score: 21/100 rows, 2.1 rows/s, ETA 0:00:38"  # every 10 s
    assert lines[-1] == "score: 100/100 rows in 0:00:50, 2 rows/s"  # and once at the end
    progress = Progress("prepare", 4, clock=lambda: now[0], interactive=True)
    progress.update()
    now[0] += 1
    progress.update()
    with pytest.raises(RuntimeError):  # the line is finished however the loop ends
        for _ in track(range(4), "evaluate", 4, interactive=True):
            raise RuntimeError("a bug")
    err = capsys.readouterr().err
    assert "\rprepare: 2/4 rows, 2 rows/s, ETA 0:00:01" in err and err.endswith("\x1b[K\n")


def test_train_step_lines_end_with_an_eta(caplog, monkeypatch):
    import logging
    import time

    from jobs import train_runs

    clock = iter([100.0, 120.0])  # 10 steps in 20 s: 0.5 steps/s, 80 steps left
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    metrics = {"loss": 1.0, "lr": 1e-4, "grad_norm": 0.5, "samples_per_s": 8.0}
    with caplog.at_level(logging.INFO, logger=train_runs.log.name):
        train_runs.log_step("test-eta", 10, 100, metrics)
        train_runs.log_step("test-eta", 20, 100, metrics)
    first, second = (r.getMessage() for r in caplog.records)
    assert "ETA" not in first
    assert second.endswith("8.00 samples/s, 0.5 steps/s, ETA 0:02:40")
