"""musicnn (Pons & Serra, 2019): a music tagger whose 200-d penultimate layer is a music embedding.

A PyTorch port of the MTT_musicnn network. Its pretrained weights were published inside the `musicnn`
wheel as a TensorFlow checkpoint; `export_safetensors` read them once with `tf_bundle` (no TensorFlow)
into `weights/musicnn-mtt.safetensors`, which ships with this package, so FD/KL/IS/Density/Coverage
are computed offline with a real music model from a normal install. These numbers are labelled
"musicnn-MTT" and are not comparable with VGGish/PANNs/PaSST figures in papers.

The weights and the network's design are musicnn's, under this notice:

    Copyright (c) Music Technology Group, Universitat Pompeu Fabra 2019. Code developed by Jordi
    Pons (www.jordipons.me).

    Permission to use, copy, modify, and/or distribute this software for any purpose with or
    without fee is hereby granted, provided that the above copyright notice and this permission
    notice appear in all copies.

    THE SOFTWARE IS PROVIDED "AS IS" AND THE AUTHOR DISCLAIMS ALL WARRANTIES WITH REGARD TO THIS
    SOFTWARE INCLUDING ALL IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS. IN NO EVENT SHALL
    THE AUTHOR BE LIABLE FOR ANY SPECIAL, DIRECT, INDIRECT, OR CONSEQUENTIAL DAMAGES OR ANY
    DAMAGES WHATSOEVER RESULTING FROM LOSS OF USE, DATA OR PROFITS, WHETHER IN AN ACTION OF
    CONTRACT, NEGLIGENCE OR OTHER TORTIOUS ACTION, ARISING OUT OF OR IN CONNECTION WITH THE USE OR
    PERFORMANCE OF THIS SOFTWARE.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jobs.evaluation.embedders.base import AudioFeatures
from jobs.evaluation.embedders.tf_bundle import checkpoint_prefix, read_tf_checkpoint
from jobs.evaluation.music import to_mono
from model.errors import InputError
from model.weights import read_safetensors, write_safetensors

SAMPLE_RATE = 16000
N_FFT, HOP, N_MELS = 512, 256, 96
WINDOW_FRAMES = 187  # 3 s of frames: what the network was trained on
BN_EPS = 1e-3  # TF's batch-normalisation default
TIMBRAL_WIDTHS = (38, 67)  # 0.4 and 0.7 of the 96 mel bands
TEMPORAL_LENGTHS = (128, 64, 32)
MTT_TAGS = tuple(
    "guitar,classical,slow,techno,strings,drums,electronic,rock,fast,piano,ambient,beat,violin,vocal,synth,"
    "female,indian,opera,male,singing,vocals,no vocals,harpsichord,loud,quiet,flute,woman,male vocal,"
    "no vocal,pop,soft,sitar,solo,man,classic,choir,voice,new age,dance,male voice,female vocal,beats,"
    "harp,cello,no voice,weird,country,metal,female voice,choral".split(",")
)  # the checkpoint's label order


SHIPPED_WEIGHTS = Path(__file__).parent / "weights" / "musicnn-mtt.safetensors"  # ISC notice: weights/NOTICE


def default_weights() -> str:
    """The MTT_musicnn weights shipped with the package."""
    if not SHIPPED_WEIGHTS.is_file():
        raise FileNotFoundError(f"musicnn weights missing from this install: {SHIPPED_WEIGHTS}")
    return str(SHIPPED_WEIGHTS)


def wheel_checkpoint() -> str | None:
    """The original TF checkpoint directory inside an installed `musicnn` wheel, if there is one."""
    spec = importlib.util.find_spec("musicnn")
    if spec is None or not spec.submodule_search_locations:
        return None
    return f"{list(spec.submodule_search_locations)[0]}/MTT_musicnn"


def export_safetensors(tf_checkpoint: str, out: str) -> None:
    """Convert musicnn's TF checkpoint directory into our safetensors layout (how SHIPPED_WEIGHTS was made)."""
    net = Musicnn()
    net.load_tf(read_tf_checkpoint(checkpoint_prefix(tf_checkpoint)))
    write_safetensors(out, {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")})


def log_mel(audio: np.ndarray) -> np.ndarray:
    """(S,) mono 16 kHz -> (T, 96) log-compressed mel frames, as the network was trained on."""
    import librosa

    mel = librosa.feature.melspectrogram(y=audio, sr=SAMPLE_RATE, hop_length=HOP, n_fft=N_FFT, n_mels=N_MELS)
    return np.log10(10000 * mel.T.astype(np.float16).astype(np.float32) + 1)  # float16 as in training


def windows(frames: np.ndarray) -> np.ndarray:
    """(T, 96) -> (W, 187, 96) non-overlapping 3 s windows; a short clip is repeated to one window."""
    if len(frames) < WINDOW_FRAMES:
        frames = np.tile(frames, (-(-WINDOW_FRAMES // max(len(frames), 1)), 1))[:WINDOW_FRAMES]
    count = len(frames) // WINDOW_FRAMES
    return frames[: count * WINDOW_FRAMES].reshape(count, WINDOW_FRAMES, N_MELS)


def _bn(channels: int, dims: int) -> nn.Module:
    return (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(channels, eps=BN_EPS)


class Musicnn(nn.Module):
    """Musically motivated front-end (timbral and temporal filters), dense mid-end, pooled back-end."""

    def __init__(self, timbral: int = 204, temporal: int = 51, midend: int = 64, units: int = 200, classes: int = 50):
        super().__init__()
        self.input_bn = _bn(1, 2)
        self.timbral = nn.ModuleList(nn.Conv2d(1, timbral, (7, w)) for w in TIMBRAL_WIDTHS)
        self.timbral_bn = nn.ModuleList(_bn(timbral, 2) for _ in TIMBRAL_WIDTHS)
        self.temporal = nn.ModuleList(nn.Conv2d(1, temporal, (k, 1)) for k in TEMPORAL_LENGTHS)
        self.temporal_bn = nn.ModuleList(_bn(temporal, 2) for _ in TEMPORAL_LENGTHS)
        front = timbral * len(TIMBRAL_WIDTHS) + temporal * len(TEMPORAL_LENGTHS)
        self.midend = nn.ModuleList(nn.Conv1d(c, midend, 7, padding=3) for c in (front, midend, midend))
        self.midend_bn = nn.ModuleList(_bn(midend, 1) for _ in range(3))
        pooled = 2 * (front + 3 * midend)
        self.pool_bn = _bn(pooled, 1)
        self.dense = nn.Linear(pooled, units)
        self.dense_bn = _bn(units, 1)
        self.classifier = nn.Linear(units, classes)

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 187, 96) log-mel -> (logits (B, 50), penultimate embedding (B, 200))."""
        x = self.input_bn(mel.unsqueeze(1))  # (B, 1, T, F)
        front = []
        for conv, bn in zip(self.timbral, self.timbral_bn, strict=True):
            front.append(bn(F.relu(conv(F.pad(x, (0, 0, 3, 3))))).amax(3))  # max over frequency: (B, C, T)
        for conv, bn, k in zip(self.temporal, self.temporal_bn, TEMPORAL_LENGTHS, strict=True):
            same = F.pad(x, (0, 0, (k - 1) // 2, k // 2))  # TF "same" puts the odd pad after
            front.append(bn(F.relu(conv(same))).amax(3))
        features = [torch.cat(front, 1)]  # (B, 561, T)
        h = features[0]
        for i, (conv, bn) in enumerate(zip(self.midend, self.midend_bn, strict=True)):
            h = bn(F.relu(conv(h))) + (h if i else 0)  # residual after the first layer
            features.append(h)
        dense = torch.cat(features, 1)  # (B, 753, T)
        pooled = torch.stack([dense.amax(2), dense.mean(2)], -1).flatten(1)  # (max, mean) interleaved
        embedding = self.dense_bn(F.relu(self.dense(self.pool_bn(pooled))))
        return self.classifier(embedding), embedding

    def load_tf(self, tensors: dict[str, np.ndarray]) -> None:
        """Copy musicnn's TF variables in; their creation order names them conv2d_N, dense_N, ..."""
        convs = [*self.timbral, *self.temporal, *self.midend]
        bns = [self.input_bn, *self.timbral_bn, *self.temporal_bn, *self.midend_bn, self.pool_bn, self.dense_bn]
        state = {}
        for i, conv in enumerate(convs):
            kernel = tensors[_tf_name("conv2d", i, "kernel")]  # (kh, kw, in, out)
            if isinstance(conv, nn.Conv1d):  # a (7, C) kernel over a 1-channel image = a 1-D conv over C
                kernel = kernel[:, :, 0, :].transpose(2, 1, 0)
            else:
                kernel = kernel.transpose(3, 2, 0, 1)
            state[conv.weight] = kernel
            state[conv.bias] = tensors[_tf_name("conv2d", i, "bias")]
        for i, bn in enumerate(bns):
            name = "batch_normalization"
            state[bn.weight] = tensors[_tf_name(name, i, "gamma")]
            state[bn.bias] = tensors[_tf_name(name, i, "beta")]
            state[bn.running_mean] = tensors[_tf_name(name, i, "moving_mean")]
            state[bn.running_var] = tensors[_tf_name(name, i, "moving_variance")]
        for i, linear in enumerate((self.dense, self.classifier)):
            state[linear.weight] = tensors[_tf_name("dense", i, "kernel")].T
            state[linear.bias] = tensors[_tf_name("dense", i, "bias")]
        with torch.no_grad():
            for param, value in state.items():
                if tuple(param.shape) != value.shape:
                    raise InputError(f"musicnn checkpoint: shape {value.shape} does not fit {tuple(param.shape)}")
                param.copy_(torch.tensor(value))


def _tf_name(layer: str, index: int, variable: str) -> str:
    return f"{layer}{'_' + str(index) if index else ''}/{variable}"


class MusicnnEmbedder:
    """Clip-level musicnn features: the mean over 3 s windows of the embedding and tag probabilities."""

    sample_rate = SAMPLE_RATE

    def __init__(self, weights: str | None = None):
        self.weights = weights or default_weights()
        self.name = "musicnn-MTT"
        self.net = Musicnn().eval()
        if self.weights.endswith(".safetensors"):
            missing, unexpected = self.net.load_state_dict(read_safetensors(self.weights), strict=False)
            if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
                raise InputError(f"{self.weights}: not musicnn weights (missing {missing}, unexpected {unexpected})")
        else:  # the original TF checkpoint directory
            self.net.load_tf(read_tf_checkpoint(checkpoint_prefix(self.weights)))
        self.labels = MTT_TAGS

    @torch.no_grad()
    def __call__(self, audio: np.ndarray, sample_rate: int) -> AudioFeatures:
        mel = torch.from_numpy(windows(log_mel(to_mono(audio, sample_rate, SAMPLE_RATE))))
        logits, embedding = self.net(mel)
        return AudioFeatures(embedding.mean(0).numpy(), torch.sigmoid(logits).mean(0).numpy())
