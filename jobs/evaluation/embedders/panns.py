"""PANNs CNN14 (Kong et al. 2020): AudioSet's 527-class tagger and its 2048-d embedding.

Loads a released CNN14 checkpoint (`Cnn14_mAP=0.431.pth` at 32 kHz or `Cnn14_16k_mAP=0.438.pth`;
a dict whose "model" holds `conv_block{1..6}`, `bn0`, `fc1`, `fc_audioset` and the log-mel
front end's `logmel_extractor.melW`) from a local path or fsspec URI. The mel filterbank is taken
from the checkpoint itself, and its size tells which of the two variants it is.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jobs.evaluation.embedders.base import AudioFeatures
from jobs.evaluation.music import to_mono
from model.weights import read_torch_checkpoint

VARIANTS = {513: (32000, 1024, 320), 257: (16000, 512, 160)}  # FFT bins -> (sample rate, window, hop)
CHANNELS = (64, 128, 256, 512, 1024, 2048)
AMIN = 1e-10


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(cout), nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor, pool: int) -> torch.Tensor:
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return F.avg_pool2d(x, pool)


class Cnn14(nn.Module):
    def __init__(self, fft_bins: int = 513, n_mels: int = 64, classes: int = 527):
        super().__init__()
        self.sample_rate, self.window, self.hop = VARIANTS[fft_bins]
        self.register_buffer("mel", torch.zeros(fft_bins, n_mels))
        self.bn0 = nn.BatchNorm2d(n_mels)
        ins = (1, *CHANNELS[:-1])
        for i, (cin, cout) in enumerate(zip(ins, CHANNELS, strict=True), 1):
            self.add_module(f"conv_block{i}", ConvBlock(cin, cout))
        self.fc1 = nn.Linear(CHANNELS[-1], CHANNELS[-1])
        self.fc_audioset = nn.Linear(CHANNELS[-1], classes)

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, S) -> (B, 1, T, 64) power log-mel in dB."""
        window = torch.hann_window(self.window, periodic=True)
        spec = torch.stft(
            audio, self.window, self.hop, window=window, center=True, pad_mode="reflect", return_complex=True
        )
        power = spec.abs().pow(2).transpose(1, 2)  # (B, T, bins)
        return (10 * torch.log10(torch.clamp(power @ self.mel, min=AMIN))).unsqueeze(1)

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) at the variant's rate -> (class probabilities (B, 527), embedding (B, 2048))."""
        x = self.bn0(self.log_mel(audio).transpose(1, 3)).transpose(1, 3)  # normalise each mel band
        for i in range(1, 7):
            x = getattr(self, f"conv_block{i}")(x, 2 if i < 6 else 1)
        x = x.mean(3)  # over frequency: (B, 2048, T')
        x = x.amax(2) + x.mean(2)
        embedding = F.relu(self.fc1(x))
        return torch.sigmoid(self.fc_audioset(embedding)), embedding


def load_cnn14(weights: str) -> Cnn14:
    state = read_torch_checkpoint(weights)
    state = state.get("model", state)
    mel = state["logmel_extractor.melW"]
    net = Cnn14(fft_bins=mel.shape[0], n_mels=mel.shape[1], classes=state["fc_audioset.weight"].shape[0])
    kept = {k: v for k, v in state.items() if not k.startswith(("spectrogram_extractor", "logmel_extractor"))}
    net.load_state_dict({**kept, "mel": mel})
    return net.eval()


class PannsEmbedder:
    """CNN14 on the whole clip: its 2048-d embedding and 527 AudioSet class probabilities."""

    name = "PANNs-CNN14"

    def __init__(self, weights: str):
        self.net = load_cnn14(weights)

    @torch.no_grad()
    def __call__(self, audio: np.ndarray, sample_rate: int) -> AudioFeatures:
        x = torch.from_numpy(to_mono(audio, sample_rate, self.net.sample_rate))[None]
        probabilities, embedding = self.net(x)
        return AudioFeatures(embedding[0].numpy(), probabilities[0].numpy())
