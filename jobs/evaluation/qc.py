"""Technical QC of a generated clip: clipping, silence, loudness (EBU R128 via essentia), DC offset."""

from __future__ import annotations

import numpy as np

CLIP_LEVEL = 0.999
SILENCE_DBFS = -60.0
SILENCE_WINDOW_S = 0.05


def technical_qc(audio: np.ndarray, sample_rate: int) -> dict[str, float]:
    """(C, S) float audio in [-1, 1] -> clipped fraction, silent fraction, integrated LUFS, max |DC|."""
    import essentia.standard as es

    x = np.asarray(audio, np.float32)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"need (channels, samples) audio, got shape {x.shape}")
    hop = max(1, int(SILENCE_WINDOW_S * sample_rate))
    windows = x[:, : x.shape[1] // hop * hop].reshape(x.shape[0], -1, hop)
    rms_db = 10 * np.log10(np.mean(windows.astype(np.float64) ** 2, axis=(0, 2)) + 1e-20)
    stereo = x if x.shape[0] == 2 else np.repeat(x[:1], 2, axis=0)
    _momentary, _short, integrated, _range = es.LoudnessEBUR128(sampleRate=float(sample_rate))(
        np.ascontiguousarray(stereo.T)
    )
    return {
        "clipped_fraction": float(np.mean(np.abs(x) >= CLIP_LEVEL)),
        "silent_fraction": float(np.mean(rms_db < SILENCE_DBFS)) if len(rms_db) else 1.0,
        "loudness_lufs": float(integrated),
        "dc_offset": float(np.abs(x.mean(1)).max()),
    }
