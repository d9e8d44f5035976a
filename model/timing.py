"""A time coordinate shared by the video frames and the audio positions of the SemanticLM's sequence.

The sequence is [text][frames][audio-start][patches]: the frame at t seconds and the patch that plays at t sit
F + 1 - 0.6 i positions apart for patch i of a clip with F frames, so rotary positions alone leave a patch
to work out which frames are its own. With `time_embedding` on, frames and audio positions also get
`TimeEmbedding(t)` added, the same function of seconds for both, so attending from a patch to the frames of
its moment is a matter of matching content. Sinusoids with periods from 80 ms (a fast beat's subdivision)
to 2 minutes, then a linear map that starts at zero: a model begins as if the embedding were absent.
"""

from __future__ import annotations

import math

import torch
from torch import nn

PERIODS_S = (0.08, 120.0)
FREQUENCIES = 32


class TimeEmbedding(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        lo, hi = PERIODS_S
        periods = lo * (hi / lo) ** (torch.arange(FREQUENCIES) / (FREQUENCIES - 1))
        self.register_buffer("angular", 2 * math.pi / periods, persistent=False)
        self.proj = nn.Linear(2 * FREQUENCIES, hidden)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, seconds: torch.Tensor) -> torch.Tensor:
        """(...) times in seconds -> (..., hidden)."""
        phase = seconds.float()[..., None] * self.angular  # (..., FREQUENCIES)
        return self.proj(torch.cat([phase.sin(), phase.cos()], dim=-1))
