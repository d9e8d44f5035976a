"""The `videorobin train` settings, and what the driver and its workers both read from them: the DeepSpeed
JSON and the latent statistics."""

from __future__ import annotations

import json
from importlib import resources
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from model.config import Solver
from model.errors import InputError
from model.io import absolute_uri, read_bytes, uri_join

DS_TAG = "ds"
DISTILL_FIELDS = {"student_steps", "teacher_steps", "teacher_solver", "distill_patches", "distill_guidance"}


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: Literal["t2m", "v2m", "distill"]
    data: str  # a `videorobin prepare` output
    storage: str  # where runs and their checkpoints live (local path, s3://, gs://)
    steps: int = Field(gt=0)  # optimizer steps in the whole run
    export: str | None = None
    init_from: str | None = None  # a Video-Robin checkpoint; required for v2m (the stage-1 export) and distill
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
    # stage distill (model/distill.py)
    student_steps: int = Field(default=4, ge=1)
    teacher_steps: int = Field(default=8, ge=1)
    teacher_solver: Solver = "midpoint"
    distill_patches: int = Field(default=64, ge=1)  # per worker per micro-step
    distill_guidance: tuple[float, float] = (1.0, 4.0)  # each patch's guidance weight, uniform in this range

    @field_validator("data", "storage", "export", "init_from", "deepspeed")
    @classmethod
    def _absolute(cls, uri: str | None) -> str | None:
        return absolute_uri(uri) if uri is not None else None

    @field_validator("distill_guidance")
    @classmethod
    def _range(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= bounds[0] <= bounds[1]:
            raise ValueError(f"distill_guidance {bounds}: expected 0 <= low <= high")
        return bounds

    @property
    def run_name(self) -> str:
        return self.name or f"videorobin-{self.stage}"

    @property
    def stats_source(self) -> str:
        """Where the latent standardisation comes from: a distilled student keeps its teacher's."""
        return self.init_from if self.stage == "distill" else self.data


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
