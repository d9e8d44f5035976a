"""Fused: the in-process engine as one deployment (frames, patch loop, refinement and decoding together).

It answers the same calls as Planner and AudioDecoder, so the Ingress runs unchanged against it;
selecting `mode: fused` measures what disaggregation costs or buys.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import torch
from ray import serve

from deployments.devices import pick_device
from deployments.planner import PatchLoop, PlannerBroken, serve_spec
from model.checkpoint import load_bundle
from model.config import ComputeDtype, DecodeDtype
from model.engine import Engine, RefineBatch
from model.engine.prepare import DEFAULT_MAX_DURATION_S
from model.engine.request import GenerationSpec
from model.vae import DecodeWindow
from model.vae import decode_window_array as decode_window


@serve.deployment
class Fused:
    def __init__(
        self,
        checkpoint: str,
        device: str | None = None,
        capacity: int = 8,
        max_duration_s: float = DEFAULT_MAX_DURATION_S,
        stall_s: float = 120.0,
        compiled: bool = False,
        decode_dtype: DecodeDtype = "auto",
        compute_dtype: ComputeDtype = "float32",
    ):
        device = pick_device(device)
        bundle = load_bundle(checkpoint, device)
        self.engine = Engine(
            bundle, device, capacity, max_duration_s, compiled, decode_dtype, compute_dtype=compute_dtype
        )
        self.loop = PatchLoop(self.engine, self._refine, stall_s=stall_s)

    async def _refine(self, batch: RefineBatch) -> torch.Tensor:
        return await asyncio.to_thread(self.engine.refine, batch)

    async def generate(self, spec: GenerationSpec) -> AsyncIterator:
        async for item in serve_spec(self.loop, self.engine, spec):
            yield item

    async def decode(self, latents: np.ndarray, window: DecodeWindow) -> np.ndarray:
        return await asyncio.to_thread(decode_window, self.engine.bundle.vae, latents, window)

    def check_health(self) -> None:
        if (trouble := self.loop.trouble()) is not None:
            raise PlannerBroken(trouble)

    async def ready(self) -> bool:
        return True
