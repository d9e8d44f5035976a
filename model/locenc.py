"""LocEnc, the paper's Audio Latent Encoder: one embedding per latent patch (DiTAR's aggregation encoder)."""

from __future__ import annotations

import torch
from torch import nn

from model.backbone import Transformer
from model.config import TransformerConfig


class LocEnc(nn.Module):
    """Linear(D -> H) per frame, a learned CLS token, a bidirectional transformer over the P+1 tokens;
    the CLS output, projected to the SemanticLM width, is the patch embedding."""

    def __init__(self, cfg: TransformerConfig, latent_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_proj = nn.Linear(latent_dim, cfg.hidden)
        self.cls = nn.Parameter(torch.randn(cfg.hidden) * 0.02)
        self.transformer = Transformer(cfg, causal=False)
        self.out_proj = nn.Linear(cfg.hidden, out_dim)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(..., P, D) latent patches -> (..., out_dim) embeddings."""
        lead, (P, D) = patches.shape[:-2], patches.shape[-2:]
        x = self.in_proj(patches.reshape(-1, P, D))  # (B', P, H)
        x = torch.cat([self.cls.expand(x.shape[0], 1, -1), x], dim=1)  # (B', P+1, H)
        cls = self.transformer(x)[:, 0]
        return self.out_proj(cls).reshape(*lead, -1)
