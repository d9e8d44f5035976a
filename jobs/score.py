"""`videorobin score`: soundtracks for a whole video catalogue, as a resumable Ray Data job.

    catalogue rows -> probe (CPU tasks) -> generation (actor pool, the batched engine; each video's frames are
      read and CLIP-encoded window by window) -> VAE decode (actor pool) -> write (CPU tasks)

Every stage passes failed rows through untouched, so a bad video becomes a `failed` manifest row and the
job goes on (a video that breaks mid-way fails alone: the engine stops its row only). Output under `--out`:

    audio/<id>.wav|flac    the soundtrack (48 kHz stereo, the video's duration)
    mp4/<id>.mp4           the video with the soundtrack muxed in (with --mux)
    manifest.parquet       one row per catalogue row (see jobs/catalogue.py: MANIFEST_SCHEMA)
    parts/                 manifest rows streamed while a run is going; folded into manifest.parquet
    model/                 the randomly initialised model, only when no --checkpoint was given

Names are deterministic and every file is written under a temporary name then moved, so a rerun skips
ids already `ok`, retries `failed` ones (unless --skip-failed), and a killed run leaves no partial file.
"""

from __future__ import annotations

import glob as globlib
import logging
import math
import os
import time
import uuid
from contextlib import ExitStack

import fsspec
import numpy as np
import ray
import torch
from pydantic import BaseModel, ConfigDict, Field

from jobs.catalogue import read_catalogue, read_manifests, write_manifest
from jobs.metrics import record_rows_left, record_stage
from jobs.progress import track
from jobs.ray_session import connect
from jobs.score_tasks import error_text, probe, write_outputs
from model.checkpoint import checkpoint_id, load_bundle, load_vae_from_checkpoint, read_config
from model.config import ComputeDtype, DecodeDtype, Solver
from model.engine import Engine, GenerationParams
from model.engine.engine import decode_latents
from model.io import glob_uris, is_temp_sibling, local_copy, uri_exists, uri_join

log = logging.getLogger(__name__)


class ScoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    catalogue: str
    out: str
    checkpoint: str
    default_prompt: str | None = None
    format: str = Field(default="wav", pattern="^(wav|flac)$")
    mux: bool = False
    address: str | None = None
    steps: int | None = Field(default=None, ge=1)  # default: the model's
    guidance: float | None = Field(default=None, ge=0)
    solver: Solver | None = None  # default: the model's
    decode_dtype: DecodeDtype = "auto"  # the VAE decoder's (model/vae.py)
    compute_dtype: ComputeDtype = "float32"  # the patch loop's (model/engine/precision.py)
    max_duration_s: float = Field(default=7200.0, gt=0)
    skip_failed: bool = False
    rows_per_block: int = Field(default=4, ge=1)  # resume granularity: a block is the unit Ray Data commits
    probe_cpus: float = Field(default=0.25, gt=0)
    probe_tasks: int = Field(default=4, ge=1)  # concurrent probe/write tasks (each decodes one video)
    generate_actors: int = Field(default=1, ge=1)
    generate_batch: int = Field(default=8, ge=1)
    generate_gpus: float = Field(default=0.0, ge=0)
    decode_actors: int = Field(default=1, ge=1)
    decode_batch: int = Field(default=4, ge=1)
    decode_gpus: float = Field(default=0.0, ge=0)
    actor_cpus: float = Field(default=0.5, gt=0)  # <= 0.5 on small clusters: whole-CPU actors starve the reads
    dataset: str | None = None  # the metrics' `dataset` tag; default: the catalogue's name (see dataset_tag)

    @property
    def dataset_tag(self) -> str:
        """`dataset`, else the catalogue's file stem (`s3://b/films.parquet` -> films) or a glob's folder
        (`s3://b/films/*.mp4` -> films): what the scoring dashboard filters by."""
        if self.dataset:
            return self.dataset
        parts = self.catalogue.rstrip("/").split("/")
        while len(parts) > 1 and globlib.has_magic(parts[-1]):
            parts.pop()
        name = parts[-1].split(".")[0]
        return name if name and not globlib.has_magic(name) else "catalogue"


# ---- stages (plain callables and callable classes, as Ray Data wants them) ---------------------------------


def _device(gpus: float) -> str:
    return "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"


def _ok_rows(batch: dict) -> list[int]:
    return [i for i, status in enumerate(batch["status"]) if status == "ok"]


def _stage_seconds(batch: dict, worked_on: list[int], seconds: float) -> np.ndarray:
    """A batched stage's wall time, charged to each row it worked on (a row's batch time, not a share)."""
    out = np.zeros(len(batch["id"]))
    out[worked_on] = seconds
    return out


def _writable(batch: dict) -> dict:
    """Object-dtype status/error columns, so a stage can mark a row failed with any message."""
    batch["status"] = np.asarray(batch["status"], dtype=object)
    batch["error"] = np.asarray(batch["error"], dtype=object)
    return batch


class GenerateLatents:
    """The batched engine: videos of different lengths advance together, one request per row, each video read
    window by window from its file (a local copy for remote URIs, kept while the batch runs)."""

    def __init__(
        self,
        checkpoint: str,
        gpus: float,
        max_batch: int,
        steps: int | None,
        guidance: float | None,
        solver: str | None,
        max_duration_s: float,
        dataset: str = "",
        compute_dtype: ComputeDtype = "float32",
    ) -> None:
        self.dataset = dataset
        self.engine = Engine(
            load_bundle(checkpoint),
            device=_device(gpus),
            max_batch=max_batch,
            max_duration_s=max_duration_s,
            compute_dtype=compute_dtype,
        )
        self.steps, self.guidance, self.solver = steps, guidance, solver

    def __call__(self, batch: dict) -> dict:
        start = time.perf_counter()
        batch = _writable(batch)
        latents = [np.zeros((0, 0), np.float32) for _ in batch["id"]]
        requests = {}
        with ExitStack() as files:
            for i in _ok_rows(batch):
                try:
                    video = str(batch["video"][i])
                    path = files.enter_context(local_copy(video, suffix=os.path.splitext(video)[1]))
                    params = GenerationParams(
                        seed=int(batch["seed"][i]),
                        duration_s=float(batch["duration_s"][i]),
                        steps=self.steps,
                        guidance=self.guidance,
                        solver=self.solver,
                    )
                    requests[i] = self.engine.make_request(
                        video=path, prompt=batch["prompt"][i], params=params, request_id=str(batch["id"][i])
                    )
                except Exception as err:  # noqa: BLE001 - a bad row fails alone
                    _fail_in_batch(batch, i, "generate", err)
            errors: dict[str, str] = {}
            frames = self._generate(list(requests.values()), errors)
        for i, request in list(requests.items()):
            if request.request_id in errors:
                _fail_in_batch(batch, i, "generate", RuntimeError(errors.pop(request.request_id)))
                del requests[i]
                continue
            latents[i] = self.engine.to_latents(frames[request.request_id]).numpy()
        batch["latents"] = np.array(latents + [None], dtype=object)[:-1]
        seconds = time.perf_counter() - start
        batch["generate_s"] = _stage_seconds(batch, list(requests), seconds)
        record_stage("generate", [batch["status"][i] for i in requests], seconds, self.dataset)
        return batch

    def _generate(self, requests: list, errors: dict[str, str]) -> dict:
        """The batch's latents; if the batch raises, each request runs alone so only the one at fault fails
        (a request's output does not depend on its batch, so the others are unchanged)."""
        try:
            return self.engine.generate_latents(requests, errors=errors) if requests else {}
        except Exception:  # noqa: BLE001 - isolate the row at fault below
            log.warning("a generation batch failed; retrying its %d requests one by one", len(requests), exc_info=True)
        frames = {}  # the engine's stream freed every row of the failed batch
        for request in requests:
            try:
                frames |= self.engine.generate_latents([request], errors=errors)
            except Exception as err:  # noqa: BLE001
                errors[request.request_id] = f"{type(err).__name__}: {err}"
        return frames


class DecodeAudio:
    """VAE decode (overlapping chunks) of each row's latents, trimmed to its duration."""

    def __init__(self, checkpoint: str, gpus: float, dataset: str = "", decode_dtype: DecodeDtype = "auto") -> None:
        self.dataset = dataset
        self.vae = load_vae_from_checkpoint(checkpoint, _device(gpus), decode_dtype)

    def __call__(self, batch: dict) -> dict:
        start = time.perf_counter()
        audio = [np.zeros((0, 0), np.float32) for _ in batch["id"]]
        ok = _ok_rows(batch)
        batch = _writable(batch)
        for i in ok:
            try:
                latents = torch.from_numpy(np.asarray(batch["latents"][i], np.float32))
                audio[i] = decode_latents(self.vae, latents, float(batch["duration_s"][i]))
            except Exception as err:  # noqa: BLE001 - a bad row fails alone
                _fail_in_batch(batch, i, "decode", err)
        batch["audio"] = np.array(audio + [None], dtype=object)[:-1]
        del batch["latents"]
        seconds = time.perf_counter() - start
        batch["decode_s"] = _stage_seconds(batch, ok, seconds)
        record_stage("decode", [batch["status"][i] for i in ok], seconds, self.dataset)
        return batch


def _fail_in_batch(batch: dict, i: int, stage: str, err: BaseException) -> None:
    batch["status"][i], batch["error"][i] = "failed", error_text(stage, err)


# ---- the driver -------------------------------------------------------------------------------------------


OUTPUT_DIRS = ("", "audio", "mp4", "parts")  # where score writes; nothing else under --out is touched


def _remove_leftovers(out: str) -> int:
    """Delete the temporary files a killed run left behind: only score's own, by their names (a hidden
    `.<name>.<32 hex>.<ext>` sibling in one of score's output directories), never anything else in `--out`."""
    fs, root = fsspec.core.url_to_fs(out)
    leftovers = []
    for sub in OUTPUT_DIRS:
        folder = f"{root.rstrip('/')}/{sub}" if sub else root
        if fs.isdir(folder):
            leftovers += [p for p in fs.ls(folder, detail=False) if is_temp_sibling(p) and fs.isfile(p)]
    for path in leftovers:
        fs.rm(path)
    return len(leftovers)


def _manifest_files(out: str) -> list[str]:
    main = uri_join(out, "manifest.parquet")
    return ([main] if uri_exists(main) else []) + glob_uris(uri_join(out, "parts/*.parquet"))


def _actor_stage(
    ds: ray.data.Dataset, cls: type, batch: int, actors: int, gpus: float, cpus: float, **kwargs
) -> ray.data.Dataset:
    return ds.map_batches(
        cls,
        batch_size=batch,
        batch_format="numpy",
        num_cpus=cpus,
        num_gpus=gpus,
        compute=ray.data.ActorPoolStrategy(size=actors),
        fn_constructor_kwargs={"gpus": gpus, **kwargs},
    )


def build_pipeline(cfg: ScoreConfig, rows: list[dict], model_id: str) -> ray.data.Dataset:
    model_cfg = read_config(cfg.checkpoint)
    vision = model_cfg.vision
    image_size = vision.frame_size if vision is not None else 224
    tasks = ray.data.TaskPoolStrategy(size=cfg.probe_tasks)  # each probe decodes a video: bound them
    ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / cfg.rows_per_block)))
    ds = ds.map(
        probe,
        num_cpus=cfg.probe_cpus,
        compute=tasks,
        fn_kwargs={
            "fps": vision.fps if vision is not None else 0.0,
            "image_size": image_size,
            "max_duration_s": cfg.max_duration_s,
            "dataset": cfg.dataset_tag,
        },
    )
    ckpt = cfg.checkpoint
    ds = _actor_stage(
        ds,
        GenerateLatents,
        cfg.generate_batch,
        cfg.generate_actors,
        cfg.generate_gpus,
        cfg.actor_cpus,
        checkpoint=ckpt,
        max_batch=cfg.generate_batch,
        steps=cfg.steps,
        guidance=cfg.guidance,
        solver=cfg.solver,
        max_duration_s=cfg.max_duration_s,
        dataset=cfg.dataset_tag,
        compute_dtype=cfg.compute_dtype,
    )
    ds = _actor_stage(
        ds,
        DecodeAudio,
        cfg.decode_batch,
        cfg.decode_actors,
        cfg.decode_gpus,
        cfg.actor_cpus,
        checkpoint=ckpt,
        decode_dtype=cfg.decode_dtype,
        dataset=cfg.dataset_tag,
    )
    return ds.map(
        write_outputs,
        num_cpus=cfg.probe_cpus,
        compute=tasks,
        fn_kwargs={
            "out": cfg.out,
            "fmt": cfg.format,
            "do_mux": cfg.mux,
            "sample_rate": model_cfg.vae.sample_rate,
            "model_id": model_id,
            "dataset": cfg.dataset_tag,
        },
    )


def run(cfg: ScoreConfig) -> dict:
    """Score the catalogue; returns the summary (counts, throughput)."""
    started = time.perf_counter()
    rows = read_catalogue(cfg.catalogue, cfg.default_prompt)
    removed = _remove_leftovers(cfg.out)
    if removed:
        log.info("removed %d temporary files left by an interrupted run", removed)
    previous = read_manifests(_manifest_files(cfg.out))

    def done(row: dict) -> bool:
        old = previous.get(row["id"])
        if old is None:
            return False
        if old["status"] == "ok":
            return uri_exists(old["audio"]) and (not cfg.mux or bool(old["mp4"]) and uri_exists(old["mp4"]))
        return cfg.skip_failed

    todo = [r for r in rows if not done(r)]
    model_id = checkpoint_id(cfg.checkpoint)
    new: dict[str, dict] = {}
    if todo:
        connect(cfg.address)
        run_id = uuid.uuid4().hex[:8]
        pending: list[dict] = []
        part = 0
        record_rows_left(len(todo), cfg.dataset_tag)  # the scoring stall alert: rows left, none finishing
        for batch in track(build_pipeline(cfg, todo, model_id).iter_rows(), "score", len(todo)):
            pending.append(batch)
            new[batch["id"]] = batch
            record_rows_left(len(todo) - len(new), cfg.dataset_tag)
            if len(pending) >= cfg.rows_per_block:
                write_manifest(uri_join(cfg.out, f"parts/{run_id}-{part:05d}.parquet"), pending)
                pending, part = [], part + 1
        if pending:
            write_manifest(uri_join(cfg.out, f"parts/{run_id}-{part:05d}.parquet"), pending)
    final = [new.get(r["id"]) or previous[r["id"]] for r in rows]
    write_manifest(uri_join(cfg.out, "manifest.parquet"), final)
    fs, root = fsspec.core.url_to_fs(cfg.out)
    if fs.exists(f"{root.rstrip('/')}/parts"):
        fs.rm(f"{root.rstrip('/')}/parts", recursive=True)
    wall = time.perf_counter() - started
    generated = [r for r in new.values() if r["status"] == "ok"]
    audio_s = sum(r["duration_s"] for r in generated)
    return {
        "ok": sum(r["status"] == "ok" for r in final),
        "failed": sum(r["status"] == "failed" for r in final),
        "generated": len(generated),
        "skipped": len(rows) - len(todo),
        "wall_s": round(wall, 2),
        "videos_per_s": round(len(new) / wall, 4),
        "audio_s_per_wall_s": round(audio_s / wall, 4),
        "manifest": uri_join(cfg.out, "manifest.parquet"),
    }
