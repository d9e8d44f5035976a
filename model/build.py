"""Config -> objects, in one place: the model, the VAE and the tokenizer that serve one configuration."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.config import VideoRobinConfig
from model.text import Tokenizer, load_tokenizer
from model.vae import AudioAutoencoder, load_vae
from model.videorobin import VideoRobin


@dataclass
class Bundle:
    """Everything generation needs: the trained model, the frozen VAE, the prompt tokenizer."""

    config: VideoRobinConfig
    model: VideoRobin
    vae: AudioAutoencoder
    tokenizer: Tokenizer

    def to(self, device: torch.device | str) -> Bundle:
        self.model.to(device)
        self.vae.to(device)
        return self


def build_bundle(cfg: VideoRobinConfig, seed: int = 0) -> Bundle:
    """A freshly initialised model (CLIP and the VAE from their checkpoints when the config names them)."""
    torch.manual_seed(seed)
    model = VideoRobin(cfg)
    return Bundle(cfg, model, load_vae(cfg.vae), load_tokenizer(cfg.text, cfg.semantic_lm.vocab_size))


def parameter_counts(model: VideoRobin, vae: AudioAutoencoder | None = None) -> dict[str, int]:
    """Parameters per component (the `videorobin info` table)."""
    parts = {
        "text_embedding": model.embed,
        "semantic_lm": model.semantic_lm,
        "fsq": model.fsq,
        "rite": model.rite,
        "locenc": model.locenc,
        "locdit": model.locdit,
        "clip (frozen)": model.clip,
        "vision_proj": model.vision_proj,
        "plan_proj": model.plan_proj,
        "residual_proj": model.residual_proj,
        "vae (frozen)": vae,
    }
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in parts.items() if m is not None}
    counts["audio_start"] = model.audio_start.numel()
    counts["trainable_total"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return counts
