"""The naive reference generator: recompute the whole window's sequence for every patch, no KV cache.

It plans with `VideoRobin.plan_sequence` (the training path, teacher-forcing a window's context patches and
the patches written so far) and refines with the engine's own sampler, so agreement with the engine shows
that the cache, the shift by one patch, the window prefills and the training path agree.
Used by the tests and by `benchmarks/engine.py`; too slow to serve.
"""

from __future__ import annotations

import torch

from model.engine.request import GenerationRequest
from model.engine.runner import patch_noise, refine_patches
from model.engine.windows import window_frames, windows_of
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
    P, D = cfg.patch_size, cfg.latent_dim
    prompt = request.context if request.context is not None else torch.zeros(0, P, D)
    written = [p.to(device) for p in prompt]  # the prompt's patches, then every new one
    end_s = request.first_patch * cfg.patch_s + request.duration_s
    produced = 0
    for window in windows_of(cfg, request.first_patch, request.n_patches, prompt.shape[0]):
        frames, offset = None, 0.0
        if request.frames is not None:
            frames, offset = window_frames(cfg, request.frames, window, end_s)
        cond = Conditions([request.text_ids], [frames], frame_offset_s=[offset])
        patches = written[len(written) - window.context :] if window.context else []
        for _ in range(window.new):
            i = len(patches)
            seq = torch.stack(patches + [torch.zeros(P, D, device=device)])[None]  # (1, i + 1, P, D)
            mu = model.plan_sequence(cond, seq, torch.tensor([i + 1], device=device))[:, i]
            if plan_only:
                patch = teacher[produced].to(device)
            else:
                prev = patches[-1][None] if patches else torch.zeros(1, P, D, device=device)
                params = request.params
                noise = patch_noise(params.seed, request.first_patch + produced, (P, D))[None].to(device)
                midpoint = params.solver == "midpoint"
                patch = refine_patches(model, mu, prev, noise, params.steps, params.guidance, midpoint)[0]
            patches.append(patch)
            written.append(patch)
            produced += 1
    return torch.stack(written[prompt.shape[0] :]).reshape(request.n_patches * P, D)
