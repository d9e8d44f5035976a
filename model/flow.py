"""Flow matching for LocDiT: the training loss and the ODE sampler (Euler or midpoint) with batched classifier-free
guidance.

Convention (VoxCPM/DiTAR): t = 1 is noise, t = 0 is data, x_t = (1 - t) x + t z, target v = z - x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.config import FlowConfig
from model.locdit import LocDiT


def sample_t(n: int, cfg: FlowConfig, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training times t = sigmoid(N(t_mean, t_std)) (median about 0.40 for the defaults)."""
    return torch.sigmoid(torch.randn(n, device=device, generator=generator) * cfg.t_std + cfg.t_mean)


def flow_loss(
    dit: LocDiT,
    mu: torch.Tensor,
    prev: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    cfg: FlowConfig,
) -> torch.Tensor:
    """Masked velocity MSE for a flat batch of patches.

    Args:
        mu: (B, H) planning embeddings; each is zeroed with p = cfg_dropout (the prefix is never dropped).
        prev, x: (B, P, D) previous and target patches.
        weight: (B,) 1 for real patches, 0 for padding.
    """
    B = x.shape[0]
    keep = (torch.rand(B, device=x.device) >= cfg.cfg_dropout).to(mu.dtype)
    t = sample_t(B, cfg, x.device).to(x.dtype)  # bf16 training keeps every LocDiT input in one dtype
    z = torch.randn_like(x)
    x_t = (1 - t)[:, None, None] * x + t[:, None, None] * z
    v = dit(mu * keep[:, None], t, prev, x_t)
    per_patch = F.mse_loss(v.float(), (z - x).float(), reduction="none").mean(dim=(1, 2))  # (B,)
    return (per_patch * weight).sum() / weight.sum().clamp(min=1)


def integrate_flow(
    dit: LocDiT,
    mu: torch.Tensor,
    prev: torch.Tensor,
    noise: torch.Tensor,
    steps: torch.Tensor | int,
    guidance: torch.Tensor | float,
    midpoint: torch.Tensor | bool = False,
) -> torch.Tensor:
    """Integrate the ODE from t=1 (noise) to t=0 with guided velocity v_u + w (v_c - v_u).

    The conditional and unconditional (mu = 0) halves go through ONE LocDiT call per evaluation. Rows may ask
    for different step counts, guidance and solver: a row with fewer steps finishes early and stops moving.
    Euler evaluates once per step, midpoint twice (second order: 3-4 midpoint steps land as close to the
    exact solution as 20 Euler steps, README "Fast generation").

    Gradients flow through it: distillation (model/distill.py) trains a few-step LocDiT through the very
    steps the engine takes. Generation calls `sample_flow`, the same without gradients.

    Args:
        mu: (B, H); prev, noise: (B, P, D); steps: int or (B,) long; guidance: float or (B,);
        midpoint: bool or (B,) bool, the rows that take midpoint steps (the others Euler).
    Returns:
        (B, P, D) clean patches.
    """
    B = mu.shape[0]
    steps, midpoint = torch.as_tensor(steps), torch.as_tensor(midpoint)
    # The loop's bounds, read before the tensors move: free for host tensors (the engine's), and never
    # inside the loop, so a step queues its device work without waiting.
    max_steps, any_midpoint = int(steps.max()), bool(midpoint.any())
    steps = steps.to(mu.device, non_blocking=True).expand(B)
    w = torch.as_tensor(guidance, device=mu.device, dtype=noise.dtype).expand(B)[:, None, None]
    mu2 = torch.cat([mu, torch.zeros_like(mu)])
    prev2 = torch.cat([prev, prev])
    midpoint = midpoint.to(mu.device, non_blocking=True).expand(B)[:, None, None]  # (B, 1, 1)
    n = steps.clamp(min=1).to(noise.dtype)  # (B,) each row's step count, for its own time grid

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # guided velocity at each row's time t (B,)
        v_c, v_u = dit(mu2, torch.cat([t, t]), prev2, torch.cat([x, x])).chunk(2)
        return v_u + w * (v_c - v_u)

    x = noise
    for i in range(max_steps):
        active = (i < steps).to(x.dtype)  # (B,)
        t = 1.0 - i / n
        dt = active / n
        v = velocity(x, t)
        if any_midpoint:
            v = torch.where(midpoint, velocity(x - (dt / 2)[:, None, None] * v, t - dt / 2), v)
        x = x - dt[:, None, None] * v
    return x


sample_flow = torch.no_grad()(integrate_flow)
