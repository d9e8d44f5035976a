"""The naive reference generator: recompute the whole sequence for every patch, no KV cache.

It plans with `VideoRobin.plan_sequence` (the training path) and refines with the engine's own sampler,
so agreement with the engine shows that the cache, the shift by one patch and the training path agree.
Used by the tests and by `benchmarks/engine.py`; too slow to serve.
"""

from __future__ import annotations

import torch

from model.engine.request import GenerationRequest
from model.engine.runner import patch_noise, refine_patches
from model.videorobin import Conditions, VideoRobin


@torch.no_grad()
def generate_by_recompute(
    model: VideoRobin, request: GenerationRequest, plan_only: bool = False, teacher: torch.Tensor | None = None
) -> torch.Tensor:
    """(N * P, D) standardised frames for one request.

    With `plan_only`, the patches fed back are taken from `teacher` (N, P, D) and only the AR-Head runs:
    the work a cached step replaces, for benchmarking.
    """
    cfg, device = model.cfg, model.audio_start.device
    P, D, N = cfg.patch_size, cfg.latent_dim, request.n_patches
    cond = Conditions([request.text_ids], [request.frames])
    patches = torch.zeros(1, N, P, D, device=device)
    for i in range(N):
        mu = model.plan_sequence(cond, patches[:, : i + 1], torch.tensor([i + 1], device=device))[:, i]
        if plan_only:
            patches[0, i] = teacher[i]
            continue
        prev = patches[:, i - 1] if i > 0 else torch.zeros(1, P, D, device=device)
        noise = patch_noise(request.params.seed, i, (P, D))[None].to(device)
        patches[:, i] = refine_patches(model, mu, prev, noise, request.params.steps, request.params.guidance)
    return patches[0].reshape(N * P, D)
