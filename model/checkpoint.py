"""The Video-Robin checkpoint format: a directory at a local path or any fsspec URI.

    config.json         the resolved VideoRobinConfig (its `version` is the format version)
    model.safetensors   every VideoRobin tensor, frozen CLIP included, so the package is self-contained
    vae.safetensors     the audio VAE (weight norm folded), in our key layout
    latent_stats.json   {"mean": [D floats], "std": [D floats]}: the latent standardisation
    tokenizer/          the prompt tokenizer's files, when a transformers tokenizer is used

Each file is written under a temporary name and moved into place; `config.json` goes last, so a
directory without it is an unfinished save and does not load.

An encoders directory (written by `videorobin prepare` beside its shards) holds only the frozen parts the
latents and features were made with: config.json, vae.safetensors, clip.safetensors (with vision) and
tokenizer/. Training exports take their VAE, CLIP and tokenizer from it, so they match the data.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from importlib import resources

import fsspec
import torch
from safetensors import safe_open

from model.build import Bundle
from model.config import DecodeDtype, VideoRobinConfig
from model.errors import InputError
from model.io import local_copy, read_bytes, uri_exists, uri_join, write_bytes_atomic
from model.text import HFTokenizer, Tokenizer, load_tokenizer
from model.vae import AudioAutoencoder, build_vae
from model.videorobin import VideoRobin
from model.vision import ClipEncoder
from model.weights import read_safetensors, write_safetensors

TOKENIZER_DIR = "tokenizer"
DEFAULT_DIR = "default"  # the shipped default model, a checkpoint directory inside the `model` package


def _is_relative(path: str) -> bool:
    return "://" not in path and not os.path.isabs(path)


def _cast(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    if dtype is None:
        return state
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def _save_frozen(
    uri: str, cfg: VideoRobinConfig, vae: AudioAutoencoder, tokenizer: Tokenizer, dtype: torch.dtype | None = None
) -> VideoRobinConfig:
    """Write the VAE and tokenizer files; return `cfg` pointing at this directory instead of the sources."""
    vision = cfg.vision.model_copy(update={"clip_checkpoint": None}) if cfg.vision is not None else None
    text = cfg.text
    if isinstance(tokenizer, HFTokenizer):
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.inner.save_pretrained(tmp)
            for name in sorted(os.listdir(tmp)):
                with open(os.path.join(tmp, name), "rb") as f:
                    write_bytes_atomic(uri_join(uri_join(uri, TOKENIZER_DIR), name), f.read())
        text = text.model_copy(update={"tokenizer": TOKENIZER_DIR})
    write_safetensors(uri_join(uri, "vae.safetensors"), _cast(vae.state_dict(), dtype))
    return cfg.model_copy(
        update={"vision": vision, "text": text, "vae": cfg.vae.model_copy(update={"checkpoint": None})}
    )


def save_bundle(bundle: Bundle, uri: str, dtype: torch.dtype | None = None) -> None:
    """Write `bundle` as a checkpoint directory at `uri` (weights cast to `dtype` when given, e.g. fp16 to ship;
    loading casts them back to the model's dtype)."""
    saved = _save_frozen(uri, bundle.config, bundle.vae, bundle.tokenizer, dtype)
    write_safetensors(uri_join(uri, "model.safetensors"), _cast(bundle.model.state_dict(), dtype))
    stats = {"mean": bundle.model.latent_mean.tolist(), "std": bundle.model.latent_std.tolist()}
    write_bytes_atomic(uri_join(uri, "latent_stats.json"), json.dumps(stats).encode())
    write_bytes_atomic(uri_join(uri, "config.json"), saved.to_json().encode())


def save_encoders(
    uri: str, cfg: VideoRobinConfig, vae: AudioAutoencoder, clip: ClipEncoder | None, tokenizer: Tokenizer
) -> VideoRobinConfig:
    """Write an encoders directory (see the module docstring); returns the config it saved."""
    saved = _save_frozen(uri, cfg, vae, tokenizer)
    if clip is not None:
        write_safetensors(uri_join(uri, "clip.safetensors"), clip.state_dict())
    write_bytes_atomic(uri_join(uri, "config.json"), saved.to_json().encode())
    return saved


def default_checkpoint() -> str | None:
    """The default model shipped inside the package (`model/default/`), or None when this install has none."""
    path = resources.files("model").joinpath(DEFAULT_DIR)
    return str(path) if path.joinpath("config.json").is_file() else None


def read_config(uri: str) -> VideoRobinConfig:
    config_uri = uri_join(uri, "config.json")
    if not uri_exists(config_uri):
        raise FileNotFoundError(f"{uri}: not a Video-Robin checkpoint (no config.json)")
    return VideoRobinConfig.from_json(read_bytes(config_uri).decode())


def load_bundle(uri: str, device: torch.device | str = "cpu") -> Bundle:
    """Load a checkpoint directory written by `save_bundle` (strictly: every tensor must match)."""
    cfg = read_config(uri)
    model = VideoRobin(cfg)
    _load_strict(model, read_safetensors(uri_join(uri, "model.safetensors")), uri)
    stats = json.loads(read_bytes(uri_join(uri, "latent_stats.json")))
    set_latent_stats(model, torch.tensor(stats["mean"]), torch.tensor(stats["std"]))
    vae = build_vae(cfg.vae)
    _load_strict(vae, read_safetensors(uri_join(uri, "vae.safetensors")), uri)
    return Bundle(cfg, model, vae, load_bundle_tokenizer(uri, cfg)).to(device)


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], uri: str) -> None:
    """Every tensor, or an InputError: a checkpoint whose weights do not fit its own config.json (edited, mixed
    up, or half-copied) is the user's to fix, not a bug."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split("\n", 2)[1:2]).strip()  # torch's first line of missing/unexpected keys
        raise InputError(
            f"{uri}: the {type(module).__name__} weights do not fit its config.json ({detail[:300]})"
        ) from err


def load_bundle_tokenizer(uri: str, cfg: VideoRobinConfig | None = None) -> Tokenizer:
    """The prompt tokenizer a checkpoint was saved with (its files travel in `tokenizer/`)."""
    cfg = cfg or read_config(uri)
    text = cfg.text
    if text.tokenizer is not None and _is_relative(text.tokenizer):
        text = text.model_copy(update={"tokenizer": uri_join(uri, text.tokenizer)})
    return load_tokenizer(text, cfg.semantic_lm.vocab_size)


def load_clip(uri: str, device: torch.device | str = "cpu") -> ClipEncoder:
    """Only the frozen CLIP tower of a checkpoint or an encoders directory (for frame-encoding workers)."""
    cfg = read_config(uri)
    if cfg.vision is None:
        raise InputError(f"{uri}: this checkpoint has no vision (stage 1)")
    encoder = ClipEncoder(cfg.vision)
    if uri_exists(uri_join(uri, "clip.safetensors")):
        encoder.load_state_dict(read_safetensors(uri_join(uri, "clip.safetensors")), strict=True)
        return encoder.to(device)
    with local_copy(uri_join(uri, "model.safetensors"), suffix=".safetensors") as path, safe_open(path, "pt") as f:
        state = {k.removeprefix("clip."): f.get_tensor(k) for k in f.keys() if k.startswith("clip.")}
    encoder.load_state_dict(state, strict=True)
    return encoder.to(device)


def load_vae_from_checkpoint(
    uri: str, device: torch.device | str = "cpu", decode_dtype: DecodeDtype = "auto", compiled: bool = False
) -> AudioAutoencoder:
    """Only the audio VAE of a checkpoint (for decoding workers), decoding as `set_decode` says (model/vae.py)."""
    vae = build_vae(read_config(uri).vae)
    vae.load_state_dict(read_safetensors(uri_join(uri, "vae.safetensors")), strict=True)
    vae.to(device).set_decode(decode_dtype, compiled)
    return vae


def set_latent_stats(model: VideoRobin, mean: torch.Tensor, std: torch.Tensor) -> None:
    D = model.cfg.latent_dim
    if mean.shape != (D,) or std.shape != (D,):
        raise InputError(f"latent stats must have shape ({D},)")
    if bool((std <= 0).any()):
        raise InputError("latent std must be positive")
    model.latent_mean.copy_(mean)
    model.latent_std.copy_(std)


def checkpoint_id(uri: str) -> str:
    """A short content hash of a checkpoint's weights, for provenance in job outputs."""
    digest = hashlib.sha256()
    with fsspec.open(uri_join(uri, "model.safetensors"), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]
