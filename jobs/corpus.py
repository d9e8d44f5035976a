"""The pieces `make-dataset` draws from: music21's bundled corpus, in a seeded order, each in one split.

Choosing pieces reads file names and, in ABC tune books, the `X:` lines, so it takes well under a second;
scores are parsed later, one per render task. Pieces come in collections (Bach chorales, Palestrina masses,
classical quartets, fiddle tunes, ...). The order interleaves the collections by weight, so the first few
hundred pieces, which a run of a couple of thousand clips uses, already mix every style instead of being
mostly Palestrina and folk tunes, the corpus's largest folders.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from dataclasses import dataclass
from functools import cache

TRADITIONAL = "traditional"
FORMATS = (".mxl", ".xml", ".musicxml", ".krn", ".abc")  # notated music; not .rntxt (roman-numeral analyses)
MAX_BYTES = 400_000  # larger files take tens of seconds to parse
MIN_MEASURES = 8
MIN_NOTES = 16


@dataclass(frozen=True)
class Piece:
    path: str  # inside music21's corpus, e.g. "bach/bwv66.6.mxl"
    number: int | None  # the tune's X: number in an ABC tune book
    composer: str  # "" when unknown
    style: str

    @property
    def name(self) -> str:
        """The piece's identity in the manifest (`piece`) and in the split hash."""
        return f"{self.path}#{self.number}" if self.number is not None else self.path


@dataclass(frozen=True)
class Source:
    collection: str
    prefix: str  # corpus path prefix; the first source whose prefix matches a file takes it
    style: str
    composer: str


SOURCES = (
    Source("chorales", "bach/bwv", "baroque chorale", "J.S. Bach"),
    Source("masses", "palestrina/", "renaissance mass movement", "Palestrina"),
    Source("madrigals", "monteverdi/", "renaissance madrigal", "Claudio Monteverdi"),
    Source("madrigals", "lusitano/", "renaissance madrigal", "Vicente Lusitano"),
    Source("classical", "mozart/", "classical quartet movement", "W.A. Mozart"),
    Source("classical", "haydn/", "classical quartet movement", "Joseph Haydn"),
    Source("classical", "beethoven/", "classical quartet movement", "Ludwig van Beethoven"),
    Source("classical", "cpebach/", "galant keyboard piece", "C.P.E. Bach"),
    Source("classical", "handel/", "baroque aria", "G.F. Handel"),
    Source("classical", "corelli/", "baroque trio sonata", "Arcangelo Corelli"),
    Source("classical", "schumann_robert/", "romantic piece", "Robert Schumann"),
    Source("classical", "schumann_clara/", "romantic piece", "Clara Schumann"),
    Source("classical", "schubert/", "romantic song", "Franz Schubert"),
    Source("classical", "chopin/", "romantic mazurka", "Frederic Chopin"),
    Source("classical", "weber/", "romantic concertino", "Carl Maria von Weber"),
    Source("classical", "verdi/", "opera aria", "Giuseppe Verdi"),
    Source("classical", "beach/", "romantic song", "Amy Beach"),
    Source("classical", "joplin/", "ragtime", "Scott Joplin"),
    Source("classical", "johnson_j_r/", "hymn", "J. Rosamond Johnson"),
    Source("classical", "liliuokalani/", "Hawaiian song", "Liliuokalani"),
    Source("medieval", "trecento/", "medieval polyphony", ""),
    Source("medieval", "ciconia/", "medieval motet", "Johannes Ciconia"),
    Source("fiddle", "ryansMammoth/", "fiddle tune", TRADITIONAL),
    Source("irish", "oneills1850/", "Irish folk tune", TRADITIONAL),
    Source("folk songs", "essenFolksong/han", "Chinese folk song", TRADITIONAL),
    Source("folk songs", "essenFolksong/", "European folk song", TRADITIONAL),
    Source("airs", "airdsAirs/", "Scottish air", TRADITIONAL),
    Source("airs", "miscFolk/americanfife", "American fife tune", TRADITIONAL),
    Source("airs", "miscFolk/northumbrian", "Northumbrian folk tune", TRADITIONAL),
)
# Relative share of each collection in the order (a small collection is used up early, then the rest share).
WEIGHTS = {
    "chorales": 2.0,
    "masses": 1.0,
    "madrigals": 1.0,
    "classical": 2.0,
    "medieval": 0.5,
    "fiddle": 1.0,
    "irish": 1.0,
    "folk songs": 1.0,
    "airs": 0.5,
}
# Ryan's Mammoth Collection names its tunes "...Reel", "...Jig": the caption can say which dance it is.
DANCES = ("Reel", "Jig", "Slipjig", "Hornpipe", "Strathspey", "Clog", "Fling", "Waltz", "Polka", "March")
EXCLUDED = ("essenFolksong/test",)  # music21's parser test files, not songs


class PieceError(RuntimeError):
    """A piece that cannot give a clip (it does not parse, is too short, has no notes); it is skipped."""


def _source(path: str) -> Source | None:
    if path.startswith(EXCLUDED):
        return None
    return next((s for s in SOURCES if path.startswith(s.prefix)), None)


def _style(source: Source, path: str) -> str:
    if source.collection == "fiddle":
        dance = next((d for d in DANCES if os.path.splitext(path)[0].endswith(d)), None)
        return f"{TRADITIONAL} {dance.lower().replace('slipjig', 'slip jig')}" if dance else source.style
    return source.style


def _tune_numbers(path: str) -> list[int]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return [int(m.group(1)) for line in f if (m := re.match(r"X:\s*(\d+)", line))]


@cache
def candidates() -> tuple[Piece, ...]:
    """Every usable piece in the corpus, by collection; a tune book gives one piece per tune."""
    from music21 import corpus

    files = sorted(str(p) for p in corpus.getPaths())
    root, pieces, seen = os.path.commonpath(files), [], set()
    for full in files:
        path = os.path.relpath(full, root)
        stem, ext = os.path.splitext(path)
        source = _source(path)
        if source is None or ext not in FORMATS or stem in seen or os.path.getsize(full) > MAX_BYTES:
            continue
        seen.add(stem)  # a movement stored as both .krn and .mxl is one piece (the .krn, first in order)
        numbers = _tune_numbers(full) if ext == ".abc" else []
        if len(numbers) > 1:
            pieces += [Piece(path, n, source.composer, _style(source, path)) for n in numbers]
        else:
            pieces.append(Piece(path, None, source.composer, _style(source, path)))
    return tuple(pieces)


def collection(piece: Piece) -> str:
    return _source(piece.path).collection


def ordered(seed: int) -> list[Piece]:
    """All candidates in the seed's order: shuffled inside each collection, then interleaved by weight."""
    members: dict[str, list[Piece]] = {name: [] for name in WEIGHTS}
    for piece in candidates():
        members[collection(piece)].append(piece)
    keyed = []
    for name, weight in WEIGHTS.items():
        rng = random.Random(f"{seed}/{name}")
        pieces = members[name]
        rng.shuffle(pieces)
        keyed += [((rank + rng.random()) / weight, p.name, p) for rank, p in enumerate(pieces)]
    return [p for *_, p in sorted(keyed, key=lambda k: k[:2])]


def split_of(piece: Piece, seed: int, heldout_fraction: float) -> str:
    """The piece's split, "heldout" for about `heldout_fraction` of pieces, else "train": a hash of the piece
    and the seed only, so it never changes with the number of clips."""
    digest = hashlib.sha256(f"{seed}/{piece.name}".encode()).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") / 2**64 < heldout_fraction else "train"


def parse(piece: Piece):
    """The piece's score, checked to be long enough and to hold real notes."""
    from music21 import corpus, stream

    try:
        score = corpus.parse(piece.path, number=piece.number) if piece.number is not None else corpus.parse(piece.path)
    except Exception as err:  # music21 raises many types on malformed files
        raise PieceError(f"does not parse ({type(err).__name__}: {err})") from None
    if not isinstance(score, stream.Score) or not score.parts:
        raise PieceError(f"not a single score ({type(score).__name__})")
    measures = len(score.parts[0].getElementsByClass("Measure"))
    notes = len(score.recurse().notes)
    if measures < MIN_MEASURES or notes < MIN_NOTES:
        raise PieceError(f"too short ({measures} measures, {notes} notes)")
    return score
