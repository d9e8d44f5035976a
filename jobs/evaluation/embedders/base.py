"""What every audio embedder gives the metrics: one embedding and, for classifiers, class probabilities."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class AudioFeatures:
    embedding: np.ndarray  # (D,) clip-level embedding, for Fréchet distance and Density/Coverage
    probabilities: np.ndarray | None  # (C,) class probabilities, for KL and IS; None for pure embedders


class AudioEmbedder(Protocol):
    name: str  # named beside every number it produced, e.g. "VGGish" or "musicnn-MTT"

    def __call__(self, audio: np.ndarray, sample_rate: int) -> AudioFeatures:
        """(C, S) or (S,) audio at `sample_rate` -> clip-level features."""
        ...
