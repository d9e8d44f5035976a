"""VGGish (Hershey et al. 2017): the 128-d audio embedding behind FAD.

Loads the PyTorch port of Google's VGGish weights (`vggish-10086976.pth`, the torchvggish layout:
`features.N.*` convolutions and `embeddings.N.*` linears) from a local path or fsspec URI. The
embedding is the 128-d layer before VGGish's PCA/quantisation, as FAD uses it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from jobs.evaluation.embedders.base import AudioFeatures
from jobs.evaluation.music import to_mono
from model.weights import read_torch_checkpoint

SAMPLE_RATE = 16000
WINDOW, HOP, N_FFT = 400, 160, 512  # 25 ms windows every 10 ms
N_MELS, FMIN, FMAX = 64, 125.0, 7500.0
EXAMPLE_FRAMES = 96  # 0.96 s per embedding
LOG_OFFSET = 0.01
CHANNELS = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(hz) / 700.0)


def mel_matrix() -> np.ndarray:
    """(257, 64) weights: triangles linear in HTK mel (not in Hz), as VGGish's front end computes them."""
    bins = _hz_to_mel(np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1))[:, None]
    edges = np.linspace(_hz_to_mel(FMIN), _hz_to_mel(FMAX), N_MELS + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    weights = np.maximum(0.0, np.minimum((bins - lower) / (center - lower), (upper - bins) / (upper - center)))
    weights[0] = 0.0  # the DC bin carries no band
    return weights


def examples(audio: np.ndarray) -> np.ndarray:
    """(S,) mono 16 kHz -> (N, 96, 64) log-mel examples; a clip under 0.96 s is zero-padded to one."""
    audio = np.pad(audio, (0, max(0, WINDOW + HOP * (EXAMPLE_FRAMES - 1) - len(audio))))
    frames = np.lib.stride_tricks.sliding_window_view(audio, WINDOW)[::HOP]  # no centring: frames from t=0
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW) / WINDOW)  # periodic Hann
    magnitude = np.abs(np.fft.rfft(frames * window, N_FFT))
    log_mel = np.log(magnitude @ mel_matrix() + LOG_OFFSET)
    count = len(log_mel) // EXAMPLE_FRAMES
    return log_mel[: count * EXAMPLE_FRAMES].reshape(count, EXAMPLE_FRAMES, N_MELS).astype(np.float32)


class VGGish(nn.Module):
    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for spec in CHANNELS:
            if spec == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, spec, 3, padding=1), nn.ReLU()]
                channels = spec
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 6 * 4, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 128), nn.ReLU()
        )

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        """(N, 96, 64) -> (N, 128)."""
        x = self.features(log_mel.unsqueeze(1))  # (N, 512, 6, 4)
        return self.embeddings(x.permute(0, 2, 3, 1).flatten(1))  # TF's (H, W, C) flattening order


class VGGishEmbedder:
    """Clip-level VGGish embedding: the mean over 0.96 s examples."""

    name = "VGGish"

    def __init__(self, weights: str):
        self.net = VGGish().eval()
        state = read_torch_checkpoint(weights)
        self.net.load_state_dict({k: v for k, v in state.items() if not k.startswith("pproc")})

    @torch.no_grad()
    def __call__(self, audio: np.ndarray, sample_rate: int) -> AudioFeatures:
        x = torch.from_numpy(examples(to_mono(audio, sample_rate, SAMPLE_RATE)))
        return AudioFeatures(self.net(x).mean(0).numpy(), None)
