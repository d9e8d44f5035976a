"""What every Ray Train job of ours shares: the run directory, its checkpoints, resume rules, the schedule.

A run lives at `<storage>/<name>`. Ray registers a checkpoint only once every rank's files are uploaded (its
snapshot file names the latest), so a crash mid-save leaves the previous checkpoint as the latest. Each
checkpoint carries `train_state.json` (step, data position, loss history) beside the model's own files.
`videorobin train` (DeepSpeed) and `videorobin train-vae` (DDP) both build on this.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable

from jobs.progress import eta_text
from model.errors import InputError
from model.io import read_bytes, uri_exists, uri_join

log = logging.getLogger(__name__)

STATE_FILE = "train_state.json"
RUN_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's registered checkpoints


class TrainingFailed(Exception):
    """The run ended in an error after its retries (`--max-failures`)."""


def run_exists(storage: str, name: str) -> bool:
    return uri_exists(uri_join(uri_join(storage, name), RUN_SNAPSHOT))


def refuse_unasked_resume(storage: str, name: str, resume: bool) -> None:
    """Ray Train would silently continue a run that has checkpoints; we make the caller say so."""
    if run_exists(storage, name) and not resume:
        raise InputError(
            f"run {name} already has checkpoints under {storage}: pass --resume to continue it or --name for a new run"
        )


def latest_train_state(storage: str, name: str) -> dict | None:
    """train_state.json of a run's latest registered checkpoint, or None while it has none."""
    run_dir = uri_join(storage, name)
    if not uri_exists(uri_join(run_dir, RUN_SNAPSHOT)):
        return None
    latest = json.loads(read_bytes(uri_join(run_dir, RUN_SNAPSHOT)))["latest_checkpoint_result"]
    if latest is None:
        return None
    return json.loads(read_bytes(uri_join(uri_join(run_dir, latest["checkpoint_dir_name"]), STATE_FILE)))


def read_train_state(checkpoint_dir: str) -> dict:
    with open(os.path.join(checkpoint_dir, STATE_FILE)) as f:
        return json.load(f)


def check_cluster_cpus(workers: int, cpus_per_worker: float, use_gpu: bool, spare: float) -> None:
    """Refuse a CPU run whose workers leave fewer than `spare` CPUs for its data tasks (Ray would wait forever)."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 0)
    if not use_gpu and cpus < workers * cpus_per_worker + spare:
        raise InputError(
            f"the cluster has {cpus:g} CPUs: {workers} workers x {cpus_per_worker:g} CPUs leave fewer than {spare:g} "
            "for reading the data; lower --cpus-per-worker or --workers"
        )


def torch_trainer(loop, loop_config: dict, cfg, **data):
    """A TorchTrainer for `loop` with the run settings every training config of ours has (`name` or `run_name`,
    storage, workers, GPUs and CPUs per worker, checkpoints kept, failures allowed); `data` holds Ray Data
    arguments (datasets, dataset_config) when the loop reads a dataset shard."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = cfg.gpus_per_worker > 0
    resources = {"CPU": cfg.cpus_per_worker} | ({"GPU": cfg.gpus_per_worker} if use_gpu else {})
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name=getattr(cfg, "run_name", None) or cfg.name,
            storage_path=cfg.storage,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
        ),
        **data,
    )


def set_cpu_threads(cfg) -> None:
    """A CPU worker's torch threads: `threads` when given, else one per CPU it reserved."""
    import torch

    torch.set_num_threads(cfg.threads or max(1, int(cfg.cpus_per_worker)))


def fit(trainer):
    """trainer.fit(), with Ray's failure after the retries turned into one `TrainingFailed` line."""
    import ray.train

    try:
        return trainer.fit()
    except ray.train.TrainingFailedError as err:
        raise TrainingFailed(" ".join(str(err).split())[-2000:]) from err


def save_checkpoint(write_files: Callable[[str], None], state: dict, metrics: dict, rank: int) -> None:
    """Report a checkpoint: `write_files(dir)` on every rank (a collective for sharded saves), state from rank 0."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        write_files(tmp)
        if rank == 0:
            with open(os.path.join(tmp, STATE_FILE), "w") as f:
                json.dump(state, f)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR factor at optimizer step `step` (0-based): linear warm-up to 1, then cosine to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


_last_logged: dict[str, tuple[int, float]] = {}  # job -> (step, time) of its previous step line: the ETA's rate


def log_step(job: str, step: int, total: int, metrics: dict, extra: str = "") -> None:
    """The step line (rank 0, every --log-every steps), ending with the ETA: steps left at the rate since the
    previous line (checkpoints and data waits included), from the second line on."""
    now = time.monotonic()
    before = _last_logged.get(job)
    _last_logged[job] = (step, now)
    if before is not None and step > before[0] and now > before[1]:
        rate = (step - before[0]) / (now - before[1])
        extra += f", {rate:.3g} steps/s, ETA {eta_text((total - step) / rate)}"
    log.info(
        "[videorobin %s] step %d/%d loss %.4f lr %.2e grad-norm %.3f %.2f samples/s%s",
        job,
        step,
        total,
        metrics["loss"],
        metrics["lr"],
        metrics["grad_norm"],
        metrics["samples_per_s"],
        extra,
    )
