"""AudioDecoder: VAE decode of one overlapping window of latents, so audio streams while patches are made."""

from __future__ import annotations

import asyncio

import numpy as np
from ray import serve

from deployments.devices import pick_device
from model.checkpoint import load_vae_from_checkpoint
from model.config import DecodeDtype
from model.vae import DecodeWindow, decode_window_array


@serve.deployment
class AudioDecoder:
    def __init__(
        self, checkpoint: str, device: str | None = None, decode_dtype: DecodeDtype = "auto", compiled: bool = False
    ):
        self.vae = load_vae_from_checkpoint(checkpoint, pick_device(device), decode_dtype, compiled)

    async def decode(self, latents: np.ndarray, window: DecodeWindow) -> np.ndarray:
        """(D, hi - lo) latents of `window` -> (C, (end - start) * hop) float32 audio."""
        return await asyncio.to_thread(decode_window_array, self.vae, latents, window)

    async def ready(self) -> bool:
        return True
