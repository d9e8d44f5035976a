"""The patch loop's precision: fp32, or bf16 weights, matmuls and KV caches with an fp32 ODE state.

In bf16 the loop runs a bf16 copy of the model (the CLIP tower and the latent statistics stay with the fp32
model, outside the loop) under autocast: matmuls and attention take bf16, the caches store bf16 keys and
values, and the rest follows torch's type promotion. The sampler's state, the noise, the guidance mix and
every patch handed back stay fp32, so only the network's rounding changes, and the fp32 model is never
touched (the engine's bundle can go on serving fp32 engines).
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager

import torch

from model.config import COMPUTE_DTYPES
from model.errors import InputError
from model.videorobin import VideoRobin


def loop_model(model: VideoRobin, compute_dtype: str) -> tuple[VideoRobin, torch.dtype]:
    """The model the patch loop runs in COMPUTE_DTYPES `compute_dtype`, and that dtype: `model` itself in
    fp32, else a copy in that dtype without the CLIP tower."""
    if compute_dtype not in COMPUTE_DTYPES:
        raise InputError(f"compute dtype {compute_dtype!r} is not one of {', '.join(COMPUTE_DTYPES)}")
    dtype = getattr(torch, compute_dtype)
    model.eval()  # generation: the fp32 model serves the CLIP tower and latent statistics either way
    if dtype == torch.float32:
        return model, dtype
    clip, model.clip = model.clip, None
    try:
        return copy.deepcopy(model).to(dtype).eval(), dtype
    finally:
        model.clip = clip


def autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager:
    """Where the loop's model runs: autocast to `dtype`, or nothing in fp32."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
