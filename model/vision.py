"""The frozen CLIP image tower (open_clip) that turns sampled video frames into per-frame features."""

from __future__ import annotations

import numpy as np
import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from model.config import VisionConfig
from model.io import local_copy


def _build_tower(cfg: VisionConfig) -> nn.Module:
    if cfg.tower is not None:
        t = cfg.tower
        vision_cfg = {
            "image_size": t.image_size,
            "layers": t.layers,
            "width": t.width,
            "patch_size": t.patch_size,
            "head_width": t.head_width,
        }
        text_cfg = {"context_length": 2, "vocab_size": 2, "width": 8, "heads": 1, "layers": 1}  # unused, dropped
        return open_clip.CLIP(embed_dim=t.embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg).visual
    if cfg.clip_checkpoint is None:
        return open_clip.create_model(cfg.clip_model, pretrained=None, device=torch.get_default_device()).visual
    with local_copy(cfg.clip_checkpoint, suffix=".bin") as path:
        return open_clip.create_model(cfg.clip_model, pretrained=path).visual


class ClipEncoder(nn.Module):
    """CLIP ViT image tower, always frozen and in eval mode (paper §4.4, stage 2 keeps it frozen)."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.visual = _build_tower(cfg)
        self.image_size = int(
            self.visual.image_size[0] if isinstance(self.visual.image_size, tuple) else self.visual.image_size
        )
        self.visual.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> ClipEncoder:
        return super().train(False)  # frozen: never in training mode

    @torch.no_grad()
    def forward(self, frames: np.ndarray | torch.Tensor, batch: int = 64) -> torch.Tensor:
        """(F, S, S, 3) uint8 RGB frames, S = image_size -> (F, feature_dim) CLIP features."""
        frames = torch.as_tensor(frames)
        device = self.mean.device
        outs = []
        for chunk in frames.split(batch):
            x = chunk.to(device).permute(0, 3, 1, 2).float() / 255.0  # (F, 3, S, S)
            x = (x - self.mean) / self.std
            outs.append(self.visual(x.to(next(self.visual.parameters()).dtype)).float())
        return torch.cat(outs) if outs else torch.zeros(0, self.visual.output_dim, device=device)
