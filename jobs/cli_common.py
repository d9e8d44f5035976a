"""What every `videorobin` command shares: one-line errors, flag groups, and which model a command runs
(`--config FILE`, which only the jobs take, is jobs/cli_config.py).

Which model: `--checkpoint` when given; else random weights of `--preset` when that is given (explicitly
asked for); else the default model shipped inside the package (`model/default/`).
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import logging
import sys
import tempfile
from collections.abc import Callable

import torch
from pydantic import ValidationError

from model.config import COMPUTE_DTYPES, DECODE_DTYPES, SOLVERS
from model.errors import InputError
from model.media import MediaError

log = logging.getLogger("videorobin")


class CLIError(Exception):
    """A problem with the command line the user can fix."""


# What a user can act on: exit 2 with one line. Anything else is a bug: exit 70, traceback saved (jobs/cli.py).
# OSError subclasses that name a path or an address the user gave (or the machine's state, not our code):
# a missing or unwritable file, a directory where a file was meant, a Ray --address nobody answers at.
USER_ERRORS = (
    CLIError,
    InputError,
    MediaError,
    ValidationError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    ConnectionError,
)
USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}  # disk full, quota, read-only file system


def is_user_error(err: BaseException) -> bool:
    return isinstance(err, USER_ERRORS) or (isinstance(err, OSError) and err.errno in USER_ERRNOS)


# Each role's pyproject extra, with modules that only it installs (found without importing them, so the check
# is instant and runs before any Ray starts), and the extras each command needs.
EXTRAS = {
    "serve": ("ray", "fastapi", "aiohttp", "uvicorn"),
    "data": ("ray", "pyarrow", "pandas", "music21", "mido"),
    "train": ("ray", "pyarrow", "pandas", "deepspeed"),
    "eval": ("ray", "pyarrow", "pandas", "librosa", "essentia", "mir_eval", "prdc", "scipy", "matplotlib", "auraloss"),
}
COMMAND_EXTRAS = {
    "serve": ("serve",),
    "make-dataset": ("data",),
    "prepare": ("data",),
    "train-tokenizer": ("data",),
    "score": ("data",),
    "train": ("train",),
    "train-vae": ("train",),
    "evaluate": ("eval",),
    "evaluate-vae": ("eval",),
    "quality": ("data", "eval"),
    "pipeline": ("data", "train", "eval"),
}


def require_extras(command: str) -> None:
    """One line naming the extra to install when a command's role is not installed."""
    for extra in COMMAND_EXTRAS.get(command, ()):
        missing = [name for name in EXTRAS[extra] if not _installed(name)]
        if missing:
            raise CLIError(
                f"`videorobin {command}` needs the [{extra}] extra: pip install 'video-robin[{extra}]'"
                f" (missing: {', '.join(missing)})"
            )


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a finder that refuses it, or a broken install
        return False


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """`-h`: epilogs (the examples) as written, and every option's default after its help, unless the help
    already says what the default is or there is none to show (None, off, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        nothing = default is None or default is False or default is argparse.SUPPRESS or default == []
        if not action.option_strings or "default" in text or nothing:  # (0 and 0.0 are shown)
            return text
        return f"{text} (default: %(default)s)"


class CommandParser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # argparse prints usage + error; we want one line
        raise CLIError(message)


def example(*lines: str) -> str:
    """A command's epilog: how it is run."""
    return "example:\n" + "\n".join(f"  {line}" for line in lines)


def one_line(err: BaseException) -> str:
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        return f"invalid config: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return " ".join(str(err).split()) or type(err).__name__


def device_name(name: str | None) -> str:
    if name:
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def job_flags(args, config_cls) -> dict:
    """The parsed flags that are fields of a job's config, by name (e.g. --encode-batch -> encode_batch), and
    the --config file's fields that have no flag."""
    flags = {k: getattr(args, k) for k in config_cls.model_fields if hasattr(args, k)}
    return flags | {k: v for k, v in getattr(args, "config_extra", {}).items() if k in config_cls.model_fields}


def say(args, text: str) -> None:
    """A line for the person at the terminal: on stdout, or on stderr under --json (stdout: the summary alone)."""
    print(text, file=sys.stderr if getattr(args, "json", False) else sys.stdout)


def model_checkpoint(args) -> str | None:
    """The checkpoint a command runs: --checkpoint, else the shipped default; None when --preset asks for
    random weights instead."""
    from model.checkpoint import default_checkpoint

    if getattr(args, "checkpoint", None) and getattr(args, "preset", None):
        raise CLIError("--checkpoint and --preset both choose the model: give one")
    if getattr(args, "set", None) and not getattr(args, "preset", None):
        raise CLIError("--set overrides a --preset's config (a checkpoint keeps its own): give --preset too")
    if getattr(args, "checkpoint", None):
        return args.checkpoint
    if getattr(args, "preset", None):
        return None
    default = default_checkpoint()
    if default is None:
        raise CLIError("this install ships no default model: pass --checkpoint, or --preset for random weights")
    return default


def load_model(args):
    """The Bundle a command runs (see `model_checkpoint`)."""
    from model.build import build_bundle
    from model.checkpoint import load_bundle
    from model.config import load_config

    checkpoint = model_checkpoint(args)
    if checkpoint is not None:
        return load_bundle(checkpoint)
    log.warning("--preset %s: randomly initialised weights, so the output is not music", args.preset)
    return build_bundle(load_config(args.preset, args.set), seed=0)


def saved_model(args, where: str) -> str:
    """A checkpoint path for commands whose workers load the model themselves (score, serve): the chosen
    one, or random `--preset` weights saved once at `where`."""
    from model.build import build_bundle
    from model.checkpoint import save_bundle
    from model.config import load_config
    from model.io import uri_exists, uri_join

    checkpoint = model_checkpoint(args)
    if checkpoint is not None:
        return checkpoint
    if not uri_exists(uri_join(where, "config.json")):
        log.warning("--preset %s: randomly initialised weights (saved to %s)", args.preset, where)
        save_bundle(build_bundle(load_config(args.preset, args.set)), where)
    return where


def scratch_dir(args, prefix: str) -> str:
    """A temporary directory that lives as long as the command: `main` removes it when the command ends,
    however it ends (a random --preset checkpoint saved for serve's replicas, say)."""
    return args.scratch.enter_context(tempfile.TemporaryDirectory(prefix=prefix, ignore_cleanup_errors=True))


def progress_bar(total_label: str) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    from tqdm import tqdm

    bar = tqdm(desc=total_label, unit="patch", disable=not sys.stderr.isatty())

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar.close


def add_model_args(p: argparse.ArgumentParser, *, device: bool = True, seed: bool = True) -> None:
    """Which model (--checkpoint/--preset/--set) and how it samples (--steps, --guidance, --max-duration); a job
    that does not take --device or --seed (score: each row has its seed, each actor pool its GPUs) does not
    get them, so argparse refuses them instead of the job ignoring them."""
    p.add_argument("--checkpoint", help="checkpoint directory (local path or fsspec URI); default: the shipped model")
    p.add_argument("--preset", help="random weights of this preset or config file instead (tiny, small, paper)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (with --preset)")
    if device:
        p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    if seed:
        p.add_argument("--seed", type=int, default=0, help="sampling seed: the same seed writes the same music")
    add_sampler_args(p)
    p.add_argument(
        "--decode-dtype",
        choices=DECODE_DTYPES,
        default="auto",
        help="the VAE decoder's precision; auto: bfloat16 where the hardware computes it natively and it pays "
        "(the Oobleck VAE), float32 elsewhere",
    )
    p.add_argument(
        "--compute-dtype",
        choices=COMPUTE_DTYPES,
        default="float32",
        help="the patch loop's precision; bfloat16: bf16 weights, matmuls and KV caches, fp32 ODE state (faster "
        "on GPUs and on CPUs with bf16 instructions; the music is a different draw of the same conditions)",
    )
    p.add_argument("--max-duration", type=float, default=7200.0, help="longest clip accepted, seconds")


def add_sampler_args(p: argparse.ArgumentParser) -> None:
    """How LocDiT samples each patch: --steps, --solver, --guidance (named as in the API; --cfg is the older
    spelling of the same flag). Each defaults to the model's own (`flow` in its config)."""
    p.add_argument("--steps", type=int, help="LocDiT solver steps per patch (>= 1; default: the model's)")
    p.add_argument(
        "--solver",
        choices=SOLVERS,
        help="LocDiT ODE solver: euler (one evaluation a step) or midpoint (two, second order: 4 midpoint "
        "steps cost 8 evaluations and land closer to the exact solution than 20 Euler steps); default: the model's",
    )
    p.add_argument(
        "--guidance",
        "--cfg",
        dest="guidance",
        type=float,
        help="classifier-free guidance scale (>= 0; default: the model's); --cfg is the same flag",
    )


def add_pool_args(p: argparse.ArgumentParser, stages: tuple[tuple[str, int], ...]) -> None:
    """Sizing flags of a Ray Data job's actor pools: --<stage>-actors/-batch/-gpus and --actor-cpus."""
    for stage, batch in stages:
        p.add_argument(f"--{stage}-actors", type=int, default=1, help=f"{stage} actor pool size")
        p.add_argument(f"--{stage}-batch", type=int, default=batch, help=f"rows per {stage} batch")
        p.add_argument(f"--{stage}-gpus", type=float, default=0.0, help=f"GPUs per {stage} actor")
    p.add_argument("--actor-cpus", type=float, default=0.5, help="CPUs per actor (keep <= 0.5 on tiny clusters)")


def add_run_args(p: argparse.ArgumentParser, name: str | None) -> None:
    """The flags of a Ray Train run: where it lives, resuming, its cluster."""
    p.add_argument("--storage", required=True, help="where runs and checkpoints live (path, s3://, gs://)")
    p.add_argument("--steps", type=int, required=True, help="optimizer steps in the whole run")
    p.add_argument("--name", default=name, help=f"run name under --storage (default: {name or 'videorobin-<stage>'})")
    p.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint (or start it)")
    p.add_argument("--address", help="Ray cluster address (default: start a local one)")
    p.add_argument("--workers", type=int, default=1, help="training workers (one per GPU)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="0 trains on CPUs (gloo, fp32)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per training worker")
    p.add_argument("--threads", type=int, help="torch threads per CPU worker (default: its CPUs)")
    p.add_argument("--batch-size", type=int, default=4, help="clips per worker per step")
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--max-failures", type=int, default=3, help="worker-group restarts before giving up")
    p.add_argument("--log-every", type=int, default=10, help="steps between step logs (loss, rate, ETA)")
    p.add_argument("--seed", type=int, default=0, help="seeds the initial weights, crops and shuffling")


def training_failed(err: BaseException) -> dict:
    print(f"videorobin: training failed: {one_line(err)}", file=sys.stderr)
    return {"exit_status": 1}
