"""`videorobin evaluate-vae`: how well a VAE keeps held-out music through encode -> decode (Ray Data).

    clips of a manifest -> one actor pool: read the audio, encode, decode, then measure original against
    reconstruction -> the driver averages and writes

    DIR/vae_metrics.json   per clip and overall: multi-resolution STFT distance, mel distance, whether key and
                           tempo survive (estimated on both with the evaluation's own analysers)
    DIR/spectrograms/      the first `--figures` clips, reconstruction above original
    DIR/audio/             their reconstructions (48 kHz WAV)

Tempo survives when the reconstruction's tempo is within 4 % of the original's (an octave away counts
separately, as `octave`); key survives when both analyses name the same key.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import ray
import torch
from pydantic import BaseModel, ConfigDict, Field

from jobs.evaluation.music import beat_times, compile_beat_tracker, estimate_key, tempo_score
from jobs.evaluation.report import spectrogram_png
from jobs.ray_session import connect
from jobs.score_tasks import error_text
from jobs.train_vae import read_clips
from model.config import VAEConfig
from model.io import uri_join, write_bytes_atomic
from model.media import encode_audio, read_audio
from model.vae import load_vae

log = logging.getLogger(__name__)

TEMPO_TOLERANCE = 0.04
STFT_SIZES = (512, 1024, 2048, 4096)
MEL_BANDS, MEL_FFT, MEL_HOP = 128, 2048, 480


class VAEReportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vae: VAEConfig  # with its checkpoint
    manifest: str
    out: str
    clips: int | None = Field(default=None, ge=1)  # the first N of the manifest (default: all)
    figures: int = Field(default=4, ge=0)
    address: str | None = None
    actors: int = Field(default=2, ge=1)
    actor_cpus: float = Field(default=0.5, gt=0)


def spectral_distances(original: np.ndarray, rebuilt: np.ndarray, sample_rate: int) -> dict[str, float]:
    """Multi-resolution STFT distance (auraloss: spectral convergence + log magnitude, 11-85 ms windows) and
    mel distance (mean absolute difference of log10 mel energies, 128 bands) between two (C, S) clips."""
    import auraloss
    import librosa

    x = torch.from_numpy(original.mean(0))[None, None]
    y = torch.from_numpy(rebuilt.mean(0))[None, None]
    mrstft = auraloss.freq.MultiResolutionSTFTLoss(
        fft_sizes=list(STFT_SIZES), hop_sizes=[n // 4 for n in STFT_SIZES], win_lengths=list(STFT_SIZES)
    )

    def mel(a: np.ndarray) -> np.ndarray:
        m = librosa.feature.melspectrogram(
            y=a.mean(0), sr=sample_rate, n_fft=MEL_FFT, hop_length=MEL_HOP, n_mels=MEL_BANDS
        )
        return np.log10(m + 1e-5)

    return {"stft_distance": float(mrstft(y, x)), "mel_distance": float(np.abs(mel(original) - mel(rebuilt)).mean())}


class Reconstruct:
    """A Ray Data actor: the VAE once, then encode -> decode -> measure, one clip per call."""

    def __init__(self, vae: dict, out: str, figures: list[str]) -> None:
        from pydantic import TypeAdapter

        torch.set_num_threads(1)
        compile_beat_tracker()
        self.vae = load_vae(TypeAdapter(VAEConfig).validate_python(vae))
        self.out, self.figures = out, set(figures)

    def __call__(self, clip: dict) -> dict:
        try:
            return {"result": json.dumps({"id": clip["id"], "status": "ok", **self.measure(clip)})}
        except Exception as err:  # noqa: BLE001 - a bad clip fails alone, the job goes on
            return {"result": json.dumps({"id": clip["id"], "status": "failed", "error": error_text("read", err)})}

    @torch.no_grad()
    def measure(self, clip: dict) -> dict:
        rate = self.vae.sample_rate
        audio = read_audio(clip["audio"], rate)
        first = int(round(clip["start"] * rate))
        audio = audio[:, first : first + int(round(clip["duration"] * rate))] if clip["duration"] > 0 else audio
        rebuilt = self.vae.decode(self.vae.encode(torch.from_numpy(audio)[None]))[0, :, : audio.shape[1]].numpy()
        tempo, _ = beat_times(audio, rate)
        tempo_rebuilt, _ = beat_times(rebuilt, rate)
        key, key_rebuilt = estimate_key(audio, rate), estimate_key(rebuilt, rate)
        tempo_kept = tempo_score(tempo_rebuilt, tempo, TEMPO_TOLERANCE)
        out = spectral_distances(audio, rebuilt, rate) | {
            "key": str(key),
            "key_rebuilt": str(key_rebuilt),
            "key_kept": key == key_rebuilt,
            "tempo": tempo,
            "tempo_rebuilt": tempo_rebuilt,
            "tempo_kept": tempo_kept["match"],
            "tempo_kept_octave": tempo_kept["octave_match"],
        }
        if clip["id"] in self.figures:
            panels = {"reconstruction": (rebuilt, rate), "original": (audio, rate)}
            write_bytes_atomic(
                uri_join(self.out, f"spectrograms/{clip['id']}.png"), spectrogram_png(clip["id"], panels)
            )
            write_bytes_atomic(uri_join(self.out, f"audio/{clip['id']}.wav"), encode_audio(rebuilt, rate))
        return out


def summarise(rows: list[dict]) -> dict:
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return {"clips": 0, "failed": len(rows)}
    mean = lambda key: round(float(np.mean([r[key] for r in ok])), 4)  # noqa: E731
    return {
        "clips": len(ok),
        "failed": len(rows) - len(ok),
        "stft_distance": mean("stft_distance"),
        "mel_distance": mean("mel_distance"),
        "key_kept": mean("key_kept"),
        "tempo_kept": mean("tempo_kept"),
        "tempo_kept_octave": mean("tempo_kept_octave"),
        "key_and_tempo_kept": round(float(np.mean([r["key_kept"] and r["tempo_kept"] for r in ok])), 4),
    }


def run(cfg: VAEReportConfig) -> dict:
    clips = read_clips(cfg.manifest)[: cfg.clips]
    connect(cfg.address)
    ds = ray.data.from_items(clips, override_num_blocks=max(1, min(len(clips), 4 * cfg.actors)))
    ds = ds.map(
        Reconstruct,
        num_cpus=cfg.actor_cpus,
        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
        fn_constructor_kwargs={
            "vae": cfg.vae.model_dump(),
            "out": cfg.out,
            "figures": [c["id"] for c in clips[: cfg.figures]],
        },
    )
    rows = sorted((json.loads(r["result"]) for r in ds.iter_rows()), key=lambda r: r["id"])
    summary = summarise(rows)
    report = {"summary": summary, "vae": cfg.vae.model_dump(), "manifest": cfg.manifest, "clips": rows}
    write_bytes_atomic(uri_join(cfg.out, "vae_metrics.json"), json.dumps(report, indent=2).encode())
    return summary
