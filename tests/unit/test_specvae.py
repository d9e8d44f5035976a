"""The spectral VAE family: shapes, windowed and streamed decoding, pitch through phase recovery, its loss."""

import json

import numpy as np
import pytest
import torch

from jobs.evaluation.music import estimate_key, parse_key
from model.config import OobleckVAEConfig, SpectralVAEConfig, load_config
from model.specvae import SpectralVAE, log_frequency_filterbank
from model.specvae_loss import SpectralVAELoss
from model.vae import StreamingLatents, build_vae

RATE = 48000
SMALL = SpectralVAEConfig(width=64, encoder_frame_blocks=1, encoder_latent_blocks=1, decoder_latent_blocks=1,
                          decoder_frame_blocks=2, chunk_latents=32)  # fmt: skip


def _tones(freqs: list[float], seconds: float, harmonics: int = 4) -> np.ndarray:
    """(2, S) a chord of harmonic tones, the same in both channels."""
    t = np.arange(int(seconds * RATE)) / RATE
    mono = sum(np.sin(2 * np.pi * f * h * t) / h for f in freqs for h in range(1, harmonics + 1))
    mono = 0.3 * mono / np.abs(mono).max()
    return np.stack([mono, mono]).astype(np.float32)


def test_shapes_rates_and_dual_mono_output():
    torch.manual_seed(0)
    vae = SpectralVAE(SMALL)
    audio = torch.from_numpy(_tones([220.0], 1.3))[None]
    latents = vae.encode(audio)
    assert latents.shape == (1, 64, int(np.ceil(1.3 * RATE / 1920)))  # 25 latents per second
    out = vae.decode(latents)
    assert out.shape == (1, 2, latents.shape[-1] * 1920) and torch.equal(out[:, 0], out[:, 1])
    assert torch.equal(out, vae.decode(latents))  # deterministic, no sampling in decode


def test_streamed_windows_equal_the_whole_clip_decode_bit_for_bit():
    """What serving does: decode each window as its latents arrive, blend the crossfades, trim the duration."""
    torch.manual_seed(0)
    vae = SpectralVAE(SMALL)
    latents = torch.randn(1, 64, 100)
    samples = 100 * vae.hop - 555
    whole = vae.decode(latents)[0, :, :samples]
    stream = StreamingLatents(vae.cfg, 100, samples)
    pieces = []
    for start in range(0, 100, 4):
        for window, window_latents in stream.add(latents[0, :, start : start + 4].numpy()):
            audio = vae.decode_window(torch.from_numpy(window_latents.copy())[None], window)[0].numpy()
            pieces.append(stream.emit(window, audio))
    assert stream.done and len(pieces) == 4 and SMALL.crossfade_latents > 0
    assert torch.equal(torch.from_numpy(np.concatenate(pieces, axis=1)), whole)


def test_phase_recovery_keeps_the_pitch_of_true_magnitudes():
    """Griffin-Lim from a tone's true magnitudes puts its partials back at their frequencies, and a chord's key
    survives: the decoder only has to get magnitudes right. (In the bass, where 25 Hz bins are wide and the
    partials of a chord share them, a partial can come back a sixth of a semitone off.)"""
    vae = SpectralVAE(SpectralVAEConfig())
    for freqs, key in (([261.63, 329.63, 392.00], "C major"), ([220.0, 261.63, 329.63], "A minor")):
        audio = _tones(freqs, 4.0)
        magnitude = vae._stft(vae.mid(torch.from_numpy(audio)[None])).abs()
        rebuilt = vae.griffin_lim(magnitude)[0].numpy()
        spectrum = np.abs(np.fft.rfft(rebuilt[RATE : 3 * RATE]))  # 0.5 Hz bins
        for f in freqs:
            near = slice(int((f - 5) * 2), int((f + 5) * 2))
            found = np.argmax(spectrum[near]) / 2 + near.start / 2
            assert abs(found - f) < 0.025 * f, (f, found)  # in tune within a quarter-tone (2.9 %)
        assert estimate_key(np.stack([rebuilt, rebuilt]), RATE) == parse_key(key)


def test_pitch_channels_name_the_notes_being_played():
    """The fixed channels are semitone energies: a C major triad lights C, E and G above the rest of its octave,
    and they are the last latents, after the learned ones."""
    cfg = SMALL.model_copy(update={"latent_dim": 80, "pitch_channels": 72})
    vae = SpectralVAE(cfg)
    chord = [261.63, 329.63, 392.00]  # C4 E4 G4
    latents = vae.encode(torch.from_numpy(_tones(chord, 1.0, harmonics=1))[None])
    assert latents.shape == (1, 80, 25)
    pitch = latents[0, 8:].mean(1)  # (72,) semitones from C2
    octave = pitch[24:36]  # C4 .. B4
    assert set(torch.topk(octave, 3).indices.tolist()) == {0, 4, 7}
    assert torch.equal(latents[0, 8:], vae.pitch(vae.mid(torch.from_numpy(_tones(chord, 1.0, harmonics=1))[None]))[0])


def test_log_frequency_rows_each_see_the_spectrum_down_to_the_bass():
    bank = log_frequency_filterbank(RATE, 1920, 48, 27.5, 4000.0)
    assert bank.shape[0] == 1 + int(48 * np.log2(4000 / 27.5))
    assert torch.allclose(bank.sum(1), torch.ones(bank.shape[0])) and bool((bank >= 0).all())


def test_the_loss_falls_when_training_on_real_tones():
    torch.manual_seed(0)
    objective = SpectralVAELoss(SpectralVAE(SMALL))
    optimizer = torch.optim.AdamW(objective.parameters(), lr=2e-3)
    batch = torch.from_numpy(np.stack([_tones([f], 0.8) for f in (196.0, 261.6, 329.6, 440.0)]))
    losses = []
    for _ in range(40):
        out = objective(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(float(out["loss"].detach()))
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    assert set(out) == {"loss", "magnitude", "convergence", "pitch", "kl"}


def test_the_family_is_chosen_in_config_json_and_old_configs_stay_oobleck():
    cfg = load_config("small")
    assert isinstance(cfg.vae, SpectralVAEConfig) and isinstance(build_vae(cfg.vae), SpectralVAE)
    again = type(cfg).from_json(cfg.to_json())
    assert again == cfg and json.loads(cfg.to_json())["vae"]["family"] == "spectral"
    tree = json.loads(load_config("tiny").to_json())
    del tree["vae"]["family"]  # a config.json written before there were two families
    assert isinstance(type(cfg).model_validate(tree).vae, OobleckVAEConfig)
    with pytest.raises(ValueError, match="latent_dim"):
        load_config("small", ["vae.latent_dim=100"])  # the model still expects 128
