"""Does the music follow the prompt? Tempo and key of audio (librosa, essentia) against what was asked.

Scoring follows the MIR conventions: a tempo counts within 8 % (mir_eval's tolerance), and "octave"
matches at 1/3, 1/2, 2 and 3 times the asked tempo count separately; keys score 1 (same), 0.5 (a fifth
apart, same mode), 0.3 (relative), 0.2 (parallel), else 0, as in MIREX key detection.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass

import numpy as np

ANALYSIS_RATE = 22050  # librosa's usual rate; beat tracking needs nothing higher
TEMPO_TOLERANCE = 0.08
OCTAVE_FACTORS = (1 / 3, 1 / 2, 2.0, 3.0)
PITCH_CLASSES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
ACCIDENTALS = {"": 0, "#": 1, "♯": 1, "sharp": 1, "-sharp": 1, "b": -1, "♭": -1, "flat": -1, "-flat": -1, "-": -1}
NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")

_KEY = re.compile(
    r"\b([A-G])\s*(#|♯|♭|-?\s*sharp|-?\s*flat|b(?=\s*(?:maj|min))|-)?\s*(major|minor|maj|min)\b", re.IGNORECASE
)
_BPM = re.compile(r"(\d+(?:\.\d+)?)\s*bpm\b", re.IGNORECASE)


@dataclass(frozen=True)
class Key:
    tonic: int  # pitch class, C = 0
    minor: bool

    def __str__(self) -> str:
        return f"{NAMES[self.tonic]} {'minor' if self.minor else 'major'}"


def parse_key(text: str) -> Key | None:
    """The first "X major/minor" in `text` ("A-flat major", "F# minor", "Bb maj", "E♭ minor"), or None."""
    m = _KEY.search(text)
    if m is None:
        return None
    letter, accidental, mode = m.group(1).upper(), (m.group(2) or "").replace(" ", "").lower(), m.group(3).lower()
    return Key((PITCH_CLASSES[letter] + ACCIDENTALS[accidental]) % 12, mode.startswith("min"))


def parse_tempo(text: str) -> float | None:
    """The first "<n> BPM" in `text`, or None."""
    m = _BPM.search(text)
    return float(m.group(1)) if m else None


def to_mono(audio: np.ndarray, sample_rate: int, rate: int) -> np.ndarray:
    """(S,) float32 mono at `rate` from (C, S) or (S,) audio at `sample_rate`."""
    import librosa

    mono = np.asarray(audio, np.float32)
    mono = mono.mean(0) if mono.ndim == 2 else mono
    return librosa.resample(mono, orig_sr=sample_rate, target_sr=rate) if sample_rate != rate else mono


def beat_times(audio: np.ndarray, sample_rate: int) -> tuple[float, np.ndarray]:
    """(tempo in BPM, beat times in seconds) of (C, S) or (S,) audio, by librosa's beat tracker."""
    import librosa

    y = to_mono(audio, sample_rate, ANALYSIS_RATE)
    tempo, beats = librosa.beat.beat_track(y=y, sr=ANALYSIS_RATE, units="time")
    return float(np.atleast_1d(tempo)[0]), np.asarray(beats, np.float64)


def compile_beat_tracker() -> None:
    """Compile librosa's numba beat tracker once per machine, before parallel use.

    librosa caches the compiled code beside its sources. Processes compiling it at the same moment can
    leave a corrupt cache that segfaults every later load (two evaluation actors on a fresh install
    did), so one process compiles and writes it under a machine-wide lock and the others then read it.
    """
    from filelock import FileLock

    clicks = np.zeros(ANALYSIS_RATE * 4, np.float32)
    clicks[:: ANALYSIS_RATE // 2] = 1.0  # 120 BPM: the whole tracking path runs, as on real audio
    with FileLock(os.path.join(tempfile.gettempdir(), "videorobin-numba.lock")):
        beat_times(clicks, ANALYSIS_RATE)


def estimate_key(audio: np.ndarray, sample_rate: int) -> Key:
    """The audio's key by essentia's KeyExtractor (HPCP + key profiles)."""
    import essentia.standard as es

    key, scale, _strength = es.KeyExtractor(sampleRate=float(sample_rate))(to_mono(audio, sample_rate, sample_rate))
    parsed = parse_key(f"{key} {scale}")
    if parsed is None:
        raise ValueError(f"essentia returned an unreadable key {key!r} {scale!r}")
    return parsed


def tempo_score(estimated: float, asked: float, tolerance: float = TEMPO_TOLERANCE) -> dict[str, bool]:
    """{"match": within tolerance of the asked tempo, "octave_match": also at 1/3, 1/2, 2 or 3 times it}."""
    close = [abs(estimated - asked * f) <= tolerance * asked * f for f in (1.0, *OCTAVE_FACTORS)]
    return {"match": close[0], "octave_match": any(close)}


def key_score(estimated: Key, asked: Key) -> float:
    """MIREX weighted key score of an estimate against the asked key."""
    if estimated == asked:
        return 1.0
    if estimated.minor == asked.minor and (estimated.tonic - asked.tonic) % 12 in (5, 7):
        return 0.5
    relative = (asked.tonic + (3 if asked.minor else -3)) % 12  # C major <-> A minor
    if estimated.minor != asked.minor and estimated.tonic == relative:
        return 0.3
    if estimated.minor != asked.minor and estimated.tonic == asked.tonic:
        return 0.2
    return 0.0
