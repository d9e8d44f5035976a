"""ImageBind (Girdhar et al. 2023): audio and video in one space, for an audio-video cosine score.

Loads the vision and audio towers of a released ImageBind checkpoint (`imagebind_huge.pth`: keys
`modality_{preprocessors,trunks,heads}.{vision,audio}.*`; the text, depth, thermal and IMU towers
are ignored) from a local path or fsspec URI. The modules below mirror that key layout so the
state dict loads strictly.

Inputs follow ImageBind's own preprocessing: audio as three 2 s clips of 128-bin Kaldi-style
log-mel filterbanks at 16 kHz; video as five 2 s clips of two 224 px frames each. One difference:
each video frame is centre-cropped once, where ImageBind averages three spatial crops.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from jobs.evaluation.music import to_mono
from model.media import probe_video, sample_frames
from model.weights import read_torch_checkpoint

SAMPLE_RATE = 16000
CLIP_S = 2.0
AUDIO_CLIPS, VIDEO_CLIPS = 3, 5
MEL_BINS, MEL_FRAMES = 128, 204
FBANK_MEAN, FBANK_STD = -4.268, 9.138  # AudioSet statistics ImageBind normalises with
FRAME_LEN, FRAME_SHIFT, FFT = 400, 160, 512  # 25 ms / 10 ms at 16 kHz
PREEMPHASIS, LOW_HZ = 0.97, 20.0
IMAGE_SIZE, PATCH, TUBELET = 224, 14, 2
AUDIO_PATCH, AUDIO_STRIDE = 16, 10
HEADS = {1280: 16, 768: 12}  # embedding width -> attention heads of the released towers
LN_EPS = 1e-6


def _mel(hz: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(hz) / 700.0)


def kaldi_fbank(audio: np.ndarray) -> np.ndarray:
    """(S,) 16 kHz -> (frames, 128) log mel energies the way Kaldi's `compute-fbank-feats` makes them:
    per-frame DC removal, pre-emphasis, symmetric Hann window, power spectrum, mel-domain triangles."""
    frames = np.lib.stride_tricks.sliding_window_view(audio.astype(np.float64), FRAME_LEN)[::FRAME_SHIFT]
    frames = frames - frames.mean(1, keepdims=True)
    frames = frames - PREEMPHASIS * np.concatenate([frames[:, :1], frames[:, :-1]], 1)
    frames = frames * np.hanning(FRAME_LEN)
    power = np.abs(np.fft.rfft(frames, FFT)) ** 2  # (frames, 257)
    edges = np.linspace(_mel(LOW_HZ), _mel(SAMPLE_RATE / 2), MEL_BINS + 2)
    bins = _mel(np.arange(FFT // 2) * SAMPLE_RATE / FFT)[:, None]
    left, center, right = edges[:-2], edges[1:-1], edges[2:]
    weights = np.maximum(0.0, np.minimum((bins - left) / (center - left), (right - bins) / (right - center)))
    weights = np.vstack([weights, np.zeros((1, MEL_BINS))])  # the Nyquist bin has no band
    return np.log(np.maximum(power @ weights, np.finfo(np.float32).eps)).astype(np.float32)


def _clip_starts(duration: float, clips: int) -> np.ndarray:
    return np.linspace(0.0, max(0.0, duration - CLIP_S), clips)


def audio_clips(audio: np.ndarray) -> torch.Tensor:
    """(S,) 16 kHz -> (3, 1, 128, 204) normalised filterbanks of three evenly spaced 2 s clips."""
    out = []
    for start in _clip_starts(len(audio) / SAMPLE_RATE, AUDIO_CLIPS):
        clip = audio[int(start * SAMPLE_RATE) : int((start + CLIP_S) * SAMPLE_RATE)]
        clip = np.pad(clip, (0, max(0, FRAME_LEN - len(clip))))
        fbank = kaldi_fbank(clip - clip.mean()).T[:, :MEL_FRAMES]
        fbank = np.pad(fbank, ((0, 0), (0, MEL_FRAMES - fbank.shape[1])))
        out.append((fbank - FBANK_MEAN) / FBANK_STD)
    return torch.from_numpy(np.stack(out)).unsqueeze(1)


def video_clips(path: str) -> torch.Tensor:
    """A video -> (5, 3, 2, 224, 224): two frames (a clip's first and last) of five evenly spaced 2 s clips."""
    duration = probe_video(path).duration_s
    clips = [
        sample_frames(path, fps=1 / CLIP_S, size=IMAGE_SIZE, duration_s=2 * CLIP_S, max_frames=2, start_s=start)
        for start in _clip_starts(duration, VIDEO_CLIPS)
    ]
    x = torch.from_numpy(np.stack(clips)).float() / 255  # (5, 2, H, W, 3)
    x = (x - torch.tensor(OPENAI_DATASET_MEAN)) / torch.tensor(OPENAI_DATASET_STD)
    return x.permute(0, 4, 1, 2, 3)


class Mlp(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, bias_kv: bool):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, HEADS[dim], add_bias_kv=bias_kv, batch_first=True)
        self.norm_1, self.norm_2 = nn.LayerNorm(dim, eps=LN_EPS), nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm_2(x))


class Trunk(nn.Module):
    def __init__(self, dim: int, depth: int, pre_norm: bool, bias_kv: bool):
        super().__init__()
        self.pre_transformer_layer = nn.Sequential(nn.LayerNorm(dim, eps=LN_EPS) if pre_norm else nn.Identity())
        self.blocks = nn.Sequential(*(Block(dim, bias_kv) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.pre_transformer_layer(x))


class PositionalEmbedding(nn.Module):
    def __init__(self, tokens: int, dim: int):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))


class Stem(nn.Module):
    def __init__(self, proj: nn.Sequential, norm: nn.Module | None = None):
        super().__init__()
        self.proj = proj
        if norm is not None:
            self.norm_layer = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)  # (B, patches, dim)
        return self.norm_layer(x) if hasattr(self, "norm_layer") else x


class Preprocessor(nn.Module):
    """Patch tokens, a class token in front, learned positions."""

    def __init__(self, stem: Stem, tokens: int, dim: int):
        super().__init__()
        self.rgbt_stem = stem
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding_helper = PositionalEmbedding(tokens + 1, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.rgbt_stem(x)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1)
        return x + self.pos_embedding_helper.pos_embed


class SelectClassToken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


def _head(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim, eps=LN_EPS), SelectClassToken(), nn.Linear(dim, out, bias=False))


class ImageBindAudioVideo(nn.Module):
    """The vision and audio towers of ImageBind, under the checkpoint's own module names."""

    def __init__(self, vision_dim: int, vision_depth: int, audio_dim: int, audio_depth: int, out_dim: int):
        super().__init__()
        vision_stem = Stem(
            nn.Sequential(
                nn.Identity(), nn.Conv3d(3, vision_dim, (TUBELET, PATCH, PATCH), (TUBELET, PATCH, PATCH), bias=False)
            )
        )
        audio_stem = Stem(
            nn.Sequential(nn.Conv2d(1, audio_dim, AUDIO_PATCH, AUDIO_STRIDE, bias=False)), nn.LayerNorm(audio_dim)
        )
        audio_tokens = ((MEL_BINS - AUDIO_PATCH) // AUDIO_STRIDE + 1) * ((MEL_FRAMES - AUDIO_PATCH) // AUDIO_STRIDE + 1)
        self.modality_preprocessors = nn.ModuleDict(
            {
                "vision": Preprocessor(vision_stem, (IMAGE_SIZE // PATCH) ** 2, vision_dim),
                "audio": Preprocessor(audio_stem, audio_tokens, audio_dim),
            }
        )
        self.modality_trunks = nn.ModuleDict(
            {
                "vision": Trunk(vision_dim, vision_depth, pre_norm=True, bias_kv=False),
                "audio": Trunk(audio_dim, audio_depth, pre_norm=False, bias_kv=True),
            }
        )
        self.modality_heads = nn.ModuleDict({"vision": _head(vision_dim, out_dim), "audio": _head(audio_dim, out_dim)})

    def embed(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """(clips, ...) -> (out_dim,) unit vector: the mean of the clips' normalised embeddings."""
        tokens = self.modality_trunks[modality](self.modality_preprocessors[modality](x))
        return F.normalize(F.normalize(self.modality_heads[modality](tokens), dim=-1).mean(0), dim=-1)


TOWERS = ("modality_preprocessors.", "modality_trunks.", "modality_heads.")


def load_imagebind(weights: str) -> ImageBindAudioVideo:
    state = read_torch_checkpoint(weights)
    state = {k: v for k, v in state.items() if k.startswith(TOWERS) and k.split(".")[1] in ("vision", "audio")}

    def depth(modality: str) -> int:
        return len({k.split(".")[3] for k in state if k.startswith(f"modality_trunks.{modality}.blocks.")})

    net = ImageBindAudioVideo(
        vision_dim=state["modality_preprocessors.vision.cls_token"].shape[-1],
        vision_depth=depth("vision"),
        audio_dim=state["modality_preprocessors.audio.cls_token"].shape[-1],
        audio_depth=depth("audio"),
        out_dim=state["modality_heads.vision.2.weight"].shape[0],
    )
    net.load_state_dict(state)
    return net.eval()


class ImageBindScorer:
    name = "ImageBind"

    def __init__(self, weights: str):
        self.net = load_imagebind(weights)

    @torch.no_grad()
    def audio(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        return self.net.embed("audio", audio_clips(to_mono(audio, sample_rate, SAMPLE_RATE))).numpy()

    @torch.no_grad()
    def video(self, path: str) -> np.ndarray:
        return self.net.embed("vision", video_clips(path)).numpy()
