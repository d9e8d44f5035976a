"""`videorobin train-vae`: train the spectral VAE (model/specvae.py) with Ray Train, on CPUs or GPUs.

    driver: the VAE config (a preset's `vae` section + overrides) and the clip list of a make-dataset manifest
      -> TorchTrainer.fit -> export (vae.json + vae.safetensors)
    each worker: its share of the clips decoded once into memory (mono, 16-bit) -> every step, random crops
      drawn from a seed of (seed, step, rank) -> SpectralVAELoss -> DDP all-reduce -> AdamW, warm-up + cosine
      -> checkpoint every --checkpoint-every steps (model, optimizer, step) -> resume from the latest

Plain DDP, not DeepSpeed: the model has a few million parameters, so ZeRO would shard nothing worth
sharding; the run directory, resume rules and failure handling are those of `videorobin train`
(jobs/train_runs.py). A crop's randomness depends only on (seed, step, rank), so a resumed run draws the
crops an unbroken one would have drawn.
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from jobs.catalogue import read_table
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
    warmup_cosine,
)
from model.checkpoint import read_config
from model.config import SpectralVAEConfig, VAEConfig
from model.errors import InputError
from model.io import absolute_uri, read_bytes, uri_exists, uri_join, write_bytes_atomic
from model.media import MediaError, read_audio
from model.specvae import SpectralVAE
from model.specvae_loss import SpectralLossWeights, SpectralVAELoss
from model.weights import write_safetensors

log = logging.getLogger(__name__)

MODEL_FILE = "vae_state.pt"  # model + optimizer state inside a training checkpoint
EXPORT_CONFIG, EXPORT_WEIGHTS = "vae.json", "vae.safetensors"


class TrainVAEConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    manifest: str  # a make-dataset manifest (train.jsonl): id, audio[, start, duration]
    storage: str
    steps: int = Field(gt=0)
    vae: SpectralVAEConfig = SpectralVAEConfig()
    losses: SpectralLossWeights = SpectralLossWeights()
    export: str | None = None
    name: str = "videorobin-vae"
    resume: bool = False
    address: str | None = None
    workers: int = Field(default=1, ge=1)
    gpus_per_worker: float = Field(default=0.0, ge=0)
    cpus_per_worker: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=8, ge=1)  # crops per worker per step
    crop_seconds: float = Field(default=2.0, gt=0)
    lr: float = Field(default=1e-3, gt=0)
    warmup: float = Field(default=0.02, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    checkpoint_every: int = Field(default=200, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1)
    max_failures: int = Field(default=3, ge=0)
    log_every: int = Field(default=10, ge=1)
    threads: int | None = Field(default=None, ge=1)  # torch threads per CPU worker (default: its CPUs)
    seed: int = 0

    @field_validator("manifest", "storage", "export")
    @classmethod
    def _absolute(cls, uri: str | None) -> str | None:
        return absolute_uri(uri) if uri is not None else None

    @property
    def crop_latents(self) -> int:
        return max(1, round(self.crop_seconds * self.vae.sample_rate / self.vae.hop))


def read_clips(manifest: str) -> list[dict]:
    """The manifest's clips: {"id", "audio", "start", "duration"} (duration <= 0: the whole file)."""
    rows = read_table(manifest)
    if "audio" not in rows[0]:
        raise InputError(f"{manifest}: no audio column")
    return [
        {
            "id": str(r.get("id", i)),
            "audio": r["audio"],
            "start": float(r.get("start") or 0.0),
            "duration": float(r.get("duration") or 0.0),
        }
        for i, r in enumerate(rows)
    ]


def load_mono_pcm(clip: dict, sample_rate: int) -> np.ndarray:
    """A clip's window as mono 16-bit PCM (half the memory of float32; the VAE reads the mid signal anyway)."""
    audio = read_audio(clip["audio"], sample_rate).mean(0)
    first = int(round(clip["start"] * sample_rate))
    last = first + int(round(clip["duration"] * sample_rate)) if clip["duration"] > 0 else audio.shape[0]
    return np.round(np.clip(audio[first:last], -1, 1) * 32767).astype(np.int16)


def draw_crops(clips: list[np.ndarray], batch: int, samples: int, rng: np.random.Generator) -> torch.Tensor:
    """(batch, 1, samples) float crops at random clips and offsets; clips shorter than a crop are zero-padded."""
    out = np.zeros((batch, 1, samples), np.float32)
    for i in range(batch):
        pcm = clips[int(rng.integers(len(clips)))]
        start = int(rng.integers(0, max(1, len(pcm) - samples + 1)))
        piece = pcm[start : start + samples]
        out[i, 0, : len(piece)] = piece / 32768.0
    return torch.from_numpy(out)


def export(checkpoint_dir: str, cfg: TrainVAEConfig) -> dict:
    """The trained weights as `vae.safetensors` + `vae.json` (the config a model's `vae` section takes)."""
    state = torch.load(os.path.join(checkpoint_dir, MODEL_FILE), map_location="cpu", weights_only=True)
    vae = SpectralVAE(cfg.vae)
    vae.load_state_dict(state["model"], strict=True)
    write_safetensors(uri_join(cfg.export, EXPORT_WEIGHTS), vae.state_dict())
    train_state = read_train_state(checkpoint_dir)
    info = {"step": train_state["step"], "manifest": cfg.manifest, "run": uri_join(cfg.storage, cfg.name)}
    write_bytes_atomic(uri_join(cfg.export, "training.json"), json.dumps(info, indent=2).encode())
    write_bytes_atomic(uri_join(cfg.export, EXPORT_CONFIG), cfg.vae.model_dump_json(indent=2).encode())  # last
    return info


def read_export(uri: str) -> VAEConfig:
    """The VAE config of a train-vae export (or of a Video-Robin checkpoint), pointing at its weights: what
    `prepare --vae` and `evaluate-vae --vae` take."""
    if uri_exists(uri_join(uri, EXPORT_CONFIG)):
        cfg = SpectralVAEConfig.model_validate_json(read_bytes(uri_join(uri, EXPORT_CONFIG)))
    elif uri_exists(uri_join(uri, "config.json")):
        cfg = read_config(uri).vae
    else:
        raise FileNotFoundError(f"{uri}: neither a train-vae export ({EXPORT_CONFIG}) nor a checkpoint (config.json)")
    return cfg.model_copy(update={"checkpoint": uri_join(uri, EXPORT_WEIGHTS)})


def run(cfg: TrainVAEConfig) -> dict:
    started = time.perf_counter()
    clips = read_clips(cfg.manifest)
    if len(clips) < cfg.workers:
        raise InputError(f"{cfg.manifest} has {len(clips)} clips for {cfg.workers} workers")
    refuse_unasked_resume(cfg.storage, cfg.name, cfg.resume)
    connect(cfg.address, log_to_driver=True)
    check_cluster_cpus(cfg.workers, cfg.cpus_per_worker, cfg.gpus_per_worker > 0, spare=0)
    result = fit(torch_trainer(train_loop, {"train": cfg.model_dump(), "clips": clips}, cfg))
    with result.checkpoint.as_directory() as ckpt:
        state = read_train_state(ckpt)
        if cfg.export:
            export(ckpt, cfg)
    history = state["history"]
    return {
        "steps": state["step"],
        "first_loss": round(history[0]["loss"], 4) if history else None,
        "final_loss": round(history[-1]["loss"], 4) if history else None,
        "audio_s_per_s": round(float(np.median([h["audio_s_per_s"] for h in history])), 2) if history else None,
        "checkpoint": result.checkpoint.path,
        "export": cfg.export,
        "wall_s": round(time.perf_counter() - started, 1),
    }


# ---- each worker -------------------------------------------------------------------------------------


def _load_share(clips: list[dict], rank: int, world: int, sample_rate: int) -> list[np.ndarray]:
    """This rank's clips in memory; an unreadable one is logged and left out, never fatal."""
    share = []
    for clip in clips[rank::world]:
        try:
            share.append(load_mono_pcm(clip, sample_rate))
        except (MediaError, OSError, ValueError) as err:
            log.warning("[videorobin train-vae] skipping %s: %s", clip["id"], " ".join(str(err).split()))
    if not share:
        raise InputError(f"worker {rank} could read none of its {len(clips[rank::world])} clips")
    return share


def train_loop(loop: dict) -> None:
    import ray.train
    import ray.train.torch

    from jobs.metrics import record_train_step

    cfg = TrainVAEConfig.model_validate(loop["train"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        set_cpu_threads(cfg)
    share = _load_share(loop["clips"], rank, world, cfg.vae.sample_rate)
    torch.manual_seed(cfg.seed)
    objective = SpectralVAELoss(SpectralVAE(cfg.vae), cfg.losses).to(device)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=cfg.lr, betas=(0.8, 0.99), weight_decay=cfg.weight_decay)
    state = {"step": 0, "history": [], "resumed_at": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            saved = torch.load(os.path.join(d, MODEL_FILE), map_location=device, weights_only=True)
            objective.vae.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            state = read_train_state(d)
        state["resumed_at"].append(state["step"])
    model = ray.train.torch.prepare_model(objective, move_to_device=False)
    warmup = max(1, round(cfg.warmup * cfg.steps))
    samples = cfg.crop_latents * cfg.vae.hop
    while state["step"] < cfg.steps:
        tick = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * warmup_cosine(state["step"], cfg.steps, warmup)
        rng = np.random.default_rng([cfg.seed, state["step"], rank])
        torch.manual_seed(int(rng.integers(2**62)))
        out = model(draw_crops(share, cfg.batch_size, samples, rng).to(device))
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(objective.parameters(), cfg.grad_clip)
        optimizer.step()
        state["step"] += 1
        seconds = time.perf_counter() - tick
        metrics = {k: float(v.detach()) for k, v in out.items()} | {
            "step": state["step"],
            "lr": optimizer.param_groups[0]["lr"],
            "grad_norm": float(grad_norm),
            "samples_per_s": cfg.batch_size * world / seconds,
            "patches_per_s": 0.0,
            "audio_s_per_s": cfg.batch_size * world * samples / cfg.vae.sample_rate / seconds,
        }
        if rank == 0:
            state["history"].append(metrics)
            record_train_step(cfg.name, "vae", metrics)
        last = state["step"] >= cfg.steps
        if state["step"] % cfg.checkpoint_every == 0 or last:

            def write(d: str) -> None:
                if rank == 0:
                    torch.save(
                        {"model": objective.vae.state_dict(), "optimizer": optimizer.state_dict()},
                        os.path.join(d, MODEL_FILE),
                    )

            save_checkpoint(write, state, metrics, rank)
        elif state["step"] % cfg.log_every == 0:
            ray.train.report(metrics)
        if rank == 0 and (state["step"] % cfg.log_every == 0 or last or state["step"] == 1):
            terms = " ".join(f"{k} {metrics[k]:.4f}" for k in ("magnitude", "convergence", "pitch", "kl"))
            log_step(
                "train-vae", state["step"], cfg.steps, metrics, f" {metrics['audio_s_per_s']:.2f} audio-s/s {terms}"
            )
