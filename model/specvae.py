"""The spectral VAE: a compact audio autoencoder whose every layer runs at a frame rate, not at 48 kHz.

    audio (B, C, S) -> mid (B, S) -> log-frequency spectrogram (B, F, 4L) at 100 frames/s
      -> ConvNeXt blocks -> stride-4 conv -> ConvNeXt blocks at 25 Hz -> (B, 2D, L) mean | log-variance
    latents (B, D, L) -> ConvNeXt blocks at 25 Hz -> x4 transposed conv -> ConvNeXt blocks at 100 Hz
      -> per-frame log magnitude of an n_fft-point spectrum -> Griffin-Lim phase -> (B, C, L * 1920)

Why this shape (README, "The default model"): an Oobleck decoder runs its convolutions at the audio rate
and costs seconds per second of audio on a CPU; here the heavy layers see 100 frames per second and the
waveform comes from inverse FFTs (the Vocos idea). The encoder reads a log-frequency spectrogram from a long
analysis window (36 bins per octave from 4096-point frames) because a first probe with linear STFT input
learned loudness and onsets but not pitch (DESIGN.md §6); these bins resolve semitones down to the bass.

The decoder predicts magnitudes only. Measured on real renders: Griffin-Lim from the true 1920-point
magnitudes keeps the key and tempo of nearly every clip, while a predicted phase trained without an
adversary (a first version of this file) kept half as many keys as Griffin-Lim on the same predicted
magnitudes. Training therefore needs no waveform at all (every loss compares spectra,
model/specvae_loss.py). Decoding starts Griffin-Lim from a phase-locked vocoder estimate (`locked_phase`),
so it needs few rounds and is deterministic. Two decode windows start their phase at different frames, so
where they overlap they hold the same magnitudes with different phases; `AudioAutoencoder.decode`
crossfades them over `crossfade_latents` (160 ms, once per 5.12 s window).

The model works on the mid signal and writes it to every output channel: the training renders are nearly
mono (their side signal is measured and reported), so a side channel would cost half the decoder for
nothing the data holds.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.config import SpectralVAEConfig
from model.vae import AudioAutoencoder

LOG_FLOOR = 1e-5  # magnitudes below this (-100 dB) are silence to the log spectrogram
MAX_LOG_MAGNITUDE = 8.0  # exp(8) ~ 3000: far above any real frame of [-1, 1] audio, keeps exp() finite


def log_frequency_filterbank(sample_rate: int, n_fft: int, bins_per_octave: int, f_min: float, f_max: float):
    """(F, n_fft // 2 + 1) triangular filters on a log-frequency axis, each row summing to 1.

    Where a filter is narrower than the FFT's bin spacing (the bass) it holds no bin centre; it then
    interpolates linearly between the two bins around its centre, so every row sees the spectrum.
    """
    n_bins = math.floor(bins_per_octave * math.log2(f_max / f_min)) + 1
    cpu = torch.device("cpu")  # a constant, built the same way whatever the default device
    centres = f_min * 2.0 ** (torch.arange(-1, n_bins + 1, dtype=torch.float64, device=cpu) / bins_per_octave)
    fft_freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64, device=cpu)
    lo, mid, hi = centres[:-2, None], centres[1:-1, None], centres[2:, None]
    rising = (fft_freqs[None] - lo) / (mid - lo)
    falling = (hi - fft_freqs[None]) / (hi - mid)
    bank = torch.clamp(torch.minimum(rising, falling), min=0)  # (F, K)
    spacing = sample_rate / n_fft
    for row in torch.nonzero(bank.sum(1) == 0).flatten().tolist():
        position = float(centres[row + 1]) / spacing
        left = int(position)
        bank[row, left] = 1 - (position - left)
        bank[row, min(left + 1, bank.shape[1] - 1)] += position - left
    return (bank / bank.sum(1, keepdim=True)).float()


class LogFrequencySpectrogram(nn.Module):
    """(B, S) audio -> (B, F, S // hop) log magnitudes on log-spaced bins; frame k is centred at k * hop."""

    def __init__(
        self, sample_rate: int, n_fft: int, hop: int, bins_per_octave: int, f_min: float, f_max: float
    ) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        bank = log_frequency_filterbank(sample_rate, n_fft, bins_per_octave, f_min, f_max)
        self.register_buffer("bank", bank, persistent=False)

    @property
    def bins(self) -> int:
        return self.bank.shape[0]

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        frames = audio.shape[-1] // self.hop
        spec = torch.stft(
            audio.float(),
            self.n_fft,
            self.hop,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )[..., :frames]  # (B, K, T)
        return torch.log(torch.einsum("fk,bkt->bft", self.bank, spec.abs()) + LOG_FLOOR)


class ConvNeXtBlock(nn.Module):
    """Depthwise conv over time, then a per-frame MLP, added back with a learned per-channel scale."""

    def __init__(self, width: int, mult: int, kernel: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(width, width, kernel, padding=kernel // 2, groups=width)
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, mult * width)
        self.down = nn.Linear(mult * width, width)
        self.scale = nn.Parameter(torch.full((width,), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, W, T)
        h = self.norm(self.dwconv(x).transpose(1, 2))  # (B, T, W)
        h = self.down(F.gelu(self.up(h))) * self.scale
        return x + h.transpose(1, 2)


def _blocks(cfg: SpectralVAEConfig, n: int) -> nn.Sequential:
    return nn.Sequential(*(ConvNeXtBlock(cfg.width, cfg.ffn_mult, cfg.kernel) for _ in range(n)))


class SpectralEncoder(nn.Module):
    def __init__(self, cfg: SpectralVAEConfig) -> None:
        super().__init__()
        self.features = LogFrequencySpectrogram(
            cfg.sample_rate, cfg.analysis_fft, cfg.frame_hop, cfg.bins_per_octave, cfg.f_min, cfg.f_max
        )
        self.inp = nn.Conv1d(self.features.bins, cfg.width, cfg.kernel, padding=cfg.kernel // 2)
        self.frame_blocks = _blocks(cfg, cfg.encoder_frame_blocks)
        self.down = nn.Conv1d(cfg.width, cfg.width, cfg.frames_per_latent, stride=cfg.frames_per_latent)
        self.latent_blocks = _blocks(cfg, cfg.encoder_latent_blocks)
        self.norm = nn.LayerNorm(cfg.width)
        self.out = nn.Linear(cfg.width, 2 * cfg.learned_channels)

    def forward(self, mono: torch.Tensor) -> torch.Tensor:
        """(B, S) with S a multiple of the latent hop -> (B, 2D', L): posterior mean and log-variance of the
        D' learned channels."""
        x = self.frame_blocks(self.inp(self.features(mono)))  # (B, W, 4L)
        x = self.latent_blocks(self.down(x))  # (B, W, L)
        return self.out(self.norm(x.transpose(1, 2))).transpose(1, 2)


class PitchSalience(nn.Module):
    """(B, S) audio -> (B, N, S // (hop * frames_per_latent)): log energy of N semitones, per latent frame.

    Why fixed channels: trained end to end on two CPU cores, this VAE's encoder and decoder learned loudness,
    onsets and the spectral envelope but no notes (after 800 steps, 1 held-out key in 16 survived the round
    trip: DESIGN.md section 6 saw the same). A semitone spectrogram is a faithful enough account of the notes
    that the decoder only has to learn how they sound (`PitchPrior` puts them in place), while the learned
    channels carry timbre, drums and onsets.
    """

    SCALE = 0.25  # log energies span about -7..2: keep the decoder's inputs near unit scale

    def __init__(self, cfg: SpectralVAEConfig) -> None:
        super().__init__()
        f_max = cfg.pitch_f_min * 2 ** ((cfg.pitch_channels - 1) / 12)
        self.spectrogram = LogFrequencySpectrogram(
            cfg.sample_rate, cfg.analysis_fft, cfg.frame_hop, 12, cfg.pitch_f_min, f_max * 1.0001
        )
        self.pool = cfg.frames_per_latent

    def forward(self, mono: torch.Tensor) -> torch.Tensor:
        energy = self.spectrogram(mono).exp()  # (B, N, T) magnitudes per semitone
        pooled = F.avg_pool1d(energy, self.pool, self.pool)  # (B, N, L)
        return torch.log(pooled + PITCH_FLOOR) * self.SCALE


PITCH_FLOOR = 1e-3  # -60 dB below full scale: quieter partials than this are not notes anyone hears


class PitchPrior(nn.Module):
    """The pitch channels drawn back onto the decoder's linear bins: each semitone's energy spread over the bins
    around its frequency (the semitone filterbank, transposed). The decoder adds it, in log, to what it
    predicts, with a learned gain per bin (1 below the top semitone, 0 above to start), so the notes are in
    place from the first step and the network learns the timbre around them."""

    def __init__(self, cfg: SpectralVAEConfig) -> None:
        super().__init__()
        f_max = cfg.pitch_f_min * 2 ** ((cfg.pitch_channels - 1) / 12)
        bank = log_frequency_filterbank(cfg.sample_rate, cfg.n_fft, 12, cfg.pitch_f_min, f_max * 1.0001)
        self.register_buffer("spread", bank.T.contiguous(), persistent=False)  # (K, N)
        bins = torch.linspace(0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)
        self.gain = nn.Parameter((bins <= f_max * 2 ** (1 / 12)).float())
        self.channels, self.frames = cfg.pitch_channels, cfg.frames_per_latent

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, D, L) latents -> (B, K, 4L) log magnitudes of their pitch channels on the linear bins."""
        energy = (latents[:, -self.channels :] / PitchSalience.SCALE).exp()  # (B, N, L)
        spread = torch.einsum("kn,bnl->bkl", self.spread, energy).repeat_interleave(self.frames, dim=-1)
        return self.gain[:, None] * torch.log(spread + PITCH_FLOOR)


class SpectralDecoder(nn.Module):
    def __init__(self, cfg: SpectralVAEConfig) -> None:
        super().__init__()
        self.inp = nn.Conv1d(cfg.latent_dim, cfg.width, cfg.kernel, padding=cfg.kernel // 2)
        self.latent_blocks = _blocks(cfg, cfg.decoder_latent_blocks)
        self.up = nn.ConvTranspose1d(cfg.width, cfg.width, cfg.frames_per_latent, stride=cfg.frames_per_latent)
        self.frame_blocks = _blocks(cfg, cfg.decoder_frame_blocks)
        self.norm = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.n_fft // 2 + 1)
        self.prior = PitchPrior(cfg) if cfg.pitch_channels else None

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, D, L) -> (B, K, 4L) log magnitudes, K = n_fft // 2 + 1 bins."""
        x = self.frame_blocks(self.up(self.latent_blocks(self.inp(latents))))  # (B, W, 4L)
        log_mag = self.head(self.norm(x.transpose(1, 2))).transpose(1, 2)
        if self.prior is not None:
            log_mag = log_mag + self.prior(latents)
        return log_mag.clamp(max=MAX_LOG_MAGNITUDE)


class SpectralVAE(AudioAutoencoder):
    """encode: (B, C, S) -> (B, D, ceil(S / hop)) posterior mean; decode: (B, D, L) -> (B, C, L * hop).

    "auto" keeps its decoder in fp32 (`bf16_pays`): the network is a sixth of a decode, Griffin-Lim the rest,
    and bf16 magnitudes send Griffin-Lim to other phases (measured: about 0 dB SNR against the fp32 decode).
    """

    def __init__(self, cfg: SpectralVAEConfig) -> None:
        super().__init__(cfg)
        self.encoder = SpectralEncoder(cfg)
        self.pitch = PitchSalience(cfg) if cfg.pitch_channels else None
        self.decoder = SpectralDecoder(cfg)
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        bins = cfg.n_fft // 2 + 1
        start = torch.rand(bins, generator=torch.Generator().manual_seed(0), device="cpu") * 2 * math.pi
        self.register_buffer("start_phase", start, persistent=False)  # per-bin offsets: decoding is deterministic
        self.freeze()  # frozen wherever it is used; `videorobin train-vae` unfreezes its own copy

    def mid(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, C, S) -> (B, S') mono, zero-padded to a whole number of latents."""
        return F.pad(audio.mean(1), (0, -audio.shape[-1] % self.hop))

    def posterior(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(B, C, S) -> mean and log-variance of the learned channels, each (B, D', L), and the fixed pitch
        channels (B, D - D', L) or None."""
        mono = self.mid(audio)
        mean, logvar = self.encoder(mono).chunk(2, dim=1)
        return mean, logvar, self.pitch(mono) if self.pitch is not None else None

    @staticmethod
    def latents(learned: torch.Tensor, pitch: torch.Tensor | None) -> torch.Tensor:
        return learned if pitch is None else torch.cat([learned, pitch], dim=1)

    @torch.no_grad()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        mean, _, pitch = self.posterior(audio)
        return self.latents(mean, pitch)

    def locked_phase(self, magnitude: torch.Tensor) -> torch.Tensor:
        """(B, K, T) magnitudes -> (B, K, T) phases where Griffin-Lim starts: a phase-locked vocoder estimate.

        Each bin follows the spectral peak it belongs to (the nearest local maximum): the peak's frequency,
        interpolated between bins from the log magnitudes around it, turns its phase by 2 pi f hop / rate each
        frame, starting from a fixed random phase per bin at the window's first frame (so partials do not add
        up to a click train), and the bins of the peak's lobe keep the peak's phase, flipped by pi per bin as a
        centred Hann frame's transform is. Measured on 24 renders from their true magnitudes: 8 Griffin-Lim
        rounds from here keep the key of 21 and the tempo of 20, where 32 rounds from a plain oscillator
        phase keep 20 and 20; setting the phase from absolute time instead of accumulating it (so windows
        would agree exactly) keeps only 16 keys, because frequency estimates jitter and t grows.
        """
        B, K, T = magnitude.shape
        log_mag = torch.log(magnitude + LOG_FLOOR)
        left = torch.cat([log_mag[:, :1], log_mag[:, :-1]], 1)
        right = torch.cat([log_mag[:, 1:], log_mag[:, -1:]], 1)
        peak = (log_mag >= left) & (log_mag > right)
        curvature = left - 2 * log_mag + right
        offset = torch.where(curvature.abs() > 1e-9, 0.5 * (left - right) / curvature, torch.zeros_like(curvature))
        k = torch.arange(K, device=magnitude.device, dtype=magnitude.dtype)[None, :, None].expand(B, K, T)
        never = torch.full_like(k, -1e9)
        below = torch.cummax(torch.where(peak, k, never), dim=1).values  # nearest peak at or below each bin
        above = -torch.flip(torch.cummax(torch.flip(torch.where(peak, -k, never), [1]), dim=1).values, [1])
        owner = torch.where(k - below <= above - k, below, above).clamp(0, K - 1).long()  # (B, K, T)
        frequency = torch.gather(k + offset.clamp(-0.5, 0.5), 1, owner)  # in bins
        turn = (2 * math.pi * self.cfg.frame_hop / self.cfg.n_fft) * frequency  # per hop
        accumulated = (torch.cumsum(turn, dim=2) - turn[..., :1]).remainder(2 * math.pi) + self.start_phase[:, None]
        return torch.gather(accumulated, 1, owner) + math.pi * (k - owner.to(k.dtype))

    def _stft(self, mono: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(
            mono,
            self.cfg.n_fft,
            self.cfg.frame_hop,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )
        return spec[..., : mono.shape[-1] // self.cfg.frame_hop]

    def _istft(self, spec: torch.Tensor) -> torch.Tensor:
        T = spec.shape[-1]
        return torch.istft(
            spec, self.cfg.n_fft, self.cfg.frame_hop, window=self.window, center=True, length=T * self.cfg.frame_hop
        )

    def griffin_lim(self, magnitude: torch.Tensor) -> torch.Tensor:
        """(B, K, T) magnitudes -> (B, T * frame_hop) waveform: fast Griffin-Lim (momentum 0.99, Perraudin et
        al. 2013) for `cfg.griffin_lim_iters` rounds from the phase-locked estimate."""
        phase = self.locked_phase(magnitude)
        angles = torch.polar(torch.ones_like(phase), phase)
        previous = torch.zeros_like(angles)
        momentum = 0.99 / 1.99
        for _ in range(self.cfg.griffin_lim_iters):
            rebuilt = self._stft(self._istft(magnitude * angles))
            accelerated = rebuilt - momentum * previous
            angles = accelerated / (accelerated.abs() + 1e-8)
            previous = rebuilt
        return self._istft(magnitude * angles)

    def decode_all(self, latents: torch.Tensor) -> torch.Tensor:
        mono = self.griffin_lim(self.run_decoder(latents).exp())
        return mono[:, None].expand(-1, self.cfg.audio_channels, -1)
