"""Embedding models for the distribution and cross-modal metrics, each loaded from a local path or URI.

Audio embedders (`AudioEmbedder`): a clip -> one embedding, plus class probabilities for classifiers.

    musicnn   musicnn MTT tagger (weights ship with this package): 200-d, 50 tags   offline
    vggish    VGGish (torchvggish .pth): 128-d, for FAD
    panns     PANNs CNN14 (.pth): 2048-d, 527 AudioSet classes, for FD, KL and IS

Cross-modal scorers: `clap.ClapScorer` (audio-text cosine), `imagebind.ImageBindScorer` (audio-video
cosine).
Every number a report prints names the embedder that produced it.
"""

from __future__ import annotations

from jobs.evaluation.embedders.base import AudioEmbedder, AudioFeatures
from model.errors import InputError
from model.io import uri_exists

AUDIO_EMBEDDERS = ("musicnn", "vggish", "panns")
NEEDS_WEIGHTS = ("vggish", "panns")


def parse_embedder(spec: str) -> tuple[str, str | None]:
    """ "NAME" or "NAME=URI" -> (name, uri); a clear ValueError for an unknown name or missing weights."""
    name, _, uri = spec.partition("=")
    name = name.strip().lower()
    if name not in AUDIO_EMBEDDERS:
        raise InputError(f"unknown embedder {name!r}; choose from {', '.join(AUDIO_EMBEDDERS)}")
    if name in NEEDS_WEIGHTS and not uri:
        raise InputError(f"embedder {name} needs its weights: --embedder {name}=PATH_OR_URI")
    return name, uri or None


def check_weights(name: str, uri: str | None) -> None:
    """On the driver, before any actor starts: the embedder's weights are there (one line if not)."""
    if uri is not None:
        if not uri_exists(uri):
            raise InputError(f"embedder {name}: no weights at {uri}")
    elif name == "musicnn":
        from jobs.evaluation.embedders.musicnn import default_weights

        try:
            default_weights()
        except FileNotFoundError as err:
            raise InputError(str(err)) from None


def load_audio_embedder(name: str, weights: str | None) -> AudioEmbedder:
    if name == "musicnn":
        from jobs.evaluation.embedders.musicnn import MusicnnEmbedder

        return MusicnnEmbedder(weights)
    if name == "vggish":
        from jobs.evaluation.embedders.vggish import VGGishEmbedder

        return VGGishEmbedder(weights)
    if name == "panns":
        from jobs.evaluation.embedders.panns import PannsEmbedder

        return PannsEmbedder(weights)
    raise ValueError(f"unknown embedder {name!r}")


__all__ = [
    "AUDIO_EMBEDDERS",
    "AudioEmbedder",
    "AudioFeatures",
    "check_weights",
    "load_audio_embedder",
    "parse_embedder",
]
