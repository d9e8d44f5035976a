"""Generation windows: how a clip of any length is written by a model trained on short clips.

A request is written in windows of `window_patches` (the training clips' length). The first window opens
with the audio prompt's last patches (none without a prompt); every later one opens with the last
`context_patches` already written, then continues. Each window's prefill holds the text, the frames on
screen during the window (times relative to the window's start, as in training) and that context, so
the KV cache never holds more than one window and memory stays flat with length.

Patch numbers here are on the clip's timeline: patch k plays from k x patch_s seconds of the video.
A request's new patches start at `first_patch` (0, or the `--from` point of a regenerated track).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from model.config import VideoRobinConfig


@dataclass(frozen=True)
class Window:
    start: int  # timeline patch at which the window (its context included) starts
    context: int  # patches of earlier audio that open it
    new: int  # patches it writes


def windows_of(cfg: VideoRobinConfig, first_patch: int, n_patches: int, prompt_patches: int) -> list[Window]:
    """The windows that write patches [first_patch, first_patch + n_patches) after `prompt_patches` of prompt."""
    W, C = cfg.window_patches, cfg.context_patches
    context = min(prompt_patches, C)
    out, written = [], 0
    while written < n_patches:
        start = first_patch + written - context
        new = min(W - context, n_patches - written)
        out.append(Window(start, context, new))
        written += new
        context = C
    return out


def frames_per_window(cfg: VideoRobinConfig) -> int:
    """The most frames one window sees (its span may straddle one more frame than span x fps)."""
    return math.ceil(round(cfg.window_patches * cfg.patch_s * cfg.vision.fps, 6)) + 1


class FrameSource(Protocol):
    """The CLIP features of a video, window by window: only one window's frames are ever decoded at once."""

    def features(self, first: int, count: int) -> torch.Tensor:
        """(count, feature_dim) features of frames first .. first + count - 1 (frame k is at k / fps s)."""
        ...


class FeatureFrames:
    """Features computed up front (tests, training data, callers that already have them)."""

    def __init__(self, features: torch.Tensor) -> None:
        self.all = features

    def features(self, first: int, count: int) -> torch.Tensor:
        return self.all[first : first + count]


class VideoFrames:
    """A video file read window by window: each call seeks, decodes the window's frames and encodes them."""

    def __init__(self, path: str, fps: float, size: int, encode: Callable[[np.ndarray], torch.Tensor]) -> None:
        self.path, self.fps, self.size, self.encode = path, fps, size, encode

    def features(self, first: int, count: int) -> torch.Tensor:
        from model.media import sample_frames  # PyAV only where a video is read

        frames = sample_frames(self.path, self.fps, self.size, count / self.fps, count, start_s=first / self.fps)
        return self.encode(frames)


def window_frames(
    cfg: VideoRobinConfig, source: FrameSource, window: Window, duration_s: float
) -> tuple[torch.Tensor, float]:
    """The frames on screen during `window` (clipped to the video's [0, duration)) and the time of the first
    one after the window's start."""
    fps = cfg.vision.fps
    total = math.ceil(round(duration_s * fps, 6))  # frames of the whole clip
    t0 = window.start * cfg.patch_s
    t1 = (window.start + window.context + window.new) * cfg.patch_s
    first = min(total, max(0, math.ceil(round(t0 * fps, 6))))
    last = min(total, max(0, math.ceil(round(t1 * fps, 6))))
    features = source.features(first, last - first) if last > first else None
    return features, first / fps - t0
