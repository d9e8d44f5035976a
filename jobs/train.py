"""`videorobin train`: Ray Train `TorchTrainer` + DeepSpeed over prepared shards, stage t2m or v2m.

    driver: resolve the model config -> Ray Data over shards/*.parquet -> TorchTrainer.fit -> export
    each worker: DeepSpeed engine (ZeRO-2 by default) -> get_dataset_shard -> collate -> step
                 -> metrics every step (Prometheus), report every --log-every steps, checkpoint every
                 --checkpoint-every steps and at the end

The same `train_loop` runs on GPUs (nccl, bf16) and on CPUs (gloo, fp32, torch AdamW). A run lives at
`<storage>/<name>`: Ray registers a checkpoint only once every rank's files are uploaded, so a crash
mid-save leaves the previous checkpoint as the latest. A lost worker restarts the worker group from it
(`--max-failures`); a rerun with `--resume` continues a stopped run. Data order is deterministic
(`preserve_order`, seeded local shuffle, per-step seeds), so a resumed run takes the steps an unbroken
one would have taken.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from importlib import resources
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from jobs.ray_session import connect
from jobs.train_runs import (
    check_cluster_cpus,
    fit,
    log_step,
    read_train_state,
    refuse_unasked_resume,
    save_checkpoint,
    set_cpu_threads,
    torch_trainer,
)
from model.build import Bundle
from model.checkpoint import (
    load_bundle_tokenizer,
    load_clip,
    load_vae_from_checkpoint,
    read_config,
    save_bundle,
    set_latent_stats,
)
from model.config import VideoRobinConfig, apply_overrides
from model.errors import InputError
from model.io import absolute_uri, read_bytes, uri_exists, uri_join, write_bytes_atomic
from model.training import STAGE2_NEW, collate, load_weights, step_seed
from model.videorobin import VideoRobin
from model.weights import read_safetensors

log = logging.getLogger(__name__)

DS_TAG = "ds"
COLUMNS = ["id", "token_ids", "latents", "n_frames"]
VIDEO_COLUMNS = ["features", "n_features"]


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: Literal["t2m", "v2m"]
    data: str  # a `videorobin prepare` output
    storage: str  # where runs and their checkpoints live (local path, s3://, gs://)
    steps: int = Field(gt=0)  # optimizer steps in the whole run
    export: str | None = None
    init_from: str | None = None  # a Video-Robin checkpoint; required for v2m (the stage-1 export)
    name: str | None = None  # run name under storage; default videorobin-<stage>
    resume: bool = False  # continue <storage>/<name> from its latest checkpoint (start it if it has none)
    address: str | None = None
    workers: int = Field(default=1, ge=1)
    gpus_per_worker: float = Field(default=0.0, ge=0)
    cpus_per_worker: float = Field(default=1.0, gt=0)
    threads: int | None = Field(default=None, ge=1)  # torch threads per CPU worker (default: its CPUs)
    read_cpus: float = Field(default=0.25, gt=0)  # per shard-reading task, beside the workers' CPUs
    deepspeed: str | None = None  # a DeepSpeed JSON; default jobs/deepspeed/zero2.json
    zero_stage: int | None = Field(default=None, ge=1, le=3)
    batch_size: int = Field(default=4, ge=1)  # clips per worker per micro-step
    lr: float = Field(default=1e-4, gt=0)  # peak of the cosine schedule
    warmup: float = Field(default=0.1, ge=0, lt=1)  # fraction of steps
    weight_decay: float = Field(default=0.01, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    clip_seconds: float = Field(default=10.0, gt=0)
    input_mask: float = Field(default=0.0, ge=0, lt=1)
    video_dropout: float = Field(default=0.0, ge=0, le=1)  # p of training a row without its video (v2m)
    shuffle_buffer: int = Field(default=64, ge=0)
    checkpoint_every: int = Field(default=100, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1)
    max_failures: int = Field(default=3, ge=0)
    log_every: int = Field(default=10, ge=1)
    seed: int = 0
    set: list[str] = []  # model config overrides

    @field_validator("data", "storage", "export", "init_from", "deepspeed")
    @classmethod
    def _absolute(cls, uri: str | None) -> str | None:
        return absolute_uri(uri) if uri is not None else None

    @property
    def run_name(self) -> str:
        return self.name or f"videorobin-{self.stage}"


# ---- the driver ---------------------------------------------------------------------------------------


def resolve_model(cfg: TrainConfig) -> VideoRobinConfig:
    """The config being trained: stage 1 from the data's encoders without vision; stage 2 from stage 1 plus
    the data's vision. Its VAE and text settings must be the ones the data was made with."""
    if not uri_exists(uri_join(cfg.data, "latent_stats.json")):
        raise InputError(f"{cfg.data}: not a complete `videorobin prepare` output (no latent_stats.json)")
    data = read_config(cfg.data)
    if cfg.stage == "t2m":
        if cfg.init_from:
            base = read_config(cfg.init_from).model_copy(update={"vision": None})
        else:
            base = data.model_copy(update={"vision": None})
    else:
        if not cfg.init_from:
            raise InputError("--stage v2m needs --init-from: a stage-1 (t2m) checkpoint")
        if data.vision is None:
            raise InputError(f"{cfg.data}: prepared without vision, so it has no frame features for v2m")
        base = read_config(cfg.init_from).model_copy(update={"vision": data.vision})
    model = apply_overrides(base, cfg.set)
    if model.vae != data.vae or model.latent_dim != data.latent_dim:
        raise InputError(f"the model's VAE differs from the one {cfg.data} was encoded with")
    if model.text != data.text:
        raise InputError(f"the model's text settings differ from those {cfg.data} was tokenized with")
    return model


def deepspeed_config(cfg: TrainConfig, on_gpu: bool) -> dict:
    """The DeepSpeed JSON with its "auto" fields filled from the run; CPU runs use fp32 and torch AdamW."""
    if cfg.deepspeed:
        ds = json.loads(read_bytes(cfg.deepspeed))
    else:
        ds = json.loads(resources.files("jobs.deepspeed").joinpath("zero2.json").read_text())
    if ds.get("bf16", {}).get("enabled") == "auto":
        ds["bf16"]["enabled"] = on_gpu
    fill = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_clipping": cfg.grad_clip,
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "total_num_steps": cfg.steps,
        "warmup_num_steps": max(1, round(cfg.warmup * cfg.steps)),
    }

    def resolve(node, key: str = ""):
        if isinstance(node, dict):
            return {k: resolve(v, k) for k, v in node.items()}
        if node == "auto" and key not in fill:
            raise InputError(f'DeepSpeed config: "{key}": "auto" is not a field `train` fills in')
        return fill[key] if node == "auto" else node

    ds = resolve(ds)
    ds.pop("train_batch_size", None)  # DeepSpeed derives it from micro batch x accumulation x world
    if cfg.zero_stage is not None:
        ds.setdefault("zero_optimization", {})["stage"] = cfg.zero_stage
    if not on_gpu:
        ds["bf16"] = {"enabled": False}
        ds.get("optimizer", {}).setdefault("params", {})["torch_adam"] = True  # no JIT-built CPU Adam
        ds.get("zero_optimization", {})["overlap_comm"] = False
    return ds


def read_stats(data: str) -> dict:
    stats = json.loads(read_bytes(uri_join(data, "latent_stats.json")))
    return {"mean": stats["mean"], "std": stats["std"]}


def build_trainer(cfg: TrainConfig, model_cfg: VideoRobinConfig):
    import ray
    from ray.data import ExecutionOptions
    from ray.train import DataConfig

    ray.data.DataContext.get_current().enable_progress_bars = False  # the driver prints training progress
    columns = COLUMNS + (VIDEO_COLUMNS if model_cfg.vision is not None else [])
    ds = ray.data.read_parquet(
        uri_join(cfg.data, "shards"), columns=columns, ray_remote_args={"num_cpus": cfg.read_cpus}
    )
    rows, need = ds.count(), cfg.workers * cfg.batch_size
    if rows < need:
        raise InputError(f"{cfg.data} has {rows} clips; {cfg.workers} workers x batch {cfg.batch_size} need {need}")
    # Ray Data lists the shard files in a 1-CPU task: on a small CPU cluster the workers can take every CPU.
    check_cluster_cpus(cfg.workers, cfg.cpus_per_worker, cfg.gpus_per_worker > 0, spare=1)
    return torch_trainer(
        train_loop,
        {"train": cfg.model_dump(), "model": model_cfg.model_dump(), "stats": read_stats(cfg.data)},
        cfg,
        datasets={"train": ds},
        dataset_config=DataConfig(execution_options=ExecutionOptions(preserve_order=True)),
    )


def export(checkpoint_dir: str, cfg: TrainConfig, model_cfg: VideoRobinConfig) -> dict:
    """A training checkpoint -> the model checkpoint format (`videorobin generate --checkpoint` loads it).

    The frozen VAE, CLIP and tokenizer come from the data's encoders, the latent statistics from the data.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    model = VideoRobin(model_cfg)
    state = get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag=DS_TAG)
    load_weights(model, state, allow_missing=("clip.",))
    if model.clip is not None:
        model.clip.load_state_dict(load_clip(cfg.data).state_dict())
    stats = read_stats(cfg.data)
    set_latent_stats(model, torch.tensor(stats["mean"]), torch.tensor(stats["std"]))
    bundle = Bundle(model_cfg, model, load_vae_from_checkpoint(cfg.data), load_bundle_tokenizer(cfg.data))
    train_state = read_train_state(checkpoint_dir)
    save_bundle(bundle, cfg.export)
    provenance = {
        "stage": cfg.stage,
        "step": train_state["step"],
        "data": cfg.data,
        "init_from": cfg.init_from,
        "run": uri_join(cfg.storage, cfg.run_name),
        "final_loss": train_state["history"][-1]["loss"] if train_state["history"] else None,
    }
    write_bytes_atomic(uri_join(cfg.export, "training.json"), json.dumps(provenance, indent=2).encode())
    return provenance


def run(cfg: TrainConfig) -> dict:
    started = time.perf_counter()
    model_cfg = resolve_model(cfg)
    refuse_unasked_resume(cfg.storage, cfg.run_name, cfg.resume)
    connect(cfg.address, log_to_driver=True)
    result = fit(build_trainer(cfg, model_cfg))
    with result.checkpoint.as_directory() as ckpt:
        state = read_train_state(ckpt)
        exported = export(ckpt, cfg, model_cfg) if cfg.export else None
    history = state["history"]
    rates = [h["samples_per_s"] for h in history[1:]] or [h["samples_per_s"] for h in history]
    return {
        "stage": cfg.stage,
        "steps": state["step"],
        "first_loss": round(history[0]["loss"], 4) if history else None,
        "final_loss": round(history[-1]["loss"], 4) if history else None,
        "samples_per_s": round(float(np.median(rates)), 3) if rates else None,
        "checkpoint": result.checkpoint.path,
        "export": cfg.export if exported else None,
        "wall_s": round(time.perf_counter() - started, 1),
    }


# ---- each worker -------------------------------------------------------------------------------------


def _skip_shm_build() -> None:
    """DeepSpeed JIT-compiles a shared-memory comm op at start-up (27-40 s on 2 cores); gloo on CPU needs none."""
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def _global_sums(values: list[float], device: torch.device) -> list[float]:
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _batches(shard, cfg: TrainConfig, epoch: int, skip: int):
    """(index in epoch, numpy batch) of one epoch, after the first `skip` (already trained on)."""
    it = shard.iter_batches(
        batch_size=cfg.batch_size,
        batch_format="numpy",
        drop_last=True,
        local_shuffle_buffer_size=cfg.shuffle_buffer or None,
        local_shuffle_seed=cfg.seed + epoch if cfg.shuffle_buffer else None,
    )
    for index, batch in enumerate(it):
        if index >= skip:
            yield index, batch


def train_loop(loop: dict) -> None:
    import deepspeed
    import ray.train
    import ray.train.torch

    from jobs.metrics import record_train_step

    cfg = TrainConfig.model_validate(loop["train"])
    model_cfg = VideoRobinConfig.model_validate(loop["model"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.cuda.set_device(device)
    else:
        _skip_shm_build()
        set_cpu_threads(cfg)

    torch.manual_seed(cfg.seed)
    model = VideoRobin(model_cfg)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and cfg.init_from:
        allow = STAGE2_NEW if cfg.stage == "v2m" else ("clip.",)
        load_weights(model, read_safetensors(uri_join(cfg.init_from, "model.safetensors")), allow_missing=allow)
    trainable = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=trainable, config=deepspeed_config(cfg, on_gpu))
    dtype = next(p.dtype for p in engine.module.parameters() if p.requires_grad)
    state = {"step": 0, "epoch": 0, "batch": 0, "history": [], "resumed_at": []}
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            engine.load_checkpoint(d, tag=DS_TAG)
            state = read_train_state(d)
        state["resumed_at"].append(state["step"])  # after a lost worker or --resume
        if rank == 0:
            log.info("[videorobin train] resumed at step %d (epoch %d)", state["step"], state["epoch"])

    mean, std = (np.asarray(loop["stats"][k], np.float32) for k in ("mean", "std"))
    shard = ray.train.get_dataset_shard("train")
    accumulated = {"loss": 0.0, "micro": 0, "samples": 0, "patches": 0}
    tick = time.perf_counter()
    engine.train()
    while state["step"] < cfg.steps:
        for index, batch in _batches(shard, cfg, state["epoch"], state["batch"]):
            rng = np.random.default_rng([cfg.seed, state["epoch"], index, rank])
            torch.manual_seed(step_seed(cfg.seed, state["step"], accumulated["micro"], rank))
            tb = collate(batch, model_cfg, cfg.clip_seconds, mean, std, rng, cfg.input_mask, cfg.video_dropout)
            tb = tb.to(device, dtype)
            loss = engine(tb.cond, tb.patches, tb.n_patches)["loss"]
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            state["batch"] = index + 1
            accumulated["loss"] += float(loss.detach())
            accumulated["micro"] += 1
            accumulated["samples"] += len(tb.n_patches)
            accumulated["patches"] += int(tb.n_patches.sum())
            if not boundary:
                continue
            state["step"] += 1
            loss_sum, micro, samples, patches = _global_sums(
                [accumulated[k] for k in ("loss", "micro", "samples", "patches")], device
            )
            seconds = time.perf_counter() - tick
            grad_norm = engine.get_global_grad_norm()
            metrics = {
                "step": state["step"],
                "epoch": state["epoch"],
                "loss": loss_sum / micro,
                "lr": engine.get_lr()[0],
                "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                "samples_per_s": samples / seconds,
                "patches_per_s": patches / seconds,
            }
            if rank == 0:
                state["history"].append(metrics)
                record_train_step(cfg.run_name, cfg.stage, metrics, cfg.steps)
            last = state["step"] >= cfg.steps
            if state["step"] % cfg.checkpoint_every == 0 or last:
                save_checkpoint(lambda d: engine.save_checkpoint(d, tag=DS_TAG), state, metrics, rank)
            elif state["step"] % cfg.log_every == 0:
                ray.train.report(metrics)
            if rank == 0 and (state["step"] % cfg.log_every == 0 or last or state["step"] == 1):
                log_step("train", state["step"], cfg.steps, metrics, f" {metrics['patches_per_s']:.1f} patches/s")
            accumulated = {"loss": 0.0, "micro": 0, "samples": 0, "patches": 0}
            tick = time.perf_counter()
            if last:
                return
        state["epoch"], state["batch"] = state["epoch"] + 1, 0
