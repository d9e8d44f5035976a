"""The training objective of the spectral VAE (model/specvae.py): spectral reconstruction + a small KL.

The decoder predicts magnitude spectra (its phase comes from Griffin-Lim at decode time), so every term
compares spectra on the decoder's own frame grid and no waveform is synthesised in training. Each term is
a mean, weighted by `SpectralLossWeights`:

- `magnitude`: L1 between log magnitudes, every linear bin alike: loudness, timbre, onsets, noise;
- `convergence`: spectral convergence, ||pred - true|| / ||true|| on linear magnitudes: the loud partials,
  which carry the notes, dominate it where the log term treats them like the noise floor;
- `pitch`: L1 between log magnitudes pooled onto 48 log-spaced bins per octave from 27.5 Hz to 4 kHz:
  the register where keys are decided gets as many terms as the rest of the spectrum, instead of the
  few percent of linear bins it occupies;
- `kl`: the Gaussian posterior of the learned channels against N(0, I), weighted lightly so the latent stays
  smooth without trading away detail (the fixed pitch channels have no posterior).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from model.specvae import LOG_FLOOR, SpectralVAE, log_frequency_filterbank

PITCH_BINS_PER_OCTAVE, PITCH_F_MIN, PITCH_F_MAX = 48, 27.5, 4000.0


class SpectralLossWeights(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    magnitude: float = Field(default=1.0, ge=0)
    convergence: float = Field(default=1.0, ge=0)
    pitch: float = Field(default=1.0, ge=0)
    kl: float = Field(default=1e-4, ge=0)


class SpectralVAELoss(nn.Module):
    """Holds the VAE being trained, so one module is what data-parallel training wraps."""

    def __init__(self, vae: SpectralVAE, weights: SpectralLossWeights = SpectralLossWeights()) -> None:
        super().__init__()
        cfg = vae.cfg
        self.vae = vae.requires_grad_(True)
        self.weights = weights
        bank = log_frequency_filterbank(cfg.sample_rate, cfg.n_fft, PITCH_BINS_PER_OCTAVE, PITCH_F_MIN, PITCH_F_MAX)
        self.register_buffer("pitch_bank", bank, persistent=False)

    def forward(self, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, C, S) audio, S a multiple of the latent hop -> {"loss": weighted sum, each term detached}."""
        vae = self.vae
        mean, logvar, pitch = vae.posterior(audio)
        z = vae.latents(mean + torch.randn_like(mean) * (0.5 * logvar).exp(), pitch)
        log_pred = vae.decoder(z)  # (B, K, T)
        true = vae._stft(vae.mid(audio)).abs()
        pred = log_pred.exp()
        floor = torch.log(torch.tensor(LOG_FLOOR, device=log_pred.device))
        terms = {
            "magnitude": F.l1_loss(torch.logaddexp(log_pred, floor), torch.log(true + LOG_FLOOR)),
            "convergence": torch.linalg.norm(pred - true) / torch.linalg.norm(true).clamp(min=LOG_FLOOR),
            "pitch": F.l1_loss(
                torch.log(torch.einsum("fk,bkt->bft", self.pitch_bank, pred) + LOG_FLOOR),
                torch.log(torch.einsum("fk,bkt->bft", self.pitch_bank, true) + LOG_FLOOR),
            ),
            "kl": 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean(),
        }
        loss = sum(getattr(self.weights, name) * value for name, value in terms.items())
        return {"loss": loss, **{name: value.detach() for name, value in terms.items()}}
