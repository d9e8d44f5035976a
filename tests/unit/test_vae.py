import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from model.config import load_config
from model.vae import (
    OobleckVAE,
    StreamingLatents,
    load_vae_from_stable_audio,
    vae_config_from_stable_audio,
)

# Key names of the stable-audio-tools Oobleck layout (models/autoencoders.py), which the loader must accept.
LAYOUT_KEYS = [
    "encoder.layers.0.weight_g",  # input WNConv1d
    "encoder.layers.1.layers.0.layers.0.alpha",  # EncoderBlock 1 > ResidualUnit(d=1) > SnakeBeta
    "encoder.layers.1.layers.0.layers.1.weight_v",  # ... > WNConv1d kernel 7
    "encoder.layers.1.layers.4.weight_g",  # EncoderBlock 1 > strided WNConv1d
    "decoder.layers.1.layers.1.weight_v",  # DecoderBlock 1 > WNConvTranspose1d
    "decoder.layers.1.layers.2.layers.3.bias",  # DecoderBlock 1 > ResidualUnit(d=1) > 1x1 conv
    "decoder.layers.7.weight_g",  # output WNConv1d (no bias)
]


def _stable_audio_model_config(cfg) -> dict:
    """A stable-audio-tools model_config.json for an Oobleck VAE."""
    enc, dec = cfg.encoder.model_dump(), cfg.decoder.model_dump()
    return {
        "model_type": "autoencoder",
        "sample_rate": cfg.sample_rate,
        "audio_channels": 2,
        "model": {
            "encoder": {"type": "oobleck", "config": enc},
            "decoder": {"type": "oobleck", "config": dec},
            "bottleneck": {"type": "vae"},
            "latent_dim": dec["latent_dim"],
            "io_channels": 2,
            "downsampling_ratio": cfg.hop,
        },
    }


def _weight_normed_reference(cfg) -> nn.Module:
    """Our module tree with torch's (old-style) weight norm on every conv: exactly how stable-audio-tools saves."""
    torch.manual_seed(0)
    ref = OobleckVAE(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for module in list(ref.modules()):
            if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
                nn.utils.weight_norm(module)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith(("weight_g", "alpha", "beta")):
                p.add_(torch.randn_like(p) * 0.3)
    return ref


def test_stable_audio_tools_checkpoint_loads_and_computes_the_same(tmp_path):
    cfg = load_config("tiny").vae
    ref = _weight_normed_reference(cfg)
    state = ref.state_dict()
    for key in LAYOUT_KEYS:
        assert key in state, key
    training_ckpt = {
        "state_dict": {
            **{f"autoencoder.{k}": v for k, v in state.items()},
            "discriminator.conv.weight": torch.randn(3, 3),
        }
    }
    torch.save(training_ckpt, tmp_path / "vae.ckpt")
    (tmp_path / "model_config.json").write_text(json.dumps(_stable_audio_model_config(cfg)))
    vae = load_vae_from_stable_audio(str(tmp_path / "model_config.json"), str(tmp_path / "vae.ckpt"))
    audio = torch.randn(1, 2, 48000) * 0.3
    with torch.no_grad():
        want_latents = ref.encoder(audio).chunk(2, dim=1)[0]
        want_audio = ref.decoder(want_latents)
    assert torch.allclose(vae.encode(audio), want_latents, atol=1e-4)
    assert torch.allclose(vae.decode(want_latents), want_audio, atol=1e-4)


def test_encode_decode_shapes_for_48k_stereo():
    vae = OobleckVAE(load_config("tiny").vae)
    audio = torch.randn(2, 2, 48000 + 100)  # a little over 1 s: padded to whole latents
    latents = vae.encode(audio)
    assert latents.shape == (2, 16, 26)
    assert vae.decode(latents).shape == (2, 2, 26 * 1920)


def test_chunked_decode_equals_one_shot_decode():
    torch.manual_seed(0)
    cfg = load_config("tiny").vae
    vae = OobleckVAE(cfg)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    latents = torch.randn(1, 16, 70)
    whole = vae.decoder(latents)
    chunked = vae.decode(latents, chunk=16)
    assert chunked.shape == whole.shape
    assert torch.allclose(chunked, whole, atol=1e-5), (chunked - whole).abs().max()
    # Too little context is visibly wrong: the overlap is needed, not decorative.
    vae.context = 1
    assert not torch.allclose(vae.decode(latents, chunk=16), whole, atol=1e-4)


def test_stable_audio_open_config_is_understood():
    sao = {
        "model_type": "autoencoder",
        "sample_rate": 44100,
        "audio_channels": 2,
        "model": {
            "encoder": {
                "type": "oobleck",
                "config": {
                    "in_channels": 2,
                    "channels": 128,
                    "c_mults": [1, 2, 4, 8, 16],
                    "strides": [2, 4, 4, 8, 8],
                    "latent_dim": 128,
                    "use_snake": True,
                },
            },
            "decoder": {
                "type": "oobleck",
                "config": {
                    "out_channels": 2,
                    "channels": 128,
                    "c_mults": [1, 2, 4, 8, 16],
                    "strides": [2, 4, 4, 8, 8],
                    "latent_dim": 64,
                    "use_snake": True,
                    "final_tanh": False,
                },
            },
            "bottleneck": {"type": "vae"},
            "latent_dim": 64,
            "downsampling_ratio": 2048,
            "io_channels": 2,
        },
    }
    cfg = vae_config_from_stable_audio(sao)
    assert (cfg.hop, cfg.sample_rate, cfg.latent_dim) == (2048, 44100, 64)
    assert cfg.decode_context >= 8


def test_unsupported_bottleneck_is_refused():
    conf = _stable_audio_model_config(load_config("tiny").vae)
    conf["model"]["bottleneck"] = {"type": "rvq"}
    with pytest.raises(ValueError, match="bottleneck"):
        vae_config_from_stable_audio(conf)


def test_latents_streamed_patch_by_patch_decode_to_the_whole_clip_bit_for_bit():
    """What the Serve path does: decode each window as soon as its latents exist, trim to the duration."""
    vae = OobleckVAE(load_config("tiny").vae)
    latents = torch.randn(1, vae.cfg.decoder.latent_dim, 100)
    samples = 100 * vae.hop - 777  # a duration that ends inside the last latent
    whole = vae.decode(latents, chunk=32)[0, :, :samples]
    stream = StreamingLatents(vae.cfg.model_copy(update={"chunk_latents": 32}), 100, samples)
    pieces, first_at = [], None
    for start in range(0, 100, 4):  # 4-latent patches
        for window, window_latents in stream.add(latents[0, :, start : start + 4].numpy()):
            first_at = first_at if first_at is not None else start + 4
            audio = vae.decode_window(torch.from_numpy(window_latents.copy())[None], window)[0].numpy()
            pieces.append(stream.emit(window, audio))
    assert stream.done and len(pieces) == 4
    assert first_at == 32 + vae.context + (-(32 + vae.context) % 4)  # the first window needs its right context
    assert torch.equal(torch.from_numpy(np.concatenate(pieces, axis=1)), whole)
