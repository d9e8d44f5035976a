"""Cut-aware generation: at each window, N candidate continuations in one batch, the best one kept.

Each candidate is a continuation request of the engine (the window's context as its audio prompt, the
window's frames, its own seed), so the N advance together through the engine's own loop. A caller's
`Choose` looks at the candidates' audio and the window's place in the video and picks one; its patches
become the request's, and the next window opens with them. Candidate 0 keeps the request's seed, so with
N = 1 the result is the plain one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np
import torch

from model.engine.engine import Engine, PatchOutput, Progress
from model.engine.request import GenerationRequest
from model.errors import InputError

# (window start in seconds on the video's timeline, each candidate's (C, S) audio, sample rate) -> index
Choose = Callable[[float, list[np.ndarray], int], int]
# the candidates of one window -> request id -> (new * P, D) standardised frames; default: the engine's own
# `generate_latents`, a server passes its running patch loop
RunCandidates = Callable[[list[GenerationRequest]], dict[str, torch.Tensor]]

MAX_CANDIDATES = 16


def candidate_seed(seed: int, k: int) -> int:
    return seed if k == 0 else (seed * 1_000_033 + 7_919 * k) % (2**63)


def stream_aligned(
    engine: Engine,
    request: GenerationRequest,
    candidates: int,
    choose: Choose,
    progress: Progress | None = None,
    run: RunCandidates | None = None,
) -> Iterator[PatchOutput]:
    """The request's patches, window by window, each window the chosen one of `candidates`."""
    if not 1 <= candidates <= MAX_CANDIDATES:
        raise InputError(f"align_cuts must be in [1, {MAX_CANDIDATES}] (got {candidates})")
    cfg = engine.cfg
    history = list(request.context) if request.context is not None else []
    produced = 0
    for window in engine.plan_windows(request):
        context = torch.stack(history[len(history) - window.context :]) if window.context else None
        left_s = request.duration_s - produced * cfg.patch_s
        subs = [
            replace(
                request,
                request_id=f"{request.request_id}/{produced}/{k}",
                n_patches=window.new,
                duration_s=min(left_s, window.new * cfg.patch_s),
                context=context,
                first_patch=request.first_patch + produced,
                params=replace(request.params, seed=candidate_seed(request.params.seed, k)),
            )
            for k in range(candidates)
        ]
        latents = (run or engine.generate_latents)(subs)
        best = 0
        if candidates > 1:
            audio = [engine.decode(latents[s.request_id], s) for s in subs]
            best = choose(subs[0].first_patch * cfg.patch_s, audio, engine.bundle.vae.sample_rate)
        chosen = latents[subs[best].request_id].reshape(window.new, cfg.patch_size, cfg.latent_dim)
        for patch in chosen:
            produced += 1
            if progress is not None:
                progress(produced, request.n_patches)
            yield PatchOutput(request.request_id, produced - 1, patch, produced == request.n_patches)
        history = (history + list(chosen))[-cfg.context_patches :]
