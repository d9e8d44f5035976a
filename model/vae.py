"""Audio VAEs: the surface every family shares, windowed decoding, and the Oobleck family.

Two families, chosen by `vae.family` in config.json: `oobleck` (stable-audio-tools: SongBloom's and Stable
Audio Open's VAEs, loaded from their checkpoints; this file) and `spectral` (our compact VAE trained by
`videorobin train-vae`; model/specvae.py).

The Oobleck module tree mirrors the stable-audio-tools layout (`encoder.layers.*`, `decoder.layers.*`, with the
same Sequential indices) so their checkpoints load by key. Those checkpoints are weight-normed
(`weight_g`/`weight_v`); the VAE is frozen everywhere in this project, so the loader folds each pair into
a plain weight once instead of renormalising on every call.

The decoder is not causal (symmetric padding), so long latents are decoded in windows that carry the
decoder's receptive field as context on both sides; the result equals a one-shot decode.

The decoder network may run in bf16 where the hardware computes it natively, and through torch.compile
(`set_decode`): measured on a 2-core AVX-512-BF16 CPU, the `paper` preset's Oobleck decode runs 2.0x
faster in bf16 than in fp32 (README, Fast generation). Encoding always stays fp32.
"""

from __future__ import annotations

import abc
import copy
import json
import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from model.config import (
    DECODE_DTYPES,
    OOBLECK_DILATIONS,
    OobleckDecoderConfig,
    OobleckEncoderConfig,
    OobleckVAEConfig,
    SpectralVAEConfig,
    VAEConfig,
)
from model.errors import InputError
from model.io import open_uri
from model.weights import read_safetensors, read_torch_checkpoint


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` has bf16 arithmetic in hardware (a CUDA GPU from Ampere on; a CPU with AVX-512-BF16 or
    AMX). Elsewhere bf16 is emulated and slower than fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(probe is not None and probe() for probe in probes)


class SnakeBeta(nn.Module):
    """x + 1/beta * sin^2(alpha x), with log-scale per-channel alpha and beta."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha.exp()[None, :, None]
        inv_beta = 1.0 / (self.beta.exp()[None, :, None] + 1e-9)
        # in place and fused: at 48 kHz these activations are memory-bound (1.5x faster than out-of-place)
        return torch.addcmul(x, (x * alpha).sin_().square_(), inv_beta)


def _activation(use_snake: bool, channels: int) -> nn.Module:
    return SnakeBeta(channels) if use_snake else nn.ELU()


class ResidualUnit(nn.Module):
    def __init__(self, channels: int, dilation: int, use_snake: bool) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            _activation(use_snake, channels),
            nn.Conv1d(channels, channels, kernel_size=7, dilation=dilation, padding=3 * dilation),
            _activation(use_snake, channels),
            nn.Conv1d(channels, channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class _Blocks(nn.Module):
    """A module whose work is its `layers` Sequential (the stable-audio-tools key layout)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class EncoderBlock(_Blocks):
    def __init__(self, c_in: int, c_out: int, stride: int, use_snake: bool) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *(ResidualUnit(c_in, d, use_snake) for d in OOBLECK_DILATIONS),
            _activation(use_snake, c_in),
            nn.Conv1d(c_in, c_out, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )


class DecoderBlock(_Blocks):
    def __init__(self, c_in: int, c_out: int, stride: int, use_snake: bool) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            _activation(use_snake, c_in),
            nn.ConvTranspose1d(c_in, c_out, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)),
            *(ResidualUnit(c_out, d, use_snake) for d in OOBLECK_DILATIONS),
        )


class OobleckEncoder(_Blocks):
    def __init__(self, cfg: OobleckEncoderConfig) -> None:
        super().__init__()
        widths = [cfg.channels] + [m * cfg.channels for m in cfg.c_mults]
        layers = [nn.Conv1d(cfg.in_channels, widths[0], kernel_size=7, padding=3)]
        layers += [EncoderBlock(widths[i], widths[i + 1], s, cfg.use_snake) for i, s in enumerate(cfg.strides)]
        layers += [_activation(cfg.use_snake, widths[-1]), nn.Conv1d(widths[-1], cfg.latent_dim, 3, padding=1)]
        self.layers = nn.Sequential(*layers)


class OobleckDecoder(_Blocks):
    """stable-audio-tools' OobleckDecoder; `soft_clip` adds their AudioAutoencoder's tanh on the decoded audio
    (applied after the decoder's own `final_tanh`, so both on means tanh twice, as there)."""

    def __init__(self, cfg: OobleckDecoderConfig, soft_clip: bool = False) -> None:
        super().__init__()
        self.soft_clip = soft_clip
        widths = [cfg.channels] + [m * cfg.channels for m in cfg.c_mults]
        layers = [nn.Conv1d(cfg.latent_dim, widths[-1], kernel_size=7, padding=3)]
        for i in range(len(cfg.strides), 0, -1):
            layers.append(DecoderBlock(widths[i], widths[i - 1], cfg.strides[i - 1], cfg.use_snake))
        layers += [
            _activation(cfg.use_snake, widths[0]),
            nn.Conv1d(widths[0], cfg.out_channels, kernel_size=7, padding=3, bias=False),
            nn.Tanh() if cfg.final_tanh else nn.Identity(),
        ]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(x)
        return torch.tanh(x) if self.soft_clip else x


class AudioAutoencoder(nn.Module, abc.ABC):
    """The surface every VAE family shares: (B, C, S) audio <-> (B, D, L) latents, frozen, decoded in windows.

    A family implements `encode` (the posterior mean) and `decode_all` (one window of latents -> its audio);
    `decode` cuts long latents into windows that carry `cfg.decode_context` latents of context on each side,
    so the decoders need not be causal and a streamed decode equals the whole-clip one. A family whose
    window output is not a pure function of its latents (Griffin-Lim phases) also overlaps neighbouring
    windows by `cfg.decode_crossfade` latents and fades one into the other.
    """

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.hop, self.sample_rate, self.context = cfg.hop, cfg.sample_rate, cfg.decode_context
        self.decode_dtype, self.decode_compiled = torch.float32, False
        self._runner: tuple[tuple, nn.Module] | None = None  # the decoder as decoding runs it, and for what

    # whether "auto" decodes in bf16 on hardware that has it: only where it pays and the audio barely moves
    bf16_pays = False

    def set_decode(self, dtype: str = "auto", compiled: bool = False) -> torch.dtype:
        """How `decode` runs the decoder network from now on: in DECODE_DTYPES `dtype` (its input cast to it,
        its output back to fp32) and, when `compiled`, through torch.compile (one graph for every window
        length). Returns the dtype chosen ("auto" resolved on the device the VAE is on)."""
        if dtype not in DECODE_DTYPES:
            raise InputError(f"decode dtype {dtype!r} is not one of {', '.join(DECODE_DTYPES)}")
        if dtype == "auto":
            native = self.bf16_pays and native_bf16(next(self.parameters()).device)
            dtype = "bfloat16" if native else "float32"
        self.decode_dtype, self.decode_compiled = getattr(torch, dtype), compiled
        return self.decode_dtype

    def run_decoder(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, D, L) latents -> the decoder network's fp32 output, run as `set_decode` asked. A cast copy is
        kept outside the module tree, so `self.decoder` (what is saved, trained and loaded) stays fp32 and
        switching dtypes back and forth loses nothing; it is made again if the VAE moves device."""
        if self.decode_dtype == torch.float32 and not self.decode_compiled:
            return self.decoder(latents)
        key = (self.decode_dtype, self.decode_compiled, latents.device)
        if self._runner is None or self._runner[0] != key:
            runner = self.decoder
            if self.decode_dtype != torch.float32:
                runner = copy.deepcopy(self.decoder).to(latents.device, self.decode_dtype)
            self._runner = (key, torch.compile(runner, dynamic=True) if self.decode_compiled else runner)
        return self._runner[1](latents.to(self.decode_dtype)).float()

    def freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    @abc.abstractmethod
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, C, S) audio -> (B, D, ceil(S / hop)) posterior mean."""

    @abc.abstractmethod
    def decode_all(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, D, L) latents -> (B, C, L * hop) audio, in one pass."""

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """(B, D, L) -> (B, C, L * hop), window by window (see `decode_windows`)."""
        B, _, L = latents.shape
        out = latents.new_zeros(B, self.cfg.audio_channels, L * self.hop)
        for w in decode_windows(L, chunk or self.cfg.chunk_latents, self.context, self.cfg.decode_crossfade):
            audio = self.decode_window(latents[..., w.lo : w.hi], w)
            out[..., w.start * self.hop : w.start * self.hop + audio.shape[-1]] += audio
        return out

    @torch.no_grad()
    def decode_window(self, latents: torch.Tensor, window: DecodeWindow) -> torch.Tensor:
        """(B, D, hi - lo) latents of `window` -> (B, C, (end + fade_out - start) * hop): the window's kept audio,
        its first `fade_in` latents faded in and its last `fade_out` faded out (the two fades sum to 1)."""
        audio = self.decode_all(latents)
        audio = audio[
            ..., (window.start - window.lo) * self.hop : (window.end + window.fade_out - window.lo) * self.hop
        ]
        if window.fade_in:
            n = window.fade_in * self.hop
            audio = torch.cat([audio[..., :n] * fade_in_ramp(n, audio), audio[..., n:]], dim=-1)
        if window.fade_out:
            n = window.fade_out * self.hop
            audio = torch.cat([audio[..., :-n], audio[..., -n:] * (1 - fade_in_ramp(n, audio))], dim=-1)
        return audio


def fade_in_ramp(n: int, like: torch.Tensor) -> torch.Tensor:
    """(n,) raised-cosine ramp from 0 to 1; with its complement it sums to exactly 1 at every sample."""
    t = (torch.arange(n, device=like.device, dtype=torch.float64) + 0.5) / n
    return torch.sin(0.5 * math.pi * t).pow(2).to(like.dtype)


class OobleckVAE(AudioAutoencoder):
    """Frozen Oobleck VAE. encode: (B, C, S) audio -> (B, D, L) posterior mean; decode: the inverse."""

    # its convolutions at 48 kHz are the whole decode: bf16 halves it, 0.7 % relative error (random weights)
    bf16_pays = True

    def __init__(self, cfg: OobleckVAEConfig) -> None:
        super().__init__(cfg)
        if any(s % 2 for s in cfg.encoder.strides):
            raise InputError("odd strides would make decoded lengths differ from latents x hop")
        self.encoder = OobleckEncoder(cfg.encoder)
        self.decoder = OobleckDecoder(cfg.decoder, soft_clip=cfg.soft_clip)
        self.freeze()

    @torch.no_grad()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, C, S) -> (B, D, ceil(S / hop)). Returns the posterior mean (the bottleneck's first half)."""
        pad = -audio.shape[-1] % self.hop
        audio = nn.functional.pad(audio, (0, pad))
        mean, _scale = self.encoder(audio).chunk(2, dim=1)
        return mean

    def decode_all(self, latents: torch.Tensor) -> torch.Tensor:
        return self.run_decoder(latents)


@dataclass(frozen=True)
class DecodeWindow:
    """Decode latents [lo, hi) and keep the audio of [start, end + fade_out): the context either side makes the
    kept audio independent of the cut. The first `fade_in` latents overlap the previous window's fade-out."""

    lo: int
    start: int
    end: int
    hi: int
    fade_in: int = 0
    fade_out: int = 0


def decode_windows(length: int, chunk: int, context: int, fade: int = 0) -> list[DecodeWindow]:
    """The windows `AudioAutoencoder.decode` cuts `length` latents into. A streaming decoder that decodes each
    one as soon as latents up to its `hi` exist (`StreamingLatents`) produces the same samples as the
    whole-clip decode."""
    if length <= chunk:
        return [DecodeWindow(0, 0, length, length)]
    fade = min(fade, chunk)
    windows = []
    for start in range(0, length, chunk):
        end = min(start + chunk, length)
        fade_out = min(fade, length - end)
        fade_in = min(fade, end - start) if start > 0 else 0
        windows.append(
            DecodeWindow(max(0, start - context), start, end, min(length, end + fade_out + context), fade_in, fade_out)
        )
    return windows


class StreamingLatents:
    """One clip's latents arriving patch by patch: hands out each decode window as soon as its latents exist,
    and turns each decoded window into the clip's next audio (adding the previous window's fade-out, keeping
    this one's, dropping the first `skip` samples, cutting where the clip's duration ends). Decoding every
    window it hands out, in order, and emitting it gives exactly `AudioAutoencoder.decode` of the whole clip.
    Only the latents the pending windows still need are held, so memory does not grow with the clip."""

    def __init__(self, vae: VAEConfig, total: int, samples: int, skip: int = 0) -> None:
        self.buffer = np.zeros((vae.latent_dim, 0), np.float32)
        self.base = 0  # clip latent index of buffer[:, 0]
        self.hop = vae.hop
        self.have, self.samples_left, self.skip = 0, samples, skip
        self.windows = deque(decode_windows(total, vae.chunk_latents, vae.decode_context, vae.decode_crossfade))
        self.tail: np.ndarray | None = None

    def add(self, patch: np.ndarray) -> list[tuple[DecodeWindow, np.ndarray]]:
        """Append (D, P) latents; returns the windows now complete with their (D, hi - lo) latents."""
        self.buffer = np.concatenate([self.buffer, patch.astype(np.float32, copy=False)], axis=1)
        self.have += patch.shape[1]
        ready = []
        while self.windows and self.windows[0].hi <= self.have:
            window = self.windows.popleft()
            ready.append((window, self.buffer[:, window.lo - self.base : window.hi - self.base]))
        if self.windows:  # forget what no pending window reads
            drop = max(0, self.windows[0].lo - self.base)
            self.buffer, self.base = self.buffer[:, drop:], self.base + drop
        return ready

    @property
    def done(self) -> bool:
        return not self.windows

    def emit(self, window: DecodeWindow, audio: np.ndarray) -> np.ndarray:
        """A decoded window's (C, S) audio -> the clip's next (C, S') audio, in window order."""
        if self.tail is not None:
            audio = audio.copy()
            audio[:, : self.tail.shape[1]] += self.tail
        kept = (window.end - window.start) * self.hop
        self.tail = audio[:, kept:] if window.fade_out else None
        audio = audio[:, :kept]
        if self.skip:
            cut, self.skip = min(self.skip, kept), self.skip - min(self.skip, kept)
            audio = audio[:, cut:]
        audio = audio[:, : self.samples_left]
        self.samples_left -= audio.shape[1]
        return audio


@torch.no_grad()
def decode_window_array(vae: AudioAutoencoder, latents: np.ndarray, window: DecodeWindow) -> np.ndarray:
    """(D, hi - lo) latents of `window` -> (C, (end - start + fade_out) * hop) float32 audio, for streaming."""
    x = torch.from_numpy(np.ascontiguousarray(latents))[None].to(next(vae.parameters()).device)
    return vae.decode_window(x, window)[0].float().cpu().numpy()


def _fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace each weight-norm pair (g, v) by the weight g * v / ||v|| (norm over all dims but 0)."""
    out: dict[str, torch.Tensor] = {}
    pairs = {"weight_g": "weight_v", "parametrizations.weight.original0": "parametrizations.weight.original1"}
    for key, tensor in state.items():
        for g_name, v_name in pairs.items():
            if key.endswith(v_name):
                break
            if key.endswith(g_name):
                base = key[: -len(g_name)]
                v = state[base + v_name].float()
                norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
                out[base + "weight"] = tensor.float() * v / norm
                break
        else:
            out[key] = tensor
    return out


# Where stable-audio-tools files keep the autoencoder: a training checkpoint's wrapper (`autoencoder.`) and a
# full diffusion model's pretransform (`pretransform.model.`, how Stable Audio Open ships model.safetensors).
_AUTOENCODER_PREFIXES = ("autoencoder.", "pretransform.model.")


def read_stable_audio_state_dict(uri: str) -> dict[str, torch.Tensor]:
    """The autoencoder tensors of a stable-audio-tools checkpoint (.ckpt/.pt or .safetensors).

    Accepts a bare autoencoder state dict (`encoder.*`, `decoder.*`), a training checkpoint ({"state_dict": ...}
    whose autoencoder keys start with "autoencoder."; discriminator/EMA tensors are left out) or a full model
    whose autoencoder is its pretransform (keys "pretransform.model.*"; the diffusion and conditioner tensors
    are left out). Anything else is refused.
    """
    if uri.endswith(".safetensors"):
        state = read_safetensors(uri)
    else:
        state = read_torch_checkpoint(uri)
        state = state.get("state_dict", state)
    for prefix in _AUTOENCODER_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            break
    state = {k: v for k, v in state.items() if k.startswith(("encoder.", "decoder."))}
    if not state:
        raise InputError(
            f"{uri}: no Oobleck autoencoder tensors found; expected keys `encoder.*`/`decoder.*`, optionally under "
            f"one of {', '.join(repr(p) for p in _AUTOENCODER_PREFIXES)}"
        )
    return _fold_weight_norm(state)


def vae_config_from_stable_audio(model_config: dict, checkpoint: str | None = None) -> OobleckVAEConfig:
    """Our VAEConfig from a stable-audio-tools `model_config.json`: an Oobleck autoencoder with a VAE bottleneck,
    or a full model (Stable Audio Open's) whose `pretransform` is one.

    Follows their factories: the decoder's `final_tanh` defaults to True when the config leaves it out, and
    `model.decoder.soft_clip` (beside the decoder's `type` and `config`) turns on the autoencoder's soft clip.
    """
    model = model_config["model"]
    if model_config.get("model_type", "autoencoder") != "autoencoder" or "encoder" not in model:
        pretransform = model.get("pretransform")
        if pretransform is None:
            raise InputError("the model config has neither an autoencoder nor a pretransform")
        if pretransform.get("type") != "autoencoder":
            raise InputError(f"pretransform type {pretransform.get('type')!r} is not supported (autoencoder only)")
        if pretransform.get("scale", 1.0) != 1.0:
            raise InputError(f"pretransform scale {pretransform['scale']!r} is not supported (1.0 only)")
        model = pretransform["config"]
    for part in ("encoder", "decoder"):
        if model[part]["type"] != "oobleck":
            raise InputError(f"{part} type {model[part]['type']!r} is not supported (oobleck only)")
    if model.get("bottleneck", {}).get("type") != "vae":
        raise InputError("only the 'vae' bottleneck is supported")
    if model.get("pretransform") is not None:
        raise InputError("an autoencoder with its own pretransform is not supported")
    return OobleckVAEConfig(
        sample_rate=model_config["sample_rate"],
        encoder=OobleckEncoderConfig(**model["encoder"]["config"]),
        decoder=OobleckDecoderConfig(**{"final_tanh": True, **model["decoder"]["config"]}),
        soft_clip=model["decoder"].get("soft_clip", False),  # a strict bool: "false" or 0 is refused, not guessed
        checkpoint=checkpoint,
    )


def build_vae(cfg: VAEConfig) -> AudioAutoencoder:
    """An untrained VAE of the config's family."""
    if isinstance(cfg, SpectralVAEConfig):
        from model.specvae import SpectralVAE  # imports this module: resolved at call time

        return SpectralVAE(cfg)
    return OobleckVAE(cfg)


def load_vae(cfg: VAEConfig) -> AudioAutoencoder:
    """Build the VAE and, when the config names a checkpoint, load it strictly (stable-audio-tools layout for
    Oobleck, our own safetensors layout for the spectral family)."""
    vae = build_vae(cfg)
    if cfg.checkpoint is not None:
        if isinstance(cfg, SpectralVAEConfig):
            state = {k: v.float() for k, v in read_safetensors(cfg.checkpoint).items()}
        else:
            state = read_stable_audio_state_dict(cfg.checkpoint)
        vae.load_state_dict(state, strict=True)
    return vae


def load_vae_from_stable_audio(config_uri: str, checkpoint_uri: str) -> OobleckVAE:
    with open_uri(config_uri, "rt") as f:
        return load_vae(vae_config_from_stable_audio(json.load(f), checkpoint_uri))
