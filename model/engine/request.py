"""Per-request generation parameters and the prepared request the engine schedules."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from model.config import FlowConfig


@dataclass(frozen=True)
class GenerationParams:
    """What a caller may choose per request; never stored on the model."""

    seed: int = 0
    duration_s: float | None = None  # None: the video's duration
    steps: int | None = None  # None: the model's own (flow.steps in its config)
    guidance: float | None = None  # None: the model's own (flow.guidance)

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be at least 1 (got {self.steps})")
        if self.guidance is not None and self.guidance < 0:
            raise ValueError(f"guidance (cfg) must be >= 0 (got {self.guidance})")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError(f"duration must be positive (got {self.duration_s})")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63) (got {self.seed})")

    def with_defaults(self, flow: FlowConfig) -> GenerationParams:
        """These parameters with the model's sampler settings where the caller left them open."""
        steps = flow.steps if self.steps is None else self.steps
        guidance = flow.guidance if self.guidance is None else self.guidance
        return replace(self, steps=steps, guidance=guidance)


@dataclass
class GenerationRequest:
    """A request ready to schedule: tokenised prompt, CLIP frame features, resolved length."""

    request_id: str
    text_ids: torch.Tensor  # (Lt,) long
    frames: torch.Tensor | None  # (F, feature_dim) or None
    duration_s: float
    n_patches: int
    params: GenerationParams  # resolved: steps and guidance are set

    @property
    def prefix_len(self) -> int:
        return self.text_ids.numel() + (0 if self.frames is None else self.frames.shape[0]) + 1
