import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from model.config import load_config
from model.oobleck import OobleckVAE, load_vae_from_stable_audio, vae_config_from_stable_audio
from model.vae import StreamingLatents

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


def _sao_full_model_config(cfg) -> dict:
    """A stable-audio-tools diffusion model_config.json whose pretransform is the Oobleck VAE (Stable Audio Open's
    shape: `model.pretransform.config` holds the autoencoder config)."""
    autoencoder = _stable_audio_model_config(cfg)
    return {
        "model_type": "diffusion_cond",
        "sample_rate": cfg.sample_rate,
        "audio_channels": 2,
        "model": {
            "pretransform": {"type": "autoencoder", "iterate_batch": True, "config": autoencoder["model"]},
            "conditioning": {"configs": [], "cond_dim": 8},
            "diffusion": {"type": "dit", "config": {}},
            "io_channels": cfg.latent_dim,
        },
    }


def _decode_outputs(vae, latents):
    with torch.no_grad():
        return vae.decoder(latents), vae.decode(latents, chunk=4)


def test_soft_clip_in_a_stable_audio_config_is_honoured(tmp_path):
    """stable-audio-tools reads `model.decoder.soft_clip` and applies tanh to the decoded audio."""
    cfg = load_config("tiny").vae
    torch.save(_weight_normed_reference(cfg).state_dict(), tmp_path / "vae.ckpt")
    conf = _stable_audio_model_config(cfg)
    (tmp_path / "plain.json").write_text(json.dumps(conf))
    conf["model"]["decoder"]["soft_clip"] = True
    (tmp_path / "soft.json").write_text(json.dumps(conf))
    plain = load_vae_from_stable_audio(str(tmp_path / "plain.json"), str(tmp_path / "vae.ckpt"))
    soft = load_vae_from_stable_audio(str(tmp_path / "soft.json"), str(tmp_path / "vae.ckpt"))
    assert (plain.cfg.soft_clip, soft.cfg.soft_clip) == (False, True)
    latents = torch.randn(1, cfg.latent_dim, 12) * 3
    for want, got in zip(_decode_outputs(plain, latents), _decode_outputs(soft, latents), strict=True):
        assert want.abs().max() > 1.5  # the clip has something to do
        assert torch.allclose(got, torch.tanh(want), atol=1e-6)
        assert got.abs().max() < 1
    # Our config.json carries it: a checkpoint reloads with the same decoder.
    again = OobleckVAE(type(cfg).model_validate_json(soft.cfg.model_dump_json()))
    assert again.cfg.soft_clip and again.decoder.soft_clip
    assert not OobleckVAE(cfg).decoder.soft_clip  # old configs (no field) stay unclipped


def test_stable_audio_decoder_flags_follow_their_defaults_and_bad_values_are_refused():
    conf = _stable_audio_model_config(load_config("tiny").vae)
    del conf["model"]["decoder"]["config"]["final_tanh"]  # stable-audio-tools' OobleckDecoder defaults it to True
    assert vae_config_from_stable_audio(conf).decoder.final_tanh is True
    for bad in ("false", 1):
        conf["model"]["decoder"]["soft_clip"] = bad
        with pytest.raises(ValueError, match="soft_clip"):
            vae_config_from_stable_audio(conf)


def test_full_model_file_loads_its_pretransform_autoencoder(tmp_path):
    """Stable Audio Open ships one model.safetensors: `pretransform.model.*` beside diffusion and conditioner keys."""
    from model.weights import write_safetensors

    cfg = load_config("tiny").vae
    state = {k: v.contiguous() for k, v in _weight_normed_reference(cfg).state_dict().items()}
    write_safetensors(str(tmp_path / "vae.safetensors"), state)
    full = {f"pretransform.model.{k}": v for k, v in state.items()}
    full |= {"model.model.x": torch.randn(4, 4), "conditioner.y": torch.randn(3)}
    write_safetensors(str(tmp_path / "model.safetensors"), full)
    (tmp_path / "vae.json").write_text(json.dumps(_stable_audio_model_config(cfg)))
    (tmp_path / "model_config.json").write_text(json.dumps(_sao_full_model_config(cfg)))

    plain = load_vae_from_stable_audio(str(tmp_path / "vae.json"), str(tmp_path / "vae.safetensors"))
    whole = load_vae_from_stable_audio(str(tmp_path / "model_config.json"), str(tmp_path / "model.safetensors"))
    assert whole.cfg.model_dump(exclude={"checkpoint"}) == plain.cfg.model_dump(exclude={"checkpoint"})
    latents = torch.randn(1, cfg.latent_dim, 12)
    for want, got in zip(_decode_outputs(plain, latents), _decode_outputs(whole, latents), strict=True):
        assert torch.equal(got, want)

    write_safetensors(str(tmp_path / "other.safetensors"), {"model.model.x": torch.randn(4, 4)})
    with pytest.raises(ValueError, match="pretransform.model."):
        load_vae_from_stable_audio(str(tmp_path / "vae.json"), str(tmp_path / "other.safetensors"))


def test_a_compiled_decoder_writes_what_the_eager_one_writes():
    torch.manual_seed(0)
    vae = OobleckVAE(load_config("tiny").vae)
    latents = torch.randn(1, 16, 70)
    eager = vae.decode(latents, chunk=32)  # windows of 44, 50 and 18 latents: three lengths, one graph
    vae.set_decode("float32", compiled=True)
    compiled = vae.decode(latents, chunk=32)
    assert float((compiled - eager).abs().max() / eager.abs().max()) < 1e-5


def test_a_bf16_decoder_writes_the_fp32_audio_within_5_percent_and_auto_follows_the_hardware():
    from model.build import build_bundle
    from model.engine import Engine, GenerationParams
    from model.errors import InputError
    from model.specvae import SpectralVAE
    from model.vae import native_bf16

    torch.manual_seed(0)
    cfg = load_config("tiny")
    bundle = build_bundle(cfg)
    vae = bundle.vae
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # away from the init's near-identity snakes
    audio = torch.randn(1, 2, 48000)
    latents = vae.encode(audio)
    fp32 = vae.decode(latents)
    assert vae.set_decode("bfloat16") == torch.bfloat16
    bf16 = vae.decode(latents)
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    error = float((bf16 - fp32).norm() / fp32.norm())
    # it did run in bf16, and lands within 5 % (this narrow decoder: 3-4 %; the paper preset's: 0.5 %)
    assert 0 < error < 0.05, error
    assert torch.equal(vae.encode(audio), latents)  # the encoder stays fp32
    vae.set_decode("float32")
    assert torch.equal(vae.decode(latents), fp32)  # the fp32 weights were never rounded
    state = {k: v * 1.01 if k.endswith("weight") else v for k, v in vae.state_dict().items()}
    vae.load_state_dict(state)
    changed = vae.decode(latents)
    vae.set_decode("bfloat16")  # the cast copy is made again from the weights loaded since
    assert float((vae.decode(latents) - changed).norm() / changed.norm()) < 0.05
    assert float((vae.decode(latents) - bf16).norm() / bf16.norm()) > 0.01
    # the engine's streamed decode goes through the same decoder: a whole clip, bf16 against fp32
    engine = Engine(bundle, decode_dtype="float32")
    request = engine.make_request(prompt="a drone", params=GenerationParams(seed=3, duration_s=1.0))
    (want,) = engine.generate([request])
    engine = Engine(bundle, decode_dtype="bfloat16")
    (got,) = engine.generate([request])
    assert torch.equal(got.latents, want.latents)
    assert 0 < np.linalg.norm(got.audio - want.audio) / np.linalg.norm(want.audio) < 0.05
    # "auto": bf16 for the Oobleck decoder exactly where the CPU computes bf16 natively; never for the spectral one
    assert vae.set_decode("auto") == (torch.bfloat16 if native_bf16("cpu") else torch.float32)
    spectral = SpectralVAE(load_config("small").vae)
    assert spectral.set_decode("auto") == torch.float32
    with pytest.raises(InputError, match="float16"):
        vae.set_decode("float16")
