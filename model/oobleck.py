"""The Oobleck VAE (stable-audio-tools: SongBloom's 48 kHz / hop 1920 VAE and Stable Audio Open's) and loading
their checkpoints.

The module tree mirrors the stable-audio-tools layout (`encoder.layers.*`, `decoder.layers.*`, with the same
Sequential indices) so their checkpoints load by key. Those checkpoints are weight-normed
(`weight_g`/`weight_v`); the VAE is frozen everywhere in this project, so the loader folds each pair into
a plain weight once instead of renormalising on every call. The decoder is not causal (symmetric padding):
model/vae.py decodes it in windows with context.
"""

from __future__ import annotations

import json
import math

import torch
from torch import nn

from model.config import (
    OOBLECK_DILATIONS,
    OobleckDecoderConfig,
    OobleckEncoderConfig,
    OobleckVAEConfig,
)
from model.errors import InputError
from model.io import open_uri
from model.vae import AudioAutoencoder, load_vae
from model.weights import read_safetensors, read_torch_checkpoint


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


def load_vae_from_stable_audio(config_uri: str, checkpoint_uri: str) -> OobleckVAE:
    with open_uri(config_uri, "rt") as f:
        return load_vae(vae_config_from_stable_audio(json.load(f), checkpoint_uri))
