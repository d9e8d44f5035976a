"""How one clip plays a piece: which bars, in which key, at what tempo, on which instruments, with or without
drums, written as a MIDI file.

Every choice comes from the clip's own random generator, so a clip id always gives the same clip. The
excerpt starts on the downbeat of a whole bar at a random place and keeps one metre with every bar line on
the grid that downbeat sets (a bar written as two measures, as chorales split them at fermatas, is one bar),
so the clip's bar lines fall at multiples of the bar length, where its video cuts. The excerpt is transposed
so that the tonics of the clips spread evenly over the 12 pitch classes, keeping each excerpt's mode; its
key is then analysed again, so the label is the key that is heard, not a key signature (chorales often
write modal ones).
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

import mido

TEMPO_RANGE = (60, 180)  # beats (of the time signature's beat) per minute, drawn uniformly
DRUMS_SHARE = 0.3
ATTEMPTS = 8  # tempo and start draws per clip before its piece counts as unusable
MIN_NOTES = 4
# Krumhansl-Schmuckler correlation of the excerpt with its best key. Below it the tonality is too unclear to
# label: on 114 rendered 10 s excerpts, essentia agreed with music21's key (MIREX score) 0.73 on average,
# 0.81 on the 82 % of excerpts at or above 0.75.
MIN_KEY_CORRELATION = 0.75
# How the caption spells each tonic pitch class: the usual key of the two enharmonic names.
TONICS = {
    "major": ("C", "D-", "D", "E-", "E", "F", "F#", "G", "A-", "A", "B-", "B"),
    "minor": ("C", "C#", "D", "E-", "E", "F", "F#", "G", "G#", "A", "B-", "B"),
}
KICK, HI_HAT = 36, 42  # General MIDI percussion keys, played on channel 10
DRUM_CHANNEL = 9


@dataclass(frozen=True)
class Instrumentation:
    label: str  # what the caption calls it
    family: str  # a MagnaTagATune tag (musicnn), so generated music can be checked by tag
    voices: tuple[tuple[int, str], ...]  # (GM program, instrument) from the top part down; the last is the bass
    min_parts: int = 1
    max_parts: int = 64

    def parts(self, count: int) -> list[tuple[int, str]]:
        """The voice of each of `count` parts, top to bottom: the top voice first, the last voice on the bass,
        the inner voices in order on the parts between (the last inner voice repeated if there are more)."""
        if len(self.voices) == 1 or count == 1:
            return [self.voices[0]] * count
        return [self.voices[min(i, len(self.voices) - 2)] for i in range(count - 1)] + [self.voices[-1]]


INSTRUMENTATIONS = (
    Instrumentation("piano", "piano", ((0, "piano"),)),
    Instrumentation("electric piano", "piano", ((4, "electric piano"),)),
    Instrumentation("harpsichord", "harpsichord", ((6, "harpsichord"),)),
    Instrumentation("nylon-string guitar", "guitar", ((24, "nylon-string guitar"),)),
    Instrumentation("steel-string acoustic guitar", "guitar", ((25, "steel-string guitar"),)),
    Instrumentation("string ensemble", "strings", ((48, "strings"),)),
    Instrumentation(
        "string quartet", "strings", ((40, "violin"), (40, "violin"), (41, "viola"), (42, "cello")), min_parts=3
    ),
    Instrumentation("solo violin", "violin", ((40, "violin"),), max_parts=1),
    Instrumentation("violin ensemble", "violin", ((40, "violin"),), min_parts=2),
    Instrumentation("solo cello", "cello", ((42, "cello"),), max_parts=1),
    Instrumentation("cello ensemble", "cello", ((42, "cello"),), min_parts=2),
    Instrumentation("flute", "flute", ((73, "flute"),), max_parts=1),
    Instrumentation(
        "woodwind ensemble", "flute", ((73, "flute"), (68, "oboe"), (71, "clarinet"), (70, "bassoon")), min_parts=2
    ),
    Instrumentation("choir", "choir", ((52, "choir"),)),
    Instrumentation("harp", "harp", ((46, "harp"),)),
    Instrumentation("synth pad", "synth", ((89, "synth pad"),)),
    Instrumentation("synth lead", "synth", ((81, "synth lead"),), max_parts=1),
)


class ExcerptError(ValueError):
    """This draw gives no usable excerpt (too few notes, none on the first bar, no clear key); another may."""


@dataclass(frozen=True)
class Measure:
    quarters: float  # its length as written: short for a pickup, or for each half of a split bar
    metre: str  # "3/4", of the time signature in force
    beats: int  # per bar
    beat_quarters: float  # the time signature's beat, in quarter notes (1.5 in 6/8)

    @property
    def bar_quarters(self) -> float:
        return self.beats * self.beat_quarters


@dataclass(frozen=True)
class Arrangement:
    start: int  # index of the first measure (0-based, counting every measure of the top part)
    stop: int  # index after the last measure
    bars: int  # whole bars of the metre, together `seconds` long or a little more
    bpm: int
    metre: str
    beats: int
    beat_quarters: float
    instrumentation: Instrumentation
    drums: bool
    tonic: int  # the pitch class the excerpt's key is moved to

    @property
    def beat_s(self) -> float:
        return 60.0 / self.bpm

    @property
    def bar_s(self) -> float:
        return self.beats * self.beat_s


def measures_of(score) -> list[Measure]:
    """The top part's measures, with the time signature in force in each."""
    from music21 import meter

    measures, signature = [], meter.TimeSignature("4/4")  # music21's default when a score gives none
    for measure in score.parts[0].getElementsByClass("Measure"):
        signature = measure.timeSignature or signature
        measures.append(
            Measure(
                measure.duration.quarterLength,
                signature.ratioString,
                signature.beatCount,
                signature.beatDuration.quarterLength,
            )
        )
    return measures


def _stop(measures: list[Measure], start: int, bars: int) -> int | None:
    """The measure index where `bars` whole bars from `start` end, if the start is a whole bar and no measure
    up to there changes metre or straddles a bar line of its grid; else None."""
    first, eps = measures[start], 1e-6
    bar = first.bar_quarters
    if abs(first.quarters - bar) > eps:
        return None
    position = 0.0
    for i in range(start, len(measures)):
        end = position + measures[i].quarters
        if measures[i].metre != first.metre or math.floor(position / bar + eps) != math.floor(end / bar - eps):
            return None
        position = end
        if position >= bars * bar - eps:
            return i + 1
    return None


def draws(measures: list[Measure], parts: int, rng: random.Random, seconds: float):
    """Arrangements to try for one clip, best first: the instrumentation, drums and tonic are drawn once; the
    tempo and the start are drawn again when an excerpt turns out unusable."""
    fitting = [i for i in INSTRUMENTATIONS if i.min_parts <= parts <= i.max_parts]
    family = rng.choice(sorted({i.family for i in fitting}))  # families equally often: every tag well represented
    instrumentation = rng.choice([i for i in fitting if i.family == family])
    drums, tonic = rng.random() < DRUMS_SHARE, rng.randrange(12)
    for _ in range(ATTEMPTS):
        bpm = rng.randint(*TEMPO_RANGE)
        spans = []
        for start, measure in enumerate(measures):
            bars = math.ceil(seconds * bpm / 60 / measure.beats - 1e-9)
            if (stop := _stop(measures, start, bars)) is not None:
                spans.append((start, stop, bars))
        if not spans:
            continue
        start, stop, bars = rng.choice(spans)
        m = measures[start]
        yield Arrangement(start, stop, bars, bpm, m.metre, m.beats, m.beat_quarters, instrumentation, drums, tonic)


def excerpt(score, arrangement: Arrangement):
    """The arrangement's bars as a new score, without what would change its timing or its sound: repeats and
    endings (music21 would expand them), tempo marks, instruments, chord symbols (they would sound as chords)
    and key signatures (a transposed one can pass 7 sharps, which MIDI readers reject)."""
    from music21 import bar

    cut = score.measures(arrangement.start, arrangement.stop, indicesNotNumbers=True)
    for measure in cut.recurse().getElementsByClass("Measure"):
        if isinstance(measure.leftBarline, bar.Repeat):
            measure.leftBarline = None
        if isinstance(measure.rightBarline, bar.Repeat):
            measure.rightBarline = None
    unwanted = ("RepeatExpression", "RepeatBracket", "TempoIndication", "Instrument", "Harmony", "KeySignature")
    for element in list(cut.recurse().getElementsByClass(unwanted)):
        element.activeSite.remove(element)
    notes = list(cut.flatten().notes)
    bar_quarters = arrangement.beats * arrangement.beat_quarters
    if len(notes) < MIN_NOTES or min(n.offset for n in notes) >= bar_quarters:
        raise ExcerptError(f"measures {arrangement.start}-{arrangement.stop}: too few notes or a silent first bar")
    return cut


def arrange(cut, arrangement: Arrangement):
    """Transpose the excerpt to the arrangement's tonic and set its tempo and instruments (in place). Returns
    the key now heard, as music21 analyses it, with its tonic spelled as the caption spells that key, and
    the transposition in semitones."""
    from music21 import instrument, key, tempo

    found = cut.analyze("key")
    if found.correlationCoefficient < MIN_KEY_CORRELATION:
        where = f"measures {arrangement.start}-{arrangement.stop}"
        raise ExcerptError(f"{where}: no clear key ({found}, r={found.correlationCoefficient:.2f})")
    shift = _interval(found.tonic, arrangement.tonic, found.mode)
    cut.transpose(shift, inPlace=True)
    heard = cut.analyze("key")
    voices = arrangement.instrumentation.parts(len(cut.parts))
    for part, (program, _) in zip(cut.parts, voices, strict=True):
        player = instrument.Instrument()
        player.midiProgram = program
        part.insert(0, player)
        part.insert(0, tempo.MetronomeMark(number=arrangement.bpm, referent=arrangement.beat_quarters))
    return key.Key(TONICS[heard.mode][heard.tonic.pitchClass], heard.mode), shift.semitones


def _interval(tonic, target: int, mode: str):
    """The interval of -6..+5 semitones from `tonic` to `target`, spelled as the usual key of that mode."""
    from music21 import interval, pitch

    semitones = (target - tonic.pitchClass + 6) % 12 - 6
    start = pitch.Pitch(tonic.name, octave=4)
    end = pitch.Pitch(TONICS[mode][target], octave=4)
    end.octave += round((start.ps + semitones - end.ps) / 12)
    return interval.Interval(start, end)


def midi_bytes(cut, arrangement: Arrangement) -> bytes:
    """The arranged excerpt as a standard MIDI file, plus a drum track if the arrangement has drums."""
    from music21 import midi

    song = mido.MidiFile(file=io.BytesIO(midi.translate.streamToMidiFile(cut).writestr()))
    if arrangement.drums:
        song.tracks.append(_drum_track(arrangement, song.ticks_per_beat))
    buf = io.BytesIO()
    song.save(file=buf)
    return buf.getvalue()


def _drum_track(arrangement: Arrangement, ticks_per_quarter: int) -> mido.MidiTrack:
    """A light beat: a kick on every downbeat, a closed hi-hat on every beat, each a sixteenth long."""
    beat = round(arrangement.beat_quarters * ticks_per_quarter)
    events = []
    for i in range(arrangement.bars * arrangement.beats):
        hits = [(HI_HAT, 70)] + ([(KICK, 100)] if i % arrangement.beats == 0 else [])
        for note, velocity in hits:
            events += [(i * beat, "note_on", note, velocity), (i * beat + ticks_per_quarter // 4, "note_off", note, 0)]
    track, now = mido.MidiTrack(), 0
    for tick, kind, note, velocity in sorted(events, key=lambda e: (e[0], e[1] == "note_on")):
        track.append(mido.Message(kind, channel=DRUM_CHANNEL, note=note, velocity=velocity, time=tick - now))
        now = tick
    return track
