"""Captions for `make-dataset` clips: what a creator would ask for, in varied words.

Every caption states the key and the tempo in a form `jobs.evaluation.music.parse_key` / `parse_tempo` read
back ("F sharp minor", "E♭ major", "Bb major", "90 BPM", "72 bpm"). The instrument, mood words (from the
mode and the tempo), metre, style and composer come and go with the template. Training captions sometimes
leave out the instrument or the mood, so the model also learns from prompts that give only some attributes;
held-out captions always give all of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from jobs.corpus import TRADITIONAL

DROP_SHARE = 0.2  # of training captions that leave out the instrument, and (independently) the mood
SLOW, FAST = 90, 130  # BPM bounds of the "slow" and "fast" tempo words
MOODS = {
    ("major", "slow"): ("calm", "gentle", "peaceful", "tender", "serene"),
    ("major", "moderate"): ("warm", "cheerful", "graceful", "pleasant", "sunny"),
    ("major", "fast"): ("bright", "lively", "joyful", "energetic", "playful"),
    ("minor", "slow"): ("melancholic", "sombre", "mournful", "sad", "brooding"),
    ("minor", "moderate"): ("wistful", "pensive", "plaintive", "bittersweet", "yearning"),
    ("minor", "fast"): ("dramatic", "restless", "urgent", "stormy", "tense"),
}
PACE = {"slow": ("slow", "leisurely"), "moderate": ("moderate", "steady", "mid-tempo"), "fast": ("fast", "brisk")}
# {key} {bpm} always; {instrument} {mood} {pace} {metre} {style} {composer} only in templates that name them.
TEMPLATES = (
    "{key}, {bpm}",
    "A {pace} {instrument} piece in the key of {key}, {bpm}",
    "{Mood} {instrument} in {key} at {bpm}, {metre} time",
    "{mood} {instrument}, {key}, {bpm}",
    "{Style} for {instrument}{composer}, in {key}, {bpm}, {metre} time",
    "Music for {instrument} in {key}, {metre}, {bpm}; mood: {mood}",
    "Write a piece for {instrument} in {key}, {mood}. Tempo: {bpm}.",
    "{bpm}, {key}, {instrument}, {mood}, {pace}",
    "{Style}{composer} in {key}, {bpm}, played on {instrument}",
    "Soundtrack cue: {mood}, {key}, {bpm}, {instrument}",
    "{Mood} {style} in {metre}, {key}, {bpm}",
    "{Pace} {key} {instrument}, {bpm}",
)
OPTIONAL = ("instrument", "mood")  # what a training caption may leave out


@dataclass(frozen=True)
class Facts:
    key: str  # spelled by `spell_key`: "F-sharp minor", "E-flat major"
    bpm: int
    instrument: str  # "string quartet"
    drums: bool
    metre: str  # "3/4"
    style: str  # "baroque chorale"
    composer: str  # "J.S. Bach", TRADITIONAL, or "" when unknown


def pace(bpm: int) -> str:
    return "slow" if bpm < SLOW else "fast" if bpm >= FAST else "moderate"


def caption(facts: Facts, rng: random.Random, complete: bool) -> str:
    """A caption of the facts. `complete` (held-out rows): a template that names the instrument and the mood."""
    mode = facts.key.split()[-1]
    words = {
        "key": _key_words(facts.key, rng),
        "bpm": rng.choice(("{} BPM", "{} bpm", "{}BPM")).format(facts.bpm),
        "instrument": facts.instrument + (rng.choice((" with light drums", " and drums")) if facts.drums else ""),
        "mood": _mood(mode, facts.bpm, rng),
        "pace": rng.choice(PACE[pace(facts.bpm)]),
        "metre": facts.metre,
        "style": facts.style,
        "composer": _by(facts.composer),
    }
    if complete:
        usable = [t for t in TEMPLATES if all(_names(t, name) for name in OPTIONAL)]
    else:
        dropped = [name for name in OPTIONAL if rng.random() < DROP_SHARE]
        usable = [t for t in TEMPLATES if not any(_names(t, name) for name in dropped)]
    template = rng.choice(usable)
    return _capital(template.format(**words, **{name.capitalize(): _capital(v) for name, v in words.items()}))


def _names(template: str, word: str) -> bool:
    return "{" + word + "}" in template.lower()


def _key_words(key: str, rng: random.Random) -> str:
    """ "F-sharp minor" as one of the spellings people write: "F-sharp minor", "F sharp minor", "F# minor"."""
    tonic, mode = key.rsplit(" ", 1)
    letter, _, accidental = tonic.partition("-")
    if not accidental:
        return key
    symbol = {"sharp": ("#", "♯"), "flat": ("b", "♭")}[accidental]
    return rng.choice((key, f"{letter} {accidental} {mode}", f"{letter}{rng.choice(symbol)} {mode}"))


def _mood(mode: str, bpm: int, rng: random.Random) -> str:
    return " and ".join(rng.sample(MOODS[mode, pace(bpm)], rng.choice((1, 1, 2))))


def _by(composer: str) -> str:
    return f" by {composer}" if composer and composer != TRADITIONAL else ""  # folk styles say "folk" already


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]
