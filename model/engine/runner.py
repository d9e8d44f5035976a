"""Tensors of the patch loop: batched prefill, the AR planning step, and the LocDiT refinement.

`plan_*` are the step-level API of the plan side: a serving Planner holds a `Runner` (KV caches, the
pending plan and previous patch of each row); a stateless Refiner needs only a `BatchRefiner`
(model/engine/refine.py). `refine_patches` is the naive reference's refinement (model/engine/reference.py).

Compiled, the planning step (LocEnc, SemanticLM, FSQ, RITE over the KV caches) runs with static shapes like
the refine step: the rows are padded to their batch bucket, padded rows write into a scratch cache row that
no request owns, and every step attends over the caches' whole length (masked), so each bucket compiles
once. On CUDA the caches are marked as static addresses and each bucket's step is captured in a CUDA graph.
"""

from __future__ import annotations

import torch

from model.cache import Rows
from model.engine.precision import autocast
from model.engine.refine import bucket, compile_static, pad_rows
from model.flow import sample_flow
from model.videorobin import Conditions, VideoRobin

_NOISE_MIX = 1_000_003  # odd multiplier spreading (seed, patch index) pairs over generator seeds


def patch_noise(seed: int, index: int, shape: tuple[int, int]) -> torch.Tensor:
    """The initial noise of patch `index` of a request: a function of (seed, index) only, drawn on the CPU,
    so results do not depend on batch composition, process or device."""
    g = torch.Generator().manual_seed((seed * _NOISE_MIX + index) % (2**63))
    return torch.randn(shape, generator=g)


def refine_patches(
    model: VideoRobin, mu: torch.Tensor, prev: torch.Tensor, noise: torch.Tensor, steps, guidance, midpoint=False
) -> torch.Tensor:
    """One LocDiT trajectory per row: (B, Hd) plans, (B, P, D) previous patches and noise -> (B, P, D) patches;
    `midpoint` (bool or (B,) bool): the rows that take midpoint steps, the others Euler."""
    return sample_flow(model.locdit, mu, prev, noise, steps, guidance, midpoint)


class Runner:
    """Per-row generation state on the device for up to `capacity` concurrent requests."""

    def __init__(
        self,
        model: VideoRobin,
        capacity: int,
        max_len: int,
        device: torch.device | str,
        compiled: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        """`model` in the loop's compute `dtype` (model/engine/precision.py); plans are kept in fp32."""
        cfg = model.cfg
        self.model, self.device, self.max_len, self.dtype = model, torch.device(device), max_len, dtype
        self.scratch = capacity  # the cache row padded rows of a compiled step write to
        self.caches = model.new_caches(capacity + 1, max_len, self.device, dtype)
        self.mu = torch.zeros(capacity, cfg.locdit.hidden, device=self.device)  # each row's pending plan
        self.prev = torch.zeros(capacity, cfg.patch_size, cfg.latent_dim, device=self.device)
        self.planned = torch.zeros(capacity, dtype=torch.long, device=self.device)  # number of the pending patch
        self.compiled_plan = None  # model.plan_at through torch.compile, when compiled
        if compiled:
            for cache in (self.caches.semantic_lm, self.caches.rite):
                if cache is not None and self.device.type == "cuda":  # CUDA graphs write into them in place
                    torch._dynamo.mark_static_address(cache.k)
                    torch._dynamo.mark_static_address(cache.v)
            self.compiled_plan = compile_static(model.plan_at, self.device)

    @torch.no_grad()
    def open_windows(self, rows: list[int], cond: Conditions, prev: torch.Tensor, planned: list[int]) -> None:
        """Prefill rows with a window's prefix (text, its frames, the context patches) and plan the patch after
        it. `prev` (B, P, D) is each row's last context patch (zeros without one), `planned` the pending
        patch's number within the window."""
        idx = Rows.of(rows, self.device)
        with autocast(self.device, self.dtype):
            self.mu[idx.index] = self.model.prefill(cond, self.caches, idx).float()
        self.prev[idx.index] = prev.to(self.device, non_blocking=True)
        self.planned[idx.index] = torch.tensor(planned).to(self.device, non_blocking=True)

    def pending(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows' pending plans (B, Hd) and previous patches (B, P, D): what refining them needs."""
        idx = Rows.of(rows, self.device)
        return idx.take(self.mu), idx.take(self.prev)

    @torch.no_grad()
    def plan_next(self, rows: list[int], patches: torch.Tensor) -> None:
        """Feed the rows' new patches (B, P, D) back through LocEnc, SemanticLM and RITE."""
        idx = Rows.of(rows, self.device)
        self.planned[idx.index] += 1
        index = idx.take(self.planned)
        with autocast(self.device, self.dtype):
            if self.compiled_plan is not None:
                mu = self._plan_padded(rows, idx, patches, index)
            else:
                mu = self.model.plan_step(patches, self.caches, idx, index)
        self.mu[idx.index] = mu.float()
        self.prev[idx.index] = patches

    def _plan_padded(self, rows: list[int], idx: Rows, patches: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The compiled step over the rows' bucket: (B, Hd) plans of the real rows."""
        n, padded = len(rows), bucket(len(rows))
        pos, _ = self.caches.semantic_lm.slots(idx)  # on the host; checks the bound
        scratch = Rows.of(rows + [self.scratch] * (padded - n), self.device, sliced=False)
        pos = pad_rows(pos, padded).to(self.device, non_blocking=True)
        mu = self.compiled_plan(
            pad_rows(patches, padded), self.caches, scratch, pad_rows(index, padded), pos, self.max_len
        )
        self.caches.advance(idx)
        return mu[:n]

    def free(self, rows: list[int]) -> None:
        self.caches.free(Rows.of(rows, self.device))
