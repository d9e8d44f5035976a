"""Training batches from prepared clips, and the stage-2 warm start. Pure PyTorch: the Ray Train loop calls it.

A prepared row (see `jobs/prepare.py`) holds a clip's raw VAE latents (L frames x D), its CLIP features
(F frames x feature_dim, F may be 0) and its caption's token ids. `collate` turns rows into what
`VideoRobin.forward` takes: standardised latents cut into patches, cropped at random to the clip length or
zero-padded past a shorter clip's end (the padded patches are masked out of the loss), with the video
features of the same time window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from model.config import VideoRobinConfig
from model.errors import InputError
from model.videorobin import Conditions, VideoRobin

STAGE2_NEW = ("vision_proj.", "clip.")  # trained from scratch / frozen from the encoders, not from stage 1


@dataclass
class TrainBatch:
    cond: Conditions
    patches: torch.Tensor  # (B, N, P, D) standardised latents
    n_patches: torch.Tensor  # (B,) real patches per row

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> TrainBatch:
        frames = [f.to(device, dtype) if f is not None else None for f in self.cond.frames]
        cond = Conditions([t.to(device) for t in self.cond.text_ids], frames)
        return TrainBatch(cond, self.patches.to(device, dtype), self.n_patches.to(device))


def crop_window(n_frames: int, clip_frames: int, rng: np.random.Generator) -> tuple[int, int]:
    """(first frame, frames kept): a random window of `clip_frames`, or the whole of a shorter clip."""
    if n_frames <= clip_frames:
        return 0, n_frames
    first = int(rng.integers(0, n_frames - clip_frames + 1))
    return first, clip_frames


def mask_inputs(
    text_ids: np.ndarray, features: np.ndarray | None, p: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """AudioX-style input masking: each text token is dropped and each frame feature zeroed with prob p.

    Frames are zeroed rather than dropped so the remaining ones keep their place in time.
    """
    if p <= 0:
        return text_ids, features
    text_ids = text_ids[rng.random(len(text_ids)) >= p]
    if features is not None:
        features = np.where((rng.random(len(features)) < p)[:, None], 0.0, features).astype(np.float32)
    return text_ids, features


def collate(
    batch: dict[str, np.ndarray],
    cfg: VideoRobinConfig,
    clip_s: float,
    mean: np.ndarray,
    std: np.ndarray,
    rng: np.random.Generator,
    input_mask: float = 0.0,
    video_dropout: float = 0.0,
) -> TrainBatch:
    """Rows of prepared shards (numpy columns) -> a `TrainBatch` of at most `clip_s` seconds per row.

    With probability `video_dropout` a row loses its whole video (frames None), so a stage-2 model also
    learns the text-only prompts of stage 1 and one checkpoint serves `generate --prompt` without a video.
    """
    P, D = cfg.patch_size, cfg.latent_dim
    clip_frames = cfg.patches_for(clip_s) * P
    rows = len(batch["id"])
    patches = np.zeros((rows, clip_frames, D), np.float32)
    n_patches, text_ids, frames = [], [], []
    for i in range(rows):
        latents = np.asarray(batch["latents"][i], np.float32).reshape(-1, D)  # (L, D)
        first, kept = crop_window(len(latents), clip_frames, rng)
        patches[i, :kept] = (latents[first : first + kept] - mean) / std
        n_patches.append(max(1, kept // P))  # a trailing partial patch is left out of the loss
        feats = None
        if cfg.vision is not None and int(batch["n_features"][i]) > 0:
            all_feats = np.asarray(batch["features"][i], np.float32).reshape(-1, cfg.vision.feature_dim)
            per_frame = cfg.vision.fps / cfg.latent_rate  # video frames per latent frame
            f0 = min(int(round(first * per_frame)), len(all_feats) - 1)
            feats = all_feats[f0 : f0 + max(1, math.ceil(kept * per_frame))]
        ids = np.asarray(batch["token_ids"][i], np.int64)[: cfg.text.max_tokens]
        ids, feats = mask_inputs(ids, feats, input_mask, rng)
        if feats is not None and video_dropout > 0 and rng.random() < video_dropout:
            feats = None
        text_ids.append(torch.from_numpy(ids))
        frames.append(torch.from_numpy(feats) if feats is not None else None)
    return TrainBatch(
        Conditions(text_ids, frames),
        torch.from_numpy(patches).view(rows, -1, P, D),
        torch.tensor(n_patches),
    )


def step_seed(*keys: int) -> int:
    """A torch seed from (seed, step, micro-step, rank): a resumed run draws the noise an unbroken one would."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def load_weights(model: VideoRobin, state: dict[str, torch.Tensor], allow_missing: tuple[str, ...] = ()) -> None:
    """Load `state` into `model`; only keys under `allow_missing` prefixes may be absent (they keep their init).

    Stage 2 starts from stage-1 weights with `allow_missing=STAGE2_NEW`: the vision projection is new and
    CLIP comes frozen from the encoders.
    """
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(allow_missing)]
    if missing or unexpected:
        raise InputError(
            f"weights do not fit this model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
