"""`videorobin prepare`: a training manifest -> Parquet shards of VAE latents, CLIP features and token ids.

    manifest rows -> decode/resample audio (+ sample video frames) (CPU tasks)
      -> frozen VAE encode, posterior mean (actor pool) -> frozen CLIP (actor pool) -> shards on the driver

The manifest (JSONL/CSV/Parquet, any fsspec URI) has `id`, `audio`, `caption` and optional `video`,
`start`, `duration`. Output under `--out`:

    shards/shard-<n>.parquet  id, caption, token_ids, latents (L*D float32, frames-major), n_frames,
                              features (F*feature_dim float32), n_features
    latent_stats.json         per-channel mean/std of the latents, measured over every frame
    errors.parquet            rows that could not be read, with their error
    config.json, vae.safetensors, clip.safetensors, tokenizer/
                              the frozen encoders the data was made with (`model.checkpoint.save_encoders`),
                              written first and loaded by every encoding actor, so all agree

The driver streams rows into shards of `--rows-per-shard`, so memory holds one shard, not the dataset.
A run writes everything into a staging sibling (`<out>.staging-<run>`) and moves it onto `--out` only once
complete, so `--out` always holds one whole run: an existing output is refused unless `--overwrite`, which
replaces it (the old one is removed only after the new one is complete). A row that fails in any stage
becomes an `errors.parquet` row with its reason; the others go on.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import time
import uuid

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, ConfigDict, Field

from jobs.catalogue import CatalogueError, read_table
from jobs.progress import track
from jobs.ray_session import connect
from model.checkpoint import load_bundle_tokenizer, load_clip, load_vae_from_checkpoint, read_config, save_encoders
from model.config import VideoRobinConfig
from model.errors import InputError
from model.io import absolute_uri, local_copy, uri_join, write_bytes_atomic
from model.media import MediaError, probe_video, read_audio, sample_frames
from model.text import load_tokenizer
from model.vae import load_vae
from model.vision import ClipEncoder

SHARD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("caption", pa.string()),
        ("token_ids", pa.list_(pa.int32())),
        ("latents", pa.list_(pa.float32())),
        ("n_frames", pa.int32()),
        ("features", pa.list_(pa.float32())),
        ("n_features", pa.int32()),
    ]
)


class PrepareConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    manifest: str
    out: str
    model: VideoRobinConfig
    checkpoint: str | None = None  # take the frozen encoders from here instead of the config's sources
    address: str | None = None
    rows_per_shard: int = Field(default=256, ge=1)
    read_cpus: float = Field(default=0.25, gt=0)
    read_tasks: int = Field(default=4, ge=1)
    encode_actors: int = Field(default=1, ge=1)
    encode_batch: int = Field(default=8, ge=1)
    encode_gpus: float = Field(default=0.0, ge=0)
    actor_cpus: float = Field(default=0.5, gt=0)
    overwrite: bool = False  # replace an existing output (atomically, once the new one is complete)


def read_training_manifest(uri: str) -> list[dict]:
    rows = read_table(uri)
    missing = {"id", "audio", "caption"} - set(rows[0])
    if missing:
        raise CatalogueError(f"{uri}: missing column(s) {', '.join(sorted(missing))}")
    return [
        {
            "id": str(r["id"]),
            "audio": r["audio"],
            "caption": r["caption"] or "",
            "video": r.get("video") or "",
            "start": float(r.get("start") or 0.0),
            "duration": float(r["duration"]) if r.get("duration") else -1.0,
        }
        for r in rows
    ]


def read_media(row: dict, sample_rate: int, fps: float, image_size: int, max_frames: int) -> dict:
    """Decode the clip's audio window (and its video frames); an unreadable file becomes an error row."""
    row |= {
        "error": "",
        "waveform": np.zeros((2, 0), np.float32),
        "frames": np.zeros((0, image_size, image_size, 3), np.uint8),
    }
    try:
        audio = read_audio(row["audio"], sample_rate)
        first = int(round(row["start"] * sample_rate))
        last = first + int(round(row["duration"] * sample_rate)) if row["duration"] > 0 else audio.shape[1]
        row["waveform"] = audio[:, first:last]
        if row["waveform"].shape[1] == 0:
            raise MediaError(f"{row['audio']}: no audio in the window starting at {row['start']} s")
        if row["video"] and fps > 0:
            seconds = row["waveform"].shape[1] / sample_rate
            with local_copy(row["video"]) as path:
                probe_video(path)
                row["frames"] = sample_frames(path, fps, image_size, seconds, max_frames, start_s=row["start"])
    except Exception as err:  # noqa: BLE001 - any exception on one row fails that row only
        row["error"] = _reason(err)
    return row


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if isinstance(err, MediaError | OSError | ValueError) else f"{type(err).__name__}: {text}"


def write_encoders(cfg: PrepareConfig, out: str) -> VideoRobinConfig:
    """Load the frozen encoders once (from --checkpoint or the config's sources), save them under `out`."""
    model = cfg.model
    if cfg.checkpoint is not None:
        vae = load_vae_from_checkpoint(cfg.checkpoint)
        clip = load_clip(cfg.checkpoint) if model.vision is not None else None
        tokenizer = load_bundle_tokenizer(cfg.checkpoint)
    else:
        torch.manual_seed(0)  # encoders without a checkpoint are randomly initialised: once, here, for all actors
        vae = load_vae(model.vae)
        clip = ClipEncoder(model.vision) if model.vision is not None else None
        tokenizer = load_tokenizer(model.text, model.semantic_lm.vocab_size)
    return save_encoders(out, model, vae, clip, tokenizer)


class EncodeClips:
    """Frozen VAE (posterior mean) and frozen CLIP for a batch of clips; loaded once per actor."""

    def __init__(self, encoders: str, gpus: float) -> None:
        cfg = read_config(encoders)
        self.device = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
        self.vae = load_vae_from_checkpoint(encoders, self.device)
        self.clip = load_clip(encoders, self.device) if cfg.vision is not None else None
        self.tokenizer = load_bundle_tokenizer(encoders, cfg)

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict:
        n = len(batch["id"])
        latents, features, tokens = [None] * n, [None] * n, [None] * n
        errors = np.asarray(batch["error"], dtype=object)
        for i in range(n):
            latents[i], features[i] = np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
            tokens[i] = np.zeros(0, np.int32)
            if errors[i]:
                continue
            try:
                latents[i], features[i], tokens[i] = self._encode(batch, i)
            except Exception as err:  # noqa: BLE001 - a bad row fails alone
                errors[i] = _reason(err)
        out = {"id": batch["id"], "caption": batch["caption"], "error": errors}
        for name, values in (("latents", latents), ("features", features), ("token_ids", tokens)):
            out[name] = np.array(values + [None], dtype=object)[:-1]
        return out

    def _encode(self, batch: dict, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(L, D) posterior-mean latents, (F, feature_dim) CLIP features and the caption's token ids."""
        tokens = np.asarray(self.tokenizer.encode(str(batch["caption"][i])), np.int32)
        wave = torch.from_numpy(np.asarray(batch["waveform"][i], np.float32))[None].to(self.device)
        latents = self.vae.encode(wave)[0].T.float().cpu().numpy()
        frames = np.asarray(batch["frames"][i])
        features = np.zeros((0, 0), np.float32)
        if self.clip is not None and len(frames):
            features = self.clip(frames).cpu().numpy()
        return latents, features, tokens


class _Shards:
    """Streams rows into Parquet shards (atomic writes) and accumulates per-channel latent statistics."""

    def __init__(self, out: str, rows_per_shard: int, latent_dim: int) -> None:
        self.out, self.rows_per_shard = out, rows_per_shard
        self.pending: list[dict] = []
        self.count = 0
        self.written = 0
        self.sum = np.zeros(latent_dim)
        self.sumsq = np.zeros(latent_dim)
        self.frames = 0

    def add(self, row: dict) -> None:
        lat, feat = np.asarray(row["latents"], np.float32), np.asarray(row["features"], np.float32)
        self.sum += lat.sum(0, dtype=np.float64)
        self.sumsq += (lat.astype(np.float64) ** 2).sum(0)
        self.frames += lat.shape[0]
        self.pending.append(
            {
                "id": row["id"],
                "caption": row["caption"],
                "token_ids": np.asarray(row["token_ids"]).tolist(),
                "latents": lat.ravel(),
                "n_frames": lat.shape[0],
                "features": feat.ravel(),
                "n_features": feat.shape[0],
            }
        )
        if len(self.pending) >= self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(self.pending, schema=SHARD_SCHEMA), buf)
        write_bytes_atomic(uri_join(self.out, f"shards/shard-{self.count:05d}.parquet"), buf.getvalue())
        self.written += len(self.pending)
        self.pending, self.count = [], self.count + 1

    def stats(self) -> dict:
        if self.frames == 0:
            raise InputError("no clip could be prepared, so there are no latent statistics")
        mean = self.sum / self.frames
        std = np.sqrt(np.maximum(self.sumsq / self.frames - mean**2, 1e-12))
        return {"mean": mean.tolist(), "std": std.tolist(), "frames": int(self.frames)}


def run(cfg: PrepareConfig) -> dict:
    """Prepare into a staging sibling, then move it onto `cfg.out` (see the module docstring)."""
    started = time.perf_counter()
    fs, out = fsspec.core.url_to_fs(cfg.out)
    out = out.rstrip("/")
    if fs.exists(out) and fs.ls(out) and not cfg.overwrite:
        raise InputError(f"{cfg.out} is not empty: pass --overwrite to replace it with this run's output")
    rows = read_training_manifest(cfg.manifest)
    for stale in fs.glob(f"{out}.staging-*"):  # what killed runs left: never read, never moved into place
        if re.fullmatch(r"\.staging-[0-9a-f]{12}", stale.removeprefix(out)):
            fs.rm(stale, recursive=True)
    staging = f"{absolute_uri(cfg.out).rstrip('/')}.staging-{uuid.uuid4().hex[:12]}"
    staging_path = fsspec.core.url_to_fs(staging)[1]
    try:
        summary = _prepare(cfg, rows, staging)
    except BaseException:
        if fs.exists(staging_path):
            fs.rm(staging_path, recursive=True)
        raise
    _replace(fs, staging_path, out)
    return {**summary, "wall_s": round(time.perf_counter() - started, 2), "out": cfg.out}


def _replace(fs, staging: str, out: str) -> None:
    """Move the complete staging directory onto `out`; a previous output leaves only after that (locally,
    by two renames, so `out` is always one whole run)."""
    if isinstance(fs, LocalFileSystem):
        old = f"{out}.old-{uuid.uuid4().hex[:12]}"
        if os.path.exists(out):
            os.rename(out, old)
        os.rename(staging, out)
        shutil.rmtree(old, ignore_errors=True)
        return
    if fs.exists(out):  # object stores have no directory rename: `out` is briefly absent, never mixed
        fs.rm(out, recursive=True)
    fs.mv(staging, out, recursive=True)


def _prepare(cfg: PrepareConfig, rows: list[dict], out: str) -> dict:
    model = write_encoders(cfg, out)
    vision = model.vision
    image_size = vision.tower.image_size if vision is not None and vision.tower is not None else 224
    connect(cfg.address)
    ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / cfg.encode_batch)))
    ds = ds.map(
        read_media,
        num_cpus=cfg.read_cpus,
        compute=ray.data.TaskPoolStrategy(size=cfg.read_tasks),
        fn_kwargs={
            "sample_rate": model.vae.sample_rate,
            "fps": vision.fps if vision else 0.0,
            "image_size": image_size,
            "max_frames": vision.max_frames if vision else 0,
        },
    )
    ds = ds.map_batches(
        EncodeClips,
        batch_size=cfg.encode_batch,
        batch_format="numpy",
        num_cpus=cfg.actor_cpus,
        num_gpus=cfg.encode_gpus,
        compute=ray.data.ActorPoolStrategy(size=cfg.encode_actors),
        fn_constructor_kwargs={"encoders": out, "gpus": cfg.encode_gpus},
    )
    shards, errors = _Shards(out, cfg.rows_per_shard, model.latent_dim), []
    for row in track(ds.iter_rows(), "prepare", len(rows)):
        if row["error"]:
            errors.append({"id": row["id"], "error": row["error"]})
        else:
            shards.add(row)
    shards.flush()
    stats = shards.stats()
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(errors, schema=pa.schema([("id", pa.string()), ("error", pa.string())])), buf)
    write_bytes_atomic(uri_join(out, "errors.parquet"), buf.getvalue())
    write_bytes_atomic(uri_join(out, "latent_stats.json"), json.dumps(stats).encode())  # last: "complete"
    return {"prepared": shards.written, "failed": len(errors), "shards": shards.count, "latent_frames": stats["frames"]}
