"""`videorobin`: the command line. One sub-command per job; the commands live in modules by concern:

    jobs/cli_model.py     generate, demo, info, serve       (the model, in process or on Ray Serve)
    jobs/cli_batch.py     score, evaluate, evaluate-vae, quality   (Ray Data over many clips)
    jobs/cli_training.py  make-dataset, train-tokenizer, train-vae, prepare, train, pipeline

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
import logging
import os
import sys
import tempfile
import time
import traceback

from jobs import cli_batch, cli_model, cli_training
from jobs.cli_common import CommandParser, is_user_error, one_line

log = logging.getLogger("videorobin")
EX_SOFTWARE = 70  # sysexits.h: an internal software error (a bug)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="videorobin", description="Music for video: Video-Robin generation and jobs.")
    parser.add_argument("--verbose", action="store_true", help="on an error, print its traceback on stderr")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    for module in (cli_model, cli_batch, cli_training):
        module.add_parsers(sub)
    for command in sub.choices.values():  # `videorobin generate ... --verbose` too (SUPPRESS: unset when absent)
        command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("videorobin", "model", "jobs"):
        logging.getLogger(name).setLevel(logging.INFO)
    args = None
    try:
        args = build_parser().parse_args(argv)
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
