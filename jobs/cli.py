"""`videorobin`: the command line. One sub-command per job, in modules by concern; `videorobin <command> -h`
shows a command's flags, their defaults and an example.

Commands:

  the model, in process or on Ray Serve (jobs/cli_model.py)
    generate          a soundtrack for a video, or music for a prompt alone
    demo              a sample video, its soundtrack and the muxed mp4
    info              parameter counts per component
    serve             the HTTP API on Ray Serve
  Ray Data over many clips (jobs/cli_batch.py)
    score             soundtracks for a whole video catalogue
    evaluate          metrics and an HTML report: generated vs reference
    evaluate-vae      a VAE's reconstructions of held-out clips
    quality           held-out prompt and video following next to controls
  making a model (jobs/cli_training.py)
    make-dataset      a training corpus rendered from music21 scores
    train-tokenizer   a BPE prompt tokenizer
    train-vae         the compact spectral VAE (Ray Train)
    prepare           training manifest -> Parquet shards of latents and features
    train             Ray Train + DeepSpeed, stage t2m, v2m or distill (a few-step LocDiT)
    pipeline          the whole recipe: data -> VAE -> t2m -> v2m -> quality -> publish

Global flags, before or after the command: `--log-level` (videorobin's own loggers: DEBUG, INFO, WARNING,
ERROR), `--log-json` (log lines as JSON, one object a line: time, level, logger, message; those logged in the
job's Ray workers too, with Ray's keys), `--json` (the end-of-run summary as one JSON line on stdout; lines
meant for people go to stderr), `--verbose` (below).
Every job (score, evaluate, evaluate-vae, quality, make-dataset, train-tokenizer, train-vae, prepare, train)
takes `--config FILE`: a YAML mapping keyed by its flags' names; flags given on the command line win and
unknown keys are refused. `pipeline`'s config file is its `--recipe` (`--config` is the same flag).

Exit status: 0 done; 1 the job ran but failed (clips that failed, a training run out of retries);
2 bad input, one line on stderr (`videorobin: error: ...`) and no traceback: a flag, a file, a config value
the user can fix (`USER_ERRORS` in jobs/cli_common.py: CLIError, model.errors.InputError, MediaError, ...);
70 (EX_SOFTWARE) anything else, which is a bug: one line (`videorobin: internal error: ...`) naming a file
that holds the traceback; 130 interrupted (Ctrl-C). `--verbose` (before or after the command) prints the
traceback on stderr instead, for bad input too.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import sys
import tempfile
import time
import traceback

from jobs import cli_batch, cli_model, cli_training, progress, ray_session
from jobs.cli_common import CommandParser, is_user_error, one_line, require_extras
from jobs.cli_config import Commands, config_required

log = logging.getLogger("videorobin")
EX_SOFTWARE = 70  # sysexits.h: an internal software error (a bug)
LOGGERS = ("videorobin", "model", "jobs")  # ours, set by --log-level; other libraries' stay at WARNING
TEXT_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def _global_flags(p: argparse.ArgumentParser, after_command: bool) -> None:
    """The flags of every command, before or after its name (after it: SUPPRESS, unset when absent, and listed
    only on `videorobin -h`)."""
    unset, hidden = (argparse.SUPPRESS, argparse.SUPPRESS) if after_command else (None, None)

    def flag(name: str, help: str, **kwargs) -> None:
        kwargs.setdefault("action", "store_true")
        kwargs["default"] = unset or kwargs.get("default", False)
        p.add_argument(name, help=hidden or help, **kwargs)

    flag("--verbose", "on an error, print its traceback on stderr")
    flag("--log-level", "level of videorobin's own log lines", action="store", default="INFO",
         choices=("DEBUG", "INFO", "WARNING", "ERROR"))  # fmt: skip
    flag("--log-json", "log lines as JSON, one object a line: time, level, logger, message; the job's Ray "
         "workers' lines too, with Ray's keys")  # fmt: skip
    flag("--json", "print the end-of-run summary as one JSON line (other output goes to stderr)")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="videorobin",
        description="Music for video: Video-Robin generation and jobs.",
        epilog="`videorobin <command> -h`: its flags, their defaults and an example\n\nexample:\n"
        '  videorobin generate --video clip.mp4 --prompt "lo-fi piano, 90 BPM" --out music.wav',
    )
    _global_flags(parser, after_command=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser, action=Commands)
    for module in (cli_model, cli_batch, cli_training):
        module.add_parsers(sub)
    summaries = {choice.dest: choice.help for choice in sub._choices_actions}
    for name, command in sub.choices.items():
        command.description = command.description or summaries[name]
        _global_flags(command, after_command=True)
        if any(action.dest == "config_file" for action in command._actions):
            config_required(command)
    return parser


class JSONLogFormatter(logging.Formatter):
    """--log-json: one JSON object a line, {time, level, logger, message[, exception]}."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line = {
            "time": when.isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class _StderrHandler(logging.StreamHandler):
    """Writes to the sys.stderr of the moment, not the one it was made with (as logging's last resort does)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(level: str = "INFO", json_lines: bool = False) -> None:
    """Our loggers at `level`, lines as text or JSON on stderr; with JSON, the Ray workers of the job this
    command starts too (jobs/ray_session.py). Like logging.basicConfig, the handler goes on the root logger
    only when nothing else (a host program, pytest) has put one there."""
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _StderrHandler)]
    if not root.handlers:
        ours = [_StderrHandler()]
        root.addHandler(ours[0])
        root.setLevel(logging.WARNING)
    for handler in ours:
        handler.setFormatter(JSONLogFormatter() if json_lines else logging.Formatter(TEXT_LOG_FORMAT))
    for name in LOGGERS:
        logging.getLogger(name).setLevel(level)
    progress.INTERACTIVE = False if json_lines else None  # JSON logs: progress as log lines, never redrawn
    ray_session.WORKER_JSON_LOG_LEVEL = level if json_lines else None


def main(argv: list[str] | None = None) -> int:
    args = None
    try:
        args = build_parser().parse_args(argv)
        configure_logging(args.log_level, args.log_json)
        require_extras(args.command)
        with contextlib.ExitStack() as scratch:  # the command's temporary files (`scratch_dir`), however it ends
            args.scratch = scratch
            summary = args.run(args)
    except KeyboardInterrupt:
        print("videorobin: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        verbose = getattr(args, "verbose", False)
        if verbose:
            traceback.print_exception(err, file=sys.stderr)
        if is_user_error(err):
            print(f"videorobin: error: {one_line(err)}", file=sys.stderr)
            return 2
        print(f"videorobin: internal error: {_bug_report(err, verbose, argv)}", file=sys.stderr)
        return EX_SOFTWARE
    status = summary.pop("exit_status", 0)
    if args.json:  # one line a program reads: every key, None as null
        print(json.dumps(summary, default=str))
        return status
    for key, value in summary.items():
        if value is not None:
            print(f"{key}: {value}")
    return status


def _bug_report(err: Exception, verbose: bool, argv: list[str] | None) -> str:
    """The one line for a bug; without --verbose its traceback goes to a file that the line names."""
    message = one_line(err)
    line = f"{type(err).__name__}: {message if len(message) <= 300 else message[:297] + '...'} — this is a bug"
    if verbose:
        return line
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = os.path.join(tempfile.gettempdir(), f"videorobin-crash-{stamp}-{os.getpid()}.txt")
    command = " ".join(["videorobin", *(sys.argv[1:] if argv is None else argv)])
    try:
        with open(path, "w") as f:
            f.write(f"{command}\npython {sys.version.split()[0]} on {sys.platform}\n\n")
            traceback.print_exception(err, file=f)
    except OSError as write_err:  # nowhere to put it: the traceback goes on stderr after all
        traceback.print_exception(err, file=sys.stderr)
        return f"{line}; traceback above (could not write {path}: {write_err.strerror})"
    return f"{line}; traceback written to {path}"


if __name__ == "__main__":
    sys.exit(main())
