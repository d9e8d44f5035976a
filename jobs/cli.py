"""`videorobin`: the command line. One sub-command per job; the commands live in modules by concern:

    jobs/cli_model.py     generate, demo, info, serve       (the model, in process or on Ray Serve)
    jobs/cli_batch.py     score, evaluate, evaluate-vae, quality   (Ray Data over many clips)
    jobs/cli_training.py  make-dataset, train-tokenizer, train-vae, prepare, train, pipeline

Bad input ends with one line on stderr (`videorobin: error: ...`) and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from jobs import cli_batch, cli_model, cli_training
from jobs.cli_common import USER_ERRORS, CLIError, CommandParser, one_line

log = logging.getLogger("videorobin")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="videorobin", description="Music for video: Video-Robin generation and jobs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    for module in (cli_model, cli_batch, cli_training):
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("videorobin", "model", "jobs"):
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        args = build_parser().parse_args(argv)
        summary = args.run(args)
    except (CLIError, *USER_ERRORS) as err:
        log.debug("command failed", exc_info=True)
        print(f"videorobin: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("videorobin: interrupted", file=sys.stderr)
        return 130
    status = summary.pop("exit_status", 0)
    for key, value in summary.items():
        if value is not None:
            print(f"{key}: {value}")
    return status


if __name__ == "__main__":
    sys.exit(main())
