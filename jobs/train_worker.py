"""Each `videorobin train` worker: a DeepSpeed engine over its Ray Data shard (see jobs/train.py)."""

from __future__ import annotations

import copy
import importlib
import logging
import time

import numpy as np
import torch

from jobs.train_config import DS_TAG, TrainConfig, deepspeed_config
from jobs.train_runs import log_step, read_train_state, save_checkpoint, set_cpu_threads
from model.config import VideoRobinConfig
from model.distill import Distillation
from model.io import uri_join
from model.training import STAGE2_NEW, collate, load_weights, step_seed
from model.videorobin import VideoRobin
from model.weights import read_safetensors

log = logging.getLogger(__name__)


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


def distillation(model: VideoRobin, cfg: TrainConfig) -> Distillation:
    """Freeze everything but LocDiT; its starting weights, copied, become the frozen teacher."""
    teacher = copy.deepcopy(model.locdit).requires_grad_(False).eval()
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("locdit."))
    return Distillation(
        teacher,
        cfg.student_steps,
        cfg.teacher_steps,
        cfg.teacher_solver == "midpoint",
        cfg.distill_patches,
        cfg.distill_guidance,
    )


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
    if cfg.init_from and (checkpoint is None or cfg.stage == "distill"):  # a resumed student keeps its teacher
        allow = STAGE2_NEW if cfg.stage == "v2m" else ("clip.",)
        load_weights(model, read_safetensors(uri_join(cfg.init_from, "model.safetensors")), allow_missing=allow)
    distill = distillation(model, cfg) if cfg.stage == "distill" else None
    trainable = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=trainable, config=deepspeed_config(cfg, on_gpu))
    dtype = next(p.dtype for p in engine.module.parameters() if p.requires_grad)
    if distill is not None:
        distill.teacher.to(device, dtype)
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
            loss = engine(tb.cond, tb.patches, tb.n_patches, distill)["loss"]
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
