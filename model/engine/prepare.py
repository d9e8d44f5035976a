"""Turning what a caller asks for into a `GenerationRequest`: prompt tokens, duration and its limit, the
audio prompt's part the engine reads. Shared by `Engine.make_request` and the server's front end, which
checks requests before any model work."""

from __future__ import annotations

import uuid

import torch

from model.config import STATIC_PROMPT, VideoRobinConfig
from model.engine.request import AudioPrompt, GenerationParams, GenerationRequest
from model.engine.windows import FeatureFrames, FrameSource
from model.errors import InputError

DEFAULT_MAX_DURATION_S = 2 * 3600.0  # the only length limit: what one request may ask for
PROMPT_MARGIN_PATCHES = 13  # ~2 s of audio before the context patches: the VAE encoder's receptive field


def tokenize_prompt(tokenizer, cfg: VideoRobinConfig, prompt: str | None) -> torch.Tensor:
    """(Lt,) token ids of the prompt, or of the static video-only prompt when there is none."""
    text = (prompt or "").strip() or STATIC_PROMPT
    ids = tokenizer.encode(text)
    if len(ids) > cfg.text.max_tokens:
        raise InputError(f"prompt has {len(ids)} tokens; the limit is {cfg.text.max_tokens}")
    return torch.tensor(ids, dtype=torch.long)


def resolve_duration(params: GenerationParams, video_duration_s: float | None, max_duration_s: float) -> float:
    """Seconds of music: the asked duration, else the video's; refused above `max_duration_s`."""
    duration = params.duration_s or video_duration_s
    if duration is None:
        raise InputError("a duration is needed when no video is given")
    if duration > max_duration_s:
        raise InputError(f"duration {duration:.2f} s exceeds this engine's limit of {max_duration_s:.0f} s")
    return duration


def build_request(
    cfg: VideoRobinConfig,
    text_ids: torch.Tensor,
    params: GenerationParams,
    duration_s: float,
    frames: FrameSource | torch.Tensor | None,
    request_id: str | None = None,
    context: torch.Tensor | None = None,
    first_patch: int = 0,
) -> GenerationRequest:
    if frames is not None and cfg.vision is None:
        raise InputError("this checkpoint has no vision (stage 1): it cannot take video frames")
    return GenerationRequest(
        request_id=request_id or uuid.uuid4().hex,
        text_ids=text_ids,
        frames=FeatureFrames(frames) if isinstance(frames, torch.Tensor) else frames,
        duration_s=duration_s,
        n_patches=cfg.patches_for(duration_s),
        params=params.with_defaults(cfg.flow),
        context=context,
        first_patch=first_patch,
    )


def samples_per_patch(cfg: VideoRobinConfig) -> int:
    return cfg.vae.hop * cfg.patch_size


def prompt_tail(cfg: VideoRobinConfig, prompt: AudioPrompt) -> AudioPrompt:
    """The part of an audio prompt the engine reads (`Engine.prompt_patches`): what a front end sends it."""
    return prompt.tail(samples_per_patch(cfg), cfg.context_patches + PROMPT_MARGIN_PATCHES)
