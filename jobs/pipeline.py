"""`videorobin pipeline`: the recipe that makes the default model, as one resumable chain of Ray jobs.

    dataset -> tokenizer -> vae -> vae_report -> prepare -> t2m -> v2m -> quality  [-> publish]

Each step is one of our own commands (make-dataset, train-tokenizer, train-vae, evaluate-vae, prepare,
train, quality) called with the recipe's settings and fixed paths under `--out`; a step whose complete
output exists is skipped, and the training steps resume their runs (`--resume`), so a stopped chain rerun
with the same arguments loses at most the steps since the last checkpoint. `pipeline.json` records each
step's settings, summary and wall time. A recipe is YAML with one section per step (jobs/recipes/);
`--set t2m.steps=500` overrides a value. Publishing writes the v2m model in fp16 with a provenance file.

    OUT/dataset/  OUT/tokenizer/  OUT/vae/  OUT/vae_report/  OUT/prepared/  OUT/runs/  OUT/t2m/  OUT/v2m/
    OUT/quality/  OUT/pipeline.json
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from jobs.ray_session import connect
from model.errors import InputError
from model.io import read_bytes, uri_exists, uri_join, write_bytes_atomic

log = logging.getLogger(__name__)

STEPS = ("dataset", "tokenizer", "vae", "vae_report", "prepare", "t2m", "v2m", "quality")
RECORD = "pipeline.json"


class PipelineError(InputError):
    """A recipe or chain that cannot run, with a one-line reason."""


class Recipe(BaseModel):
    """One section per step: the flags of that step's command (the paths come from the pipeline)."""

    model_config = ConfigDict(extra="forbid")

    preset: str = "small"  # the model (and VAE) shape every step builds
    dataset: dict[str, Any] = Field(default_factory=dict)
    tokenizer: dict[str, Any] | None = None  # absent: the byte-level tokenizer
    vae: dict[str, Any] = Field(default_factory=dict)
    vae_report: dict[str, Any] = Field(default_factory=dict)
    prepare: dict[str, Any] = Field(default_factory=dict)
    t2m: dict[str, Any] = Field(default_factory=dict)
    v2m: dict[str, Any] = Field(default_factory=dict)
    quality: dict[str, Any] = Field(default_factory=dict)


def load_recipe(source: str, overrides: list[str]) -> Recipe:
    """A recipe by name (jobs/recipes/<name>.yaml) or path, with `step.key=value` overrides."""
    from model.config import _apply_override

    if os.path.isfile(source):
        text = open(source).read()
    else:
        candidate = resources.files("jobs.recipes").joinpath(f"{source}.yaml")
        if not candidate.is_file():
            raise PipelineError(f"unknown recipe {source!r}: neither a file nor one of jobs/recipes/")
        text = candidate.read_text()
    try:
        tree = yaml.safe_load(text) or {}
        for assignment in overrides:
            _apply_override(tree, assignment)
        return Recipe.model_validate(tree)
    except (ValueError, yaml.YAMLError) as err:
        raise PipelineError(f"recipe {source}: {' '.join(str(err).split())}") from None


class Paths:
    def __init__(self, out: str) -> None:
        self.out = out
        self.dataset = uri_join(out, "dataset")
        self.tokenizer = uri_join(out, "tokenizer")
        self.runs = uri_join(out, "runs")
        self.vae = uri_join(out, "vae")
        self.vae_report = uri_join(out, "vae_report")
        self.prepared = uri_join(out, "prepared")
        self.t2m = uri_join(out, "t2m")
        self.v2m = uri_join(out, "v2m")
        self.quality = uri_join(out, "quality")

    def split(self, name: str) -> str:
        return uri_join(self.dataset, f"{name}.jsonl")


# ---- the steps: (is it done?, run it) ---------------------------------------------------------------


def _dataset(recipe: Recipe, p: Paths, address: str | None) -> dict:
    from jobs.dataset import DatasetConfig, run

    return run(DatasetConfig(out=p.dataset, address=address, **recipe.dataset))


def _tokenizer(recipe: Recipe, p: Paths, address: str | None) -> dict:
    from jobs.tokenizer import run

    return run(p.split("train"), p.tokenizer, **recipe.tokenizer)


def _vae(recipe: Recipe, p: Paths, address: str | None) -> dict:
    from jobs.train_vae import TrainVAEConfig, run
    from model.config import load_config

    vae = load_config(recipe.preset).vae
    cfg = TrainVAEConfig(
        manifest=p.split("train"), storage=p.runs, export=p.vae, name="vae", resume=True, address=address,
        vae=vae.model_copy(update={"checkpoint": None}), **recipe.vae,
    )  # fmt: skip
    return run(cfg)


def _vae_report(recipe: Recipe, p: Paths, address: str | None) -> dict:
    from jobs.train_vae import read_export
    from jobs.vae_report import VAEReportConfig, run

    cfg = VAEReportConfig(
        vae=read_export(p.vae), manifest=p.split("heldout"), out=p.vae_report, address=address, **recipe.vae_report
    )
    return run(cfg)


def model_config(recipe: Recipe, p: Paths):
    """The model every training step builds: the preset, our trained VAE, and the learned tokenizer if any."""
    from jobs.train_vae import read_export
    from model.config import load_config, with_vae

    overrides = [f"text.tokenizer={p.tokenizer}"] if recipe.tokenizer is not None else []
    return with_vae(load_config(recipe.preset, overrides), read_export(p.vae))


def _prepare(recipe: Recipe, p: Paths, address: str | None) -> dict:
    from jobs.prepare import PrepareConfig, run

    cfg = PrepareConfig(
        manifest=p.split("train"), out=p.prepared, model=model_config(recipe, p), address=address, **recipe.prepare
    )
    return run(cfg)


def _train(stage: str, recipe: Recipe, p: Paths, address: str | None) -> dict:
    from jobs.train import TrainConfig, run

    settings = getattr(recipe, stage)
    cfg = TrainConfig(
        stage=stage, data=p.prepared, storage=p.runs, name=stage, resume=True, address=address,
        export=getattr(p, stage), init_from=p.t2m if stage == "v2m" else None, **settings,
    )  # fmt: skip
    return run(cfg)


def _quality(recipe: Recipe, p: Paths, address: str | None) -> dict:
    from jobs.quality import QualityConfig, run

    cfg = QualityConfig(checkpoint=p.v2m, manifest=p.split("heldout"), out=p.quality, address=address, **recipe.quality)
    return run(cfg)["conditions"]


Step = Callable[[Recipe, Paths, "str | None"], dict]
STEP_RUNS: dict[str, tuple[Callable[[Paths], str], Step]] = {
    "dataset": (lambda p: uri_join(p.dataset, "heldout.jsonl"), _dataset),
    "tokenizer": (lambda p: uri_join(p.tokenizer, "tokenizer.json"), _tokenizer),
    "vae": (lambda p: uri_join(p.vae, "vae.json"), _vae),
    "vae_report": (lambda p: uri_join(p.vae_report, "vae_metrics.json"), _vae_report),
    "prepare": (lambda p: uri_join(p.prepared, "latent_stats.json"), _prepare),
    "t2m": (lambda p: uri_join(p.t2m, "training.json"), lambda r, p, a: _train("t2m", r, p, a)),
    "v2m": (lambda p: uri_join(p.v2m, "training.json"), lambda r, p, a: _train("v2m", r, p, a)),
    "quality": (lambda p: uri_join(p.quality, "quality.json"), _quality),
}


def device_description() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"{os.cpu_count()}-core {platform.machine()} CPU, no GPU"


def _record(out: str) -> dict:
    uri = uri_join(out, RECORD)
    return json.loads(read_bytes(uri)) if uri_exists(uri) else {"steps": {}}


def run(
    recipe: Recipe, out: str, address: str | None = None, only: list[str] | None = None, publish: str | None = None
):
    unknown = set(only or []) - set(STEPS)
    if unknown:
        raise PipelineError(f"unknown step(s) {', '.join(sorted(unknown))} (steps: {', '.join(STEPS)})")
    if recipe.tokenizer is None and only and "tokenizer" in only:
        raise PipelineError("the recipe has no tokenizer step (it uses the byte-level tokenizer)")
    p = Paths(out)
    record = _record(out)
    record["recipe"] = recipe.model_dump()
    connect(address, log_to_driver=True)
    for name in STEPS:
        if (only and name not in only) or (name == "tokenizer" and recipe.tokenizer is None):
            continue
        marker, step = STEP_RUNS[name]
        if uri_exists(marker(p)):
            log.info("[videorobin pipeline] %s: complete, skipped", name)
            continue
        log.info("[videorobin pipeline] %s: running", name)
        started = time.time()
        summary = step(recipe, p, address)
        if not uri_exists(marker(p)):
            raise PipelineError(f"step {name} ended without its output ({marker(p)}): see its log above")
        record["steps"][name] = {
            "settings": getattr(recipe, name, None),
            "summary": summary,
            "wall_s": round(time.time() - started, 1),  # of the run that finished it (a resumed one: since resuming)
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "device": device_description(),
        }
        write_bytes_atomic(uri_join(out, RECORD), json.dumps(record, indent=2, default=str).encode())
    result = {"out": out, "steps_done": ", ".join(n for n in STEPS if uri_exists(STEP_RUNS[n][0](p)))}
    if publish:
        from jobs.publish import publish_model

        result["published"] = publish_model(p, record, publish)
    return result
