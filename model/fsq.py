"""Finite scalar quantisation: the SemanticLM's semi-discrete plan (paper §4.2, eq. 2)."""

from __future__ import annotations

import torch
from torch import nn

from model.config import FSQConfig


class FSQ(nn.Module):
    """Linear(H -> dim), tanh, round to 2*scale+1 levels per dim, Linear(dim -> H).

    Rounding passes gradients straight through in training; there is no codebook and no auxiliary loss.
    """

    def __init__(self, hidden: int, cfg: FSQConfig) -> None:
        super().__init__()
        self.scale = cfg.scale
        self.down = nn.Linear(hidden, cfg.dim)
        self.up = nn.Linear(cfg.dim, hidden)

    def quantize(self, h: torch.Tensor) -> torch.Tensor:
        z = torch.tanh(self.down(h))
        q = torch.round(z * self.scale) / self.scale
        if self.training:
            q = z + (q - z).detach()  # straight-through estimator
        return q

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., H) quantised plan."""
        return self.up(self.quantize(h))
