"""`videorobin train`: Ray Train `TorchTrainer` + DeepSpeed over prepared shards, stage t2m, v2m or distill.

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

Stage distill trains only LocDiT, starting from --init-from's, to take --student-steps Euler steps where its
frozen starting copy takes --teacher-steps (model/distill.py); the export is --init-from with the new LocDiT
and `flow.steps` = --student-steps, so requests that name no step count take the few-step path.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from jobs.ray_session import connect
from jobs.train_config import DISTILL_FIELDS, DS_TAG, TrainConfig, read_stats
from jobs.train_runs import check_cluster_cpus, fit, read_train_state, refuse_unasked_resume, torch_trainer
from jobs.train_worker import train_loop
from model.build import Bundle
from model.checkpoint import (
    load_bundle,
    load_bundle_tokenizer,
    load_clip,
    load_vae_from_checkpoint,
    read_config,
    save_bundle,
    set_latent_stats,
)
from model.config import VideoRobinConfig, apply_overrides
from model.errors import InputError
from model.io import uri_exists, uri_join, write_bytes_atomic
from model.training import load_weights
from model.videorobin import VideoRobin

COLUMNS = ["id", "token_ids", "latents", "n_frames"]
VIDEO_COLUMNS = ["features", "n_features"]


def resolve_model(cfg: TrainConfig) -> VideoRobinConfig:
    """The config being trained: stage 1 from the data's encoders without vision; stage 2 from stage 1 plus
    the data's vision; distill: the teacher's, its default steps the student's. Its VAE and text settings
    must be the ones the data was made with."""
    if not uri_exists(uri_join(cfg.data, "latent_stats.json")):
        raise InputError(f"{cfg.data}: not a complete `videorobin prepare` output (no latent_stats.json)")
    data = read_config(cfg.data)
    if cfg.stage == "t2m":
        if cfg.init_from:
            base = read_config(cfg.init_from).model_copy(update={"vision": None})
        else:
            base = data.model_copy(update={"vision": None})
    elif cfg.stage == "distill":
        if not cfg.init_from:
            raise InputError("--stage distill needs --init-from: the model whose LocDiT is distilled")
        base = read_config(cfg.init_from)
        if base.vision is not None and data.vision != base.vision:
            raise InputError(f"{cfg.data}: its frame features were not made with {cfg.init_from}'s vision settings")
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
    if cfg.stage == "distill":  # the export's own default: the few steps it was trained for
        model = model.model_copy(
            update={"flow": model.flow.model_copy(update={"steps": cfg.student_steps, "solver": "euler"})}
        )
    return model


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
        {"train": cfg.model_dump(), "model": model_cfg.model_dump(), "stats": read_stats(cfg.stats_source)},
        cfg,
        datasets={"train": ds},
        dataset_config=DataConfig(execution_options=ExecutionOptions(preserve_order=True)),
    )


def export(checkpoint_dir: str, cfg: TrainConfig, model_cfg: VideoRobinConfig) -> dict:
    """A training checkpoint -> the model checkpoint format (`videorobin generate --checkpoint` loads it).

    The frozen VAE, CLIP and tokenizer come from the data's encoders, the latent statistics from the data; a
    distilled student is its teacher's checkpoint with the trained LocDiT.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag=DS_TAG)
    if cfg.stage == "distill":
        teacher = load_bundle(cfg.init_from)
        student = {k.removeprefix("locdit."): v for k, v in state.items() if k.startswith("locdit.")}
        teacher.model.locdit.load_state_dict(student)
        bundle = Bundle(model_cfg, teacher.model, teacher.vae, teacher.tokenizer)
    else:
        model = VideoRobin(model_cfg)
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
    if cfg.stage == "distill":
        provenance["distill"] = cfg.model_dump(include=DISTILL_FIELDS)
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
