"""Audio VAEs: the surface every family shares, windowed decoding, and building/loading a VAE by family.

Two families, chosen by `vae.family` in config.json: `oobleck` (stable-audio-tools: SongBloom's and Stable
Audio Open's VAEs, loaded from their checkpoints; model/oobleck.py) and `spectral` (our compact VAE trained
by `videorobin train-vae`; model/specvae.py).

Decoders need not be causal (Oobleck's pads symmetrically), so long latents are decoded in windows that
carry the decoder's receptive field as context on both sides; the result equals a one-shot decode.

The decoder network may run in bf16 where the hardware computes it natively, and through torch.compile
(`set_decode`): measured on a 2-core AVX-512-BF16 CPU, the `paper` preset's Oobleck decode runs 2.2x
faster in bf16 than in fp32 (README, Fast generation). Encoding always stays fp32.
"""

from __future__ import annotations

import abc
import copy
import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from model.config import DECODE_DTYPES, SpectralVAEConfig, VAEConfig
from model.errors import InputError
from model.weights import read_safetensors


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
        length), with the decoder's weights as they are now (a cast copy made earlier is dropped, so weights
        loaded since are used). Returns the dtype chosen ("auto" resolved on the device the VAE is on)."""
        if dtype not in DECODE_DTYPES:
            raise InputError(f"decode dtype {dtype!r} is not one of {', '.join(DECODE_DTYPES)}")
        if dtype == "auto":
            native = self.bf16_pays and native_bf16(next(self.parameters()).device)
            dtype = "bfloat16" if native else "float32"
        self.decode_dtype, self.decode_compiled = getattr(torch, dtype), compiled
        self._runner = None
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


def build_vae(cfg: VAEConfig) -> AudioAutoencoder:
    """An untrained VAE of the config's family."""
    if isinstance(cfg, SpectralVAEConfig):
        from model.specvae import SpectralVAE  # each family imports this module: resolved at call time

        return SpectralVAE(cfg)
    from model.oobleck import OobleckVAE

    return OobleckVAE(cfg)


def load_vae(cfg: VAEConfig) -> AudioAutoencoder:
    """Build the VAE and, when the config names a checkpoint, load it strictly (stable-audio-tools layout for
    Oobleck, our own safetensors layout for the spectral family)."""
    vae = build_vae(cfg)
    if cfg.checkpoint is not None:
        if isinstance(cfg, SpectralVAEConfig):
            state = {k: v.float() for k, v in read_safetensors(cfg.checkpoint).items()}
        else:
            from model.oobleck import read_stable_audio_state_dict

            state = read_stable_audio_state_dict(cfg.checkpoint)
        vae.load_state_dict(state, strict=True)
    return vae
