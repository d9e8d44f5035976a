"""The refine step: one LocDiT trajectory per row of a step's batch, eager or through `torch.compile`.

Compiled, LocDiT runs with static shapes: a step's batch is padded up to the next bucket (1, 2, 4, ... 128
rows), so every evaluation in a bucket has the same shapes and compiles once; padded rows take 0 steps
and are dropped. On CUDA, mode="reduce-overhead" also captures each bucket's evaluation in a CUDA graph.
The sampler's loop bounds are read on the host (model/flow.py), so the loop queues device work without
waiting. Compiling costs time at the first step of each bucket (README "Fast generation"): it is for
servers and batch jobs, not for one clip from the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from model.engine.precision import autocast
from model.flow import sample_flow
from model.videorobin import VideoRobin

if TYPE_CHECKING:
    from model.engine.engine import RefineBatch

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def bucket(rows: int) -> int:
    """The padded batch size for `rows` rows (past the largest bucket: the rows themselves)."""
    return next((b for b in BUCKETS if b >= rows), rows)


def compile_static(fn, device: torch.device):
    """`fn` through torch.compile with static shapes, one graph per batch bucket (CUDA graphs on CUDA). Dynamo
    allows 8 graphs per function by default, and one model's buckets alone can take 8; a process holding
    several compiled engines (a server and its benchmark, a test session) would then fail (fullgraph), so the
    limit covers every bucket of 8 models."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 8 * len(BUCKETS))
    mode = "reduce-overhead" if device.type == "cuda" else None
    return torch.compile(fn, dynamic=False, fullgraph=True, mode=mode)


def pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """t (B, ...) followed by zero rows up to `rows` (a zero-step row does not move)."""
    extra = rows - t.shape[0]
    return torch.cat([t, t.new_zeros((extra, *t.shape[1:]))]) if extra else t


class BatchRefiner:
    """A step's RefineBatch -> its (B, P, D) patches; compiled, equal to eager within float rounding."""

    def __init__(
        self,
        model: VideoRobin,
        device: torch.device | str = "cpu",
        compiled: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        """`model` in the loop's compute `dtype` (model/engine/precision.py); patches come back in fp32."""
        self.compiled, self.device, self.dtype = compiled, torch.device(device), dtype
        self.locdit = model.locdit
        if compiled:
            self.locdit = compile_static(model.locdit, self.device)

    @torch.no_grad()
    def __call__(self, batch: RefineBatch) -> torch.Tensor:
        rows = len(batch.rows)
        padded = bucket(rows) if self.compiled else rows
        mu, prev, noise, steps, guidance, midpoint = (pad_rows(getattr(batch, k), padded) for k in batch.TENSORS)
        with autocast(self.device, self.dtype):
            patches = sample_flow(self.locdit, mu, prev, noise, steps, guidance, midpoint)
        return patches[:rows].float()
