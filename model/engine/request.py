"""Per-request generation parameters and the prepared request the engine schedules."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from model.config import SOLVERS, FlowConfig, VideoRobinConfig
from model.engine.windows import FrameSource
from model.errors import InputError
from model.vae import DecodeWindow, StreamingLatents


@dataclass(frozen=True)
class GenerationParams:
    """What a caller may choose per request; never stored on the model."""

    seed: int = 0
    duration_s: float | None = None  # None: the video's duration
    steps: int | None = None  # None: the model's own (flow.steps in its config)
    guidance: float | None = None  # None: the model's own (flow.guidance)
    solver: str | None = None  # "euler" or "midpoint"; None: the model's own (flow.solver)

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise InputError(f"steps must be at least 1 (got {self.steps})")
        if self.solver not in (None, *SOLVERS):
            raise InputError(f"solver must be one of {', '.join(SOLVERS)} (got {self.solver!r})")
        if self.guidance is not None and self.guidance < 0:
            raise InputError(f"guidance (cfg) must be >= 0 (got {self.guidance})")
        if self.duration_s is not None and not self.duration_s > 0:
            raise InputError(f"duration must be positive (got {self.duration_s})")
        if not 0 <= self.seed < 2**63:
            raise InputError(f"seed must be in [0, 2**63) (got {self.seed})")

    def with_defaults(self, flow: FlowConfig) -> GenerationParams:
        """These parameters with the model's sampler settings where the caller left them open."""
        steps = flow.steps if self.steps is None else self.steps
        guidance = flow.guidance if self.guidance is None else self.guidance
        solver = flow.solver if self.solver is None else self.solver
        return replace(self, steps=steps, guidance=guidance, solver=solver)


@dataclass(frozen=True)
class AudioPrompt:
    """Music to continue (AudioX's audio input, MusicGen's continuation), at the VAE's sample rate.

    Without `from_s` the new music follows the whole prompt; with it, the prompt is a track kept up to
    `from_s` (cut down to the patch grid) and the new music replaces the rest. `tail` keeps only what the
    engine reads (the end of the kept part), remembering how much of the track came before it."""

    audio: np.ndarray  # (C, S) float32
    sample_rate: int
    from_s: float | None = None
    dropped: int = 0  # samples of the track before `audio` (whole patches), see `tail`
    track_s: float | None = None  # the whole track's length, when `audio` is a tail of it

    def __post_init__(self) -> None:
        if self.from_s is not None and not 0 < self.from_s < self.seconds:
            raise InputError(f"--from {self.from_s:g} s is outside the track (0 to {self.seconds:.2f} s)")

    @property
    def seconds(self) -> float:
        return self.track_s if self.track_s is not None else self.audio.shape[1] / self.sample_rate

    def kept(self, samples_per_patch: int) -> np.ndarray:
        """The audio the new music follows: all of it, or the track up to `from_s` on the patch grid."""
        if self.from_s is None:
            return self.audio
        end = int(self.from_s * self.sample_rate) // samples_per_patch * samples_per_patch - self.dropped
        return self.audio[:, :end]

    def kept_patches(self, samples_per_patch: int) -> int:
        """Whole patches of the kept audio, counted from the track's start."""
        return (self.dropped + self.kept(samples_per_patch).shape[1]) // samples_per_patch

    def tail(self, samples_per_patch: int, patches: int) -> AudioPrompt:
        """The same prompt, holding only the last `patches` patches of the kept audio."""
        kept = self.kept(samples_per_patch)
        start = max(0, kept.shape[1] - patches * samples_per_patch)
        return AudioPrompt(kept[:, start:], self.sample_rate, self.from_s, self.dropped + start, self.seconds)

    def output_lead(self, include_prompt: bool, samples_per_patch: int) -> np.ndarray:
        """What a soundtrack starts with before the new music: the kept track (`from_s`), the prompt itself
        (`include_prompt`), or nothing."""
        if self.from_s is not None:
            return self.kept(samples_per_patch)
        return self.audio if include_prompt else self.audio[:, :0]


@dataclass
class GenerationSpec:
    """What a server's front end sends the replica that runs the engine; it builds the request there
    (`Engine.make_request`), where the VAE that reads the audio prompt lives."""

    request_id: str
    prompt: str | None
    params: GenerationParams
    video: bytes | None  # the video file
    video_duration_s: float | None
    audio: AudioPrompt | None  # its tail only (AudioPrompt.tail)
    align_cuts: int = 1  # candidates per window (model/engine/align.py)


@dataclass
class RequestInfo:
    """The first message of a served stream: the request as the engine resolved it."""

    duration_s: float  # seconds of new music
    n_patches: int
    lead: np.ndarray | None  # (D, c * P) VAE latents of the prompt's last patches: decoded first, then dropped

    def decoder(self, cfg: VideoRobinConfig) -> tuple[StreamingLatents, list[tuple[DecodeWindow, np.ndarray]]]:
        """The streaming decode of the new music, and the decode windows ready before any new patch. An audio
        prompt's last patches are decoded first and their audio dropped, so the new music joins the prompt
        without a click or a gap."""
        lead = 0 if self.lead is None else self.lead.shape[1]
        total = lead + self.n_patches * cfg.patch_size
        clip = StreamingLatents(cfg.vae, total, round(self.duration_s * cfg.vae.sample_rate), skip=lead * cfg.vae.hop)
        return clip, clip.add(self.lead) if lead else []


@dataclass
class GenerationRequest:
    """A request ready to schedule: tokenised prompt, the video's frames, resolved length, audio prompt."""

    request_id: str
    text_ids: torch.Tensor  # (Lt,) long
    frames: FrameSource | None  # the video's CLIP features, read window by window; None: no video
    duration_s: float  # seconds of new music
    n_patches: int  # new patches
    params: GenerationParams  # resolved: steps, guidance and solver are set
    # Audio prompt (continuation, `--from`): its last patches (A, P, D), standardised; they open the first
    # window and are never written again. The new music starts at timeline patch `first_patch`.
    context: torch.Tensor | None = None
    first_patch: int = 0
