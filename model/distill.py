"""Few-step LocDiT by distillation: a student LocDiT learns to land, in a few Euler steps, where its teacher's
accurate trajectory lands from the same noise.

The student starts as a copy of the teacher and is trained through `integrate_flow`, the sampler the engine
runs, so what it learns is the map "noise -> clean patch" at its own step count, not a velocity field.
Each patch gets its own guidance weight drawn from a range: the loss sees only the guided combination
(1 - w) v_u + w v_c, and two or more weights per batch pin down both halves, so a request's own guidance
still means what it says. The AR-Head is frozen: mu and the previous patches come from teacher forcing on
real clips, as in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.flow import integrate_flow, sample_flow
from model.locdit import LocDiT


@dataclass
class Distillation:
    teacher: LocDiT  # frozen: the LocDiT the student started from
    student_steps: int  # Euler steps the student is trained to take
    teacher_steps: int
    teacher_midpoint: bool  # the teacher's solver: midpoint (second order) or Euler
    patches: int  # patches per micro-batch, drawn at random among the real ones
    guidance: tuple[float, float]  # each patch's guidance weight is drawn uniformly from this range

    def loss(self, student: LocDiT, mu: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """Mean squared distance between the student's few-step patch and the teacher's.

        Args:
            mu: (B, Hd) planning embeddings of real patches; prev: (B, P, D) the patch before each.
        """
        pick = torch.randperm(mu.shape[0], device=mu.device)[: self.patches]
        mu, prev = mu[pick], prev[pick]
        noise = torch.randn_like(prev)
        w = torch.empty(len(pick), device=mu.device, dtype=prev.dtype).uniform_(*self.guidance)
        target = sample_flow(self.teacher, mu, prev, noise, self.teacher_steps, w, self.teacher_midpoint)
        x = integrate_flow(student, mu, prev, noise, self.student_steps, w)
        return F.mse_loss(x.float(), target.float())
