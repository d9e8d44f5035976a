"""LocDiT, the Refinement-Head: a bidirectional DiT that denoises one latent patch (paper §4.2, eq. 4)."""

from __future__ import annotations

import math

import torch
from torch import nn

from model.backbone import Transformer
from model.config import TransformerConfig


class TimestepEmbedding(nn.Module):
    """Sinusoidal features of t * 1000, then an MLP."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.hidden // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = (t.float() * 1000.0)[:, None] * freqs  # (B, H/2)
        return self.mlp(torch.cat([args.cos(), args.sin()], dim=-1).to(self.mlp[0].weight.dtype))


class LocDiT(nn.Module):
    """Velocity estimator over [mu + t_emb][previous patch (P)][noisy patch (P)]; reads the last P outputs."""

    def __init__(self, cfg: TransformerConfig, latent_dim: int) -> None:
        super().__init__()
        self.time = TimestepEmbedding(cfg.hidden)
        self.prev_proj = nn.Linear(latent_dim, cfg.hidden)
        self.in_proj = nn.Linear(latent_dim, cfg.hidden)
        self.transformer = Transformer(cfg, causal=False)
        self.out_proj = nn.Linear(cfg.hidden, latent_dim)

    def forward(self, mu: torch.Tensor, t: torch.Tensor, prev: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Predict the velocity v = z - x0.

        Args:
            mu: (B, H) planning embedding (zeros for the unconditional branch).
            t: (B,) flow time, 1 = noise, 0 = data.
            prev: (B, P, D) previous clean patch (zeros before the first).
            x: (B, P, D) noisy patch at time t.
        Returns:
            (B, P, D) velocity.
        """
        P = x.shape[1]
        cond = (mu + self.time(t))[:, None]  # (B, 1, H)
        h = torch.cat([cond, self.prev_proj(prev), self.in_proj(x)], dim=1)  # (B, 2P+1, H)
        return self.out_proj(self.transformer(h)[:, -P:])
