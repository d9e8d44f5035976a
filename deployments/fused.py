"""Fused: the in-process engine as one deployment (frames, patch loop, refinement and decoding together).

It answers the same calls as FrameEncoder, Planner and AudioDecoder, so the Ingress runs unchanged
against it; selecting `mode: fused` measures what disaggregation costs or buys.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import torch
from ray import serve

from deployments.decoder import decode_window
from deployments.devices import pick_device
from deployments.encoder import encode_frames
from deployments.planner import PatchLoop, latents_of
from model.checkpoint import load_bundle
from model.engine import Engine, GenerationRequest, RefineBatch
from model.vae import DecodeWindow


@serve.deployment
class Fused:
    def __init__(self, checkpoint: str, device: str | None = None, capacity: int = 8, max_duration_s: float = 120.0):
        device = pick_device(device)
        self.engine = Engine(load_bundle(checkpoint, device), device, capacity, max_duration_s)
        self.loop = PatchLoop(self.engine, self._refine)

    async def _refine(self, batch: RefineBatch) -> torch.Tensor:
        return await asyncio.to_thread(self.engine.refine, batch)

    async def encode(self, frames: np.ndarray) -> np.ndarray:
        return await asyncio.to_thread(encode_frames, self.engine.bundle.model.clip, frames)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[np.ndarray]:
        async for latents in latents_of(self.loop, self.engine, request):
            yield latents

    async def decode(self, latents: np.ndarray, window: DecodeWindow) -> np.ndarray:
        return await asyncio.to_thread(decode_window, self.engine.bundle.vae, latents, window)

    async def ready(self) -> bool:
        return True
