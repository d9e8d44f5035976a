"""FrameEncoder: sampled video frames -> CLIP features, batched across concurrent requests."""

from __future__ import annotations

import asyncio

import numpy as np
import torch
from ray import serve

from deployments.devices import pick_device
from deployments.metrics import serving_metrics
from model.checkpoint import load_clip
from model.vision import ClipEncoder


@torch.no_grad()
def encode_frames(clip: ClipEncoder, frames: np.ndarray) -> np.ndarray:
    """(F, S, S, 3) uint8 -> (F, feature_dim) float32 CLIP features."""
    return clip(frames).float().cpu().numpy()


@serve.deployment
class FrameEncoder:
    def __init__(self, checkpoint: str, device: str | None = None, max_batch: int = 8, wait_s: float = 0.005):
        self.clip = load_clip(checkpoint, pick_device(device)).eval()
        self.encode.set_max_batch_size(max_batch)
        self.encode.set_batch_wait_timeout_s(wait_s)
        self.metrics = serving_metrics()

    @serve.batch
    async def encode(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """Each request's (F, S, S, 3) uint8 frames -> its (F, feature_dim) features; one CLIP call for all."""
        self.metrics["batch"].observe(len(clips), tags={"stage": "encoder"})
        features = await asyncio.to_thread(encode_frames, self.clip, np.concatenate(clips))
        return np.split(features, np.cumsum([len(c) for c in clips])[:-1])

    async def ready(self) -> bool:
        return True
