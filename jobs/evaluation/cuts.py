"""Does the music follow the video's pace? Scene cuts from frames, scored against beats in the audio."""

from __future__ import annotations

import numpy as np

CUT_THRESHOLD = 0.4  # half the histogram mass moving between frames; motion within a shot moves far less
ANALYSIS_SIZE = 64
BINS = 16


def _histogram(frame: np.ndarray) -> np.ndarray:
    """Per-channel colour histogram of an (H, W, 3) uint8 frame, normalised to sum 1 per channel."""
    hist = np.stack([np.bincount(frame[..., c].ravel() // (256 // BINS), minlength=BINS) for c in range(3)])
    return hist / hist.sum(1, keepdims=True)


def detect_cuts(path: str, threshold: float = CUT_THRESHOLD) -> np.ndarray:
    """Times (s) of the first frame of each new shot: where the colour histogram jumps between frames.

    The histogram distance (half the L1 difference, in [0, 1], averaged over channels) ignores where
    things are in the frame, so motion inside a shot stays low while a cut to a new shot is high.
    """
    import av

    times, previous = [], None
    with av.open(path) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            hist = _histogram(frame.to_ndarray(width=ANALYSIS_SIZE, height=ANALYSIS_SIZE, format="rgb24"))
            if previous is not None and 0.5 * np.abs(hist - previous).sum(1).mean() > threshold:
                times.append(float(frame.time))
            previous = hist
    return np.asarray(times)


def cut_alignment(cuts: np.ndarray, beats: np.ndarray, window: float = 0.1) -> dict[str, float]:
    """F-measure, precision and recall of beats against cuts, each cut matched to at most one beat within
    `window` seconds (mir_eval's onset matching). Recall is the share of cuts that land on a beat."""
    import mir_eval

    cuts, beats = np.sort(np.asarray(cuts, float)), np.sort(np.asarray(beats, float))
    if len(cuts) == 0 or len(beats) == 0:
        return {"f_measure": 0.0, "precision": 0.0, "recall": 0.0}
    f, precision, recall = mir_eval.onset.f_measure(cuts, beats, window=window)
    return {"f_measure": float(f), "precision": float(precision), "recall": float(recall)}


def cut_chooser(cuts: np.ndarray):
    """`--align-cuts`' choice (model/engine/align.py): the candidate whose beats fall best on the cuts inside
    its window, by the same beat tracker and F-measure as the evaluation; ties and cut-free windows keep
    candidate 0 (the plain one)."""
    from jobs.evaluation.music import beat_times

    cuts = np.asarray(cuts, float)

    def choose(start_s: float, candidates: list[np.ndarray], sample_rate: int) -> int:
        span = candidates[0].shape[1] / sample_rate
        inside = cuts[(cuts >= start_s) & (cuts < start_s + span)] - start_s
        if len(inside) == 0:
            return 0
        scores = [cut_alignment(inside, beat_times(audio, sample_rate)[1])["f_measure"] for audio in candidates]
        return int(np.argmax(scores))

    return choose
