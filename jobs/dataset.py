"""`videorobin make-dataset`: a small, real, offline training set with known musical attributes.

Real scores from music21's bundled corpus are cut to excerpts, given a known tempo (a metronome mark)
and a General MIDI instrument, exported to MIDI and rendered to 48 kHz stereo with fluidsynth and a GM
soundfont. Every render is bounded in time and in bytes: fluidsynth has been seen writing without end
on some MIDI files. Each clip gets a synthetic video whose cuts fall on the bar lines, and a caption that
states the real attributes; the manifest keeps them as ground truth. The key is music21's analysis of the
excerpt's score (Krumhansl-Schmuckler), not its key signature, which chorales often write modally.

    DIR/audio/<id>.wav  DIR/video/<id>.mp4  DIR/midi/<id>.mid  DIR/manifest.jsonl
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np

from model.io import write_bytes_atomic
from model.media import write_audio, write_sample_video

SAMPLE_RATE = 48000
SOUNDFONTS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
)


@dataclass(frozen=True)
class Piece:
    corpus_path: str
    composer: str
    style: str
    instrument: str  # a music21.instrument class name, used for every part (its General MIDI program)
    instrument_label: str  # what the caption calls it


# Real pieces of different styles, metres and keys; tempi are assigned per clip.
PIECES = (
    Piece("bach/bwv10.7", "J.S. Bach", "baroque chorale", "PipeOrgan", "organ"),
    Piece("joplin/maple_leaf_rag", "Scott Joplin", "ragtime", "Piano", "piano"),
    Piece("bach/bwv101.7", "J.S. Bach", "baroque chorale", "StringInstrument", "string ensemble"),
    Piece("mozart/k80/movement1", "W.A. Mozart", "classical string quartet", "StringInstrument", "string ensemble"),
    Piece("bach/bwv1.6", "J.S. Bach", "baroque chorale", "Piano", "piano"),
    Piece("beethoven/opus18no1/movement2", "Ludwig van Beethoven", "classical string quartet", "Violin", "violin"),
    Piece("bach/bwv102.7", "J.S. Bach", "baroque chorale", "Flute", "flute"),
    Piece("haydn/opus74no1/movement3", "Joseph Haydn", "classical minuet", "Harpsichord", "harpsichord"),
)
TEMPI = (72, 90, 100, 110, 120, 84, 96, 132)


class RenderError(RuntimeError):
    """fluidsynth is missing, failed, or produced no sound."""


def find_soundfont(path: str | None = None) -> str:
    for candidate in [path] if path else SOUNDFONTS:
        if os.path.isfile(candidate):
            return candidate
    raise RenderError(f"no GM soundfont found ({path or ', '.join(SOUNDFONTS)}): apt-get install timgm6mb-soundfont")


def render_midi(midi_path: str, soundfont: str, seconds: float, timeout_s: float = 60.0) -> np.ndarray:
    """Render at most `seconds` of a MIDI file: (2, S) float32 at 48 kHz. Bounded in bytes and time."""
    binary = shutil.which("fluidsynth")
    if binary is None:
        raise RenderError("fluidsynth not found: apt-get install fluidsynth")
    wanted = int(round(seconds * SAMPLE_RATE)) * 2 * 2  # stereo, 16-bit
    cmd = [
        binary,
        "-ni",
        "-q",
        "-g",
        "0.6",
        "-r",
        str(SAMPLE_RATE),
        "-T",
        "raw",
        "-O",
        "s16",
        "-F",
        "-",
        soundfont,
        midi_path,
    ]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        chunks, got = [], 0
        try:
            while got < wanted:
                chunk = proc.stdout.read(min(1 << 16, wanted - got))
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
        finally:
            proc.kill()  # stop it whatever it meant to write next
        proc.wait(timeout=timeout_s)
    pcm = np.frombuffer(b"".join(chunks), dtype="<i2")[: wanted // 2]
    audio = (pcm.reshape(-1, 2).T.astype(np.float32) / 32768.0) if pcm.size else np.zeros((2, 0), np.float32)
    if audio.shape[1] < wanted // 4:
        audio = np.pad(audio, ((0, 0), (0, wanted // 4 - audio.shape[1])))  # the piece ended: silence after
    if float(np.abs(audio).max()) < 1e-4:
        raise RenderError(f"{midi_path}: the render is silent")
    return audio


def _excerpt(piece: Piece, bpm: int, seconds: float):
    """The piece's first bars covering `seconds` at `bpm`, with the tempo mark and instrument set."""
    from music21 import bar, corpus, instrument, tempo

    score = corpus.parse(piece.corpus_path)
    signature = score.recurse().getElementsByClass("TimeSignature").first()
    bar_beats = signature.beatCount if signature is not None else 4
    beat_quarters = signature.beatDuration.quarterLength if signature is not None else 1.0
    bars = math.ceil(seconds * bpm / 60 / bar_beats) + 1
    excerpt = score.measures(1, bars)
    for measure in excerpt.recurse().getElementsByClass("Measure"):  # a cut can orphan a repeat sign
        if isinstance(measure.leftBarline, bar.Repeat):
            measure.leftBarline = None
        if isinstance(measure.rightBarline, bar.Repeat):
            measure.rightBarline = None
    for mark in list(excerpt.recurse().getElementsByClass(("MetronomeMark", "RepeatExpression"))):
        mark.activeSite.remove(mark)
    for part in excerpt.parts:
        for old in list(part.recurse().getElementsByClass("Instrument")):
            old.activeSite.remove(old)
        part.insert(0, getattr(instrument, piece.instrument)())
        part.insert(0, tempo.MetronomeMark(number=bpm, referent=beat_quarters))
    return score, excerpt, signature, bar_beats


def spell_key(key) -> str:
    """A music21 Key as a caption spells it: "A-flat major", "F-sharp minor"."""
    return f"{key.tonic.name.replace('-', '-flat ').replace('#', '-sharp ').strip()} {key.mode}"


def make_clip(piece: Piece, bpm: int, seconds: float, clip_id: str, out: str, soundfont: str) -> dict:
    _, excerpt, signature, bar_beats = _excerpt(piece, bpm, seconds)
    key = excerpt.analyze("key")
    time_signature = signature.ratioString if signature is not None else "4/4"
    midi_path = os.path.join(out, "midi", f"{clip_id}.mid")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_midi = excerpt.write("midi", fp=os.path.join(tmp, "clip.mid"))
        audio = render_midi(str(tmp_midi), soundfont, seconds)
        os.replace(tmp_midi, midi_path)
    audio_path = os.path.join(out, "audio", f"{clip_id}.wav")
    write_audio(audio_path, audio, SAMPLE_RATE)
    bar_s = 60.0 / bpm * bar_beats
    video_path = os.path.join(out, "video", f"{clip_id}.mp4")
    write_sample_video(video_path, seconds, cut_every_s=bar_s)  # a cut on every bar line
    key_name = spell_key(key)
    caption = (
        f"{piece.style.capitalize()} for {piece.instrument_label} by {piece.composer}, in {key_name}, "
        f"{bpm} BPM, {time_signature} time."
    )
    return {
        "id": clip_id,
        "audio": audio_path,
        "video": video_path,
        "midi": midi_path,
        "caption": caption,
        "start": 0.0,
        "duration": seconds,
        "key": key_name,
        "tempo_bpm": bpm,
        "time_signature": time_signature,
        "instruments": [piece.instrument_label],
        "composer": piece.composer,
        "style": piece.style,
        "cut_every_s": bar_s,
        "source": f"music21 corpus: {piece.corpus_path}",
    }


def make_dataset(out: str, clips: int, seconds: float = 10.0, soundfont: str | None = None) -> str:
    """Write `clips` clips and `out/manifest.jsonl` (written last); returns the manifest path."""
    soundfont = find_soundfont(soundfont)
    for sub in ("audio", "video", "midi"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    rows = []
    for i in range(clips):
        piece, bpm = PIECES[i % len(PIECES)], TEMPI[(i + i // len(PIECES)) % len(TEMPI)]
        rows.append(make_clip(piece, bpm, seconds, f"clip{i:04d}", out, soundfont))
    manifest = os.path.join(out, "manifest.jsonl")
    write_bytes_atomic(manifest, "".join(json.dumps(r) + "\n" for r in rows).encode())
    return manifest
