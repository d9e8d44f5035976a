"""CLAP (LAION, Wu et al. 2023): a joint audio-text space for a prompt-adherence score.

Loads a checkpoint in the transformers `ClapModel` layout (e.g. a local copy of
`laion/larger_clap_music`, whose audio tower was trained on music) from a local directory or
fsspec URI. The score is the cosine between a clip's audio embedding and its prompt's.
"""

from __future__ import annotations

import numpy as np
import torch

from jobs.evaluation.music import to_mono
from model.io import local_dir_copy

SAMPLE_RATE = 48000


class ClapScorer:
    name = "CLAP"

    def __init__(self, weights: str):
        from transformers import ClapModel, ClapProcessor

        with local_dir_copy(weights) as path:
            self.model = ClapModel.from_pretrained(path).eval()
            self.processor = ClapProcessor.from_pretrained(path)

    @torch.no_grad()
    def audio(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """(D,) unit-norm embedding of (C, S) or (S,) audio."""
        mono = to_mono(audio, sample_rate, SAMPLE_RATE)
        inputs = self.processor(audio=[mono], sampling_rate=SAMPLE_RATE, return_tensors="pt")
        return self.model.get_audio_features(**inputs).pooler_output[0].numpy()

    @torch.no_grad()
    def text(self, text: str) -> np.ndarray:
        """(D,) unit-norm embedding of a prompt."""
        inputs = self.processor(text=[text], return_tensors="pt", padding=True)
        return self.model.get_text_features(**inputs).pooler_output[0].numpy()
