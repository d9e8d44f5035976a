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
"""

from __future__ import annotations

import io
import json
import math
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from pydantic import BaseModel, ConfigDict, Field

from jobs.catalogue import CatalogueError, read_table
from jobs.ray_session import connect
from model.checkpoint import load_bundle_tokenizer, load_clip, load_vae_from_checkpoint, read_config, save_encoders
from model.config import VideoRobinConfig
from model.io import local_copy, uri_join, write_bytes_atomic
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
    except (MediaError, OSError, ValueError) as err:
        row["error"] = " ".join(str(err).split())
    return row


def write_encoders(cfg: PrepareConfig) -> VideoRobinConfig:
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
    return save_encoders(cfg.out, model, vae, clip, tokenizer)


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
        for i in range(n):
            tokens[i] = np.asarray(self.tokenizer.encode(str(batch["caption"][i])), np.int32)
            if batch["error"][i]:
                latents[i], features[i] = np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
                continue
            wave = torch.from_numpy(np.asarray(batch["waveform"][i], np.float32))[None].to(self.device)
            latents[i] = self.vae.encode(wave)[0].T.float().cpu().numpy()  # (L, D)
            frames = np.asarray(batch["frames"][i])
            features[i] = (
                self.clip(frames).cpu().numpy()
                if self.clip is not None and len(frames)
                else np.zeros((0, 0), np.float32)
            )
        out = {k: batch[k] for k in ("id", "caption", "error")}
        for name, values in (("latents", latents), ("features", features), ("token_ids", tokens)):
            out[name] = np.array(values + [None], dtype=object)[:-1]
        return out


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
            raise ValueError("no clip could be prepared, so there are no latent statistics")
        mean = self.sum / self.frames
        std = np.sqrt(np.maximum(self.sumsq / self.frames - mean**2, 1e-12))
        return {"mean": mean.tolist(), "std": std.tolist(), "frames": int(self.frames)}


def run(cfg: PrepareConfig) -> dict:
    started = time.perf_counter()
    rows = read_training_manifest(cfg.manifest)
    model = write_encoders(cfg)
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
        fn_constructor_kwargs={"encoders": cfg.out, "gpus": cfg.encode_gpus},
    )
    shards, errors = _Shards(cfg.out, cfg.rows_per_shard, model.latent_dim), []
    for row in ds.iter_rows():
        if row["error"]:
            errors.append({"id": row["id"], "error": row["error"]})
        else:
            shards.add(row)
    shards.flush()
    stats = shards.stats()
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(errors, schema=pa.schema([("id", pa.string()), ("error", pa.string())])), buf)
    write_bytes_atomic(uri_join(cfg.out, "errors.parquet"), buf.getvalue())
    write_bytes_atomic(uri_join(cfg.out, "latent_stats.json"), json.dumps(stats).encode())  # last: "complete"
    return {
        "prepared": shards.written,
        "failed": len(errors),
        "shards": shards.count,
        "latent_frames": stats["frames"],
        "wall_s": round(time.perf_counter() - started, 2),
        "out": cfg.out,
    }
