"""Refiner: stateless LocDiT trajectories (ODE solver steps, CFG) for the patches of many planner steps at once."""

from __future__ import annotations

import asyncio

import torch
from ray import serve

from deployments.devices import pick_device
from deployments.metrics import serving_metrics
from model.checkpoint import load_bundle
from model.config import ComputeDtype
from model.engine import RefineBatch
from model.engine.precision import loop_model
from model.engine.refine import BatchRefiner


@serve.deployment
class Refiner:
    def __init__(
        self,
        checkpoint: str,
        device: str | None = None,
        max_batch: int = 16,
        wait_s: float = 0.005,
        compiled: bool = False,
        compute_dtype: ComputeDtype = "float32",
    ):
        self.device = pick_device(device)
        model, dtype = loop_model(load_bundle(checkpoint, self.device).model, compute_dtype)
        self.refiner = BatchRefiner(model, self.device, compiled, dtype)
        self.refine.set_max_batch_size(max_batch)
        self.refine.set_batch_wait_timeout_s(wait_s)
        self.metrics = serving_metrics()

    @serve.batch
    async def refine(self, batches: list[RefineBatch]) -> list[torch.Tensor]:
        """Each planner step's rows -> their (B_i, P, D) patches; one LocDiT call over all rows."""
        self.metrics["batch"].observe(sum(len(b.rows) for b in batches), tags={"stage": "refiner"})
        patches = await asyncio.to_thread(self._refine, batches)  # device copies sync: off the event loop
        return list(patches.split([len(b.rows) for b in batches]))

    def _refine(self, batches: list[RefineBatch]) -> torch.Tensor:
        return self.refiner(RefineBatch.concat(batches).to(self.device)).cpu()

    async def ready(self) -> bool:
        return True
