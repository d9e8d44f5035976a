"""The engine: requests in, patches and waveforms out. `step`, `stream` and `generate` share one loop.

Per step, for every running row at once: one LocDiT trajectory (cond and uncond halves in one batched
call), then one LocEnc + SemanticLM + RITE step from the KV cache for rows that continue. New requests
join between steps (prefill) and finished ones leave, so a finished row costs nothing.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from model.build import Bundle
from model.config import STATIC_PROMPT, VideoRobinConfig
from model.engine.request import GenerationParams, GenerationRequest
from model.engine.runner import Runner, patch_noise, refine_patches
from model.engine.scheduler import Scheduler
from model.media import probe_video, sample_frames
from model.vae import AudioAutoencoder
from model.videorobin import VideoRobin

Progress = Callable[[int, int], None]  # (patches done, patches total)


@dataclass
class PatchOutput:
    request_id: str
    index: int  # 0-based patch number within the request
    patch: torch.Tensor  # (P, D) standardised latent frames, on the CPU
    finished: bool


@dataclass
class RefineBatch:
    """One step's refinement inputs for the running rows: all a stateless refiner needs."""

    rows: list[int]
    mu: torch.Tensor  # (B, Hd) plans
    prev: torch.Tensor  # (B, P, D) previous patches
    noise: torch.Tensor  # (B, P, D)
    steps: torch.Tensor  # (B,) Euler steps per row
    guidance: torch.Tensor  # (B,) CFG scale per row

    TENSORS = ("mu", "prev", "noise", "steps", "guidance")

    def to(self, device: torch.device | str) -> RefineBatch:
        return RefineBatch(self.rows, *(getattr(self, k).to(device) for k in self.TENSORS))

    @classmethod
    def concat(cls, batches: list[RefineBatch]) -> RefineBatch:
        """Several steps' rows as one batch (row numbers are only meaningful per source)."""
        rows = [r for b in batches for r in b.rows]
        return cls(rows, *(torch.cat([getattr(b, k).cpu() for b in batches]) for k in cls.TENSORS))


@torch.no_grad()
def refine_batch(model: VideoRobin, batch: RefineBatch) -> torch.Tensor:
    """One LocDiT trajectory per row of `batch`: (B, P, D) patches."""
    return refine_patches(model, batch.mu, batch.prev, batch.noise, batch.steps, batch.guidance)


@dataclass
class GenerationResult:
    request_id: str
    latents: torch.Tensor  # (D, L) VAE latents (destandardised), L = n_patches * P
    audio: np.ndarray  # (C, S) float32 at the VAE's sample rate, trimmed to the duration
    sample_rate: int
    duration_s: float


def decode_latents(vae: AudioAutoencoder, latents: torch.Tensor, duration_s: float) -> np.ndarray:
    """(D, L) VAE latents -> (C, S) float32 audio trimmed to `duration_s` (chunked, non-causal decode)."""
    device = next(vae.parameters()).device
    audio = vae.decode(latents[None].to(device))[0]
    return audio[:, : round(duration_s * vae.sample_rate)].float().cpu().numpy()


def tokenize_prompt(tokenizer, cfg: VideoRobinConfig, prompt: str | None) -> torch.Tensor:
    """(Lt,) token ids of the prompt, or of the static video-only prompt when there is none."""
    text = (prompt or "").strip() or STATIC_PROMPT
    ids = tokenizer.encode(text)
    if len(ids) > cfg.text.max_tokens:
        raise ValueError(f"prompt has {len(ids)} tokens; the limit is {cfg.text.max_tokens}")
    return torch.tensor(ids, dtype=torch.long)


def resolve_duration(params: GenerationParams, video_duration_s: float | None, max_duration_s: float) -> float:
    """Seconds of music: the asked duration, else the video's; refused above `max_duration_s`."""
    duration = params.duration_s or video_duration_s
    if duration is None:
        raise ValueError("a duration is needed when no video is given")
    if duration > max_duration_s:
        raise ValueError(f"duration {duration:.2f} s exceeds this engine's limit of {max_duration_s:.0f} s")
    return duration


def check_frames(cfg: VideoRobinConfig, duration_s: float) -> int:
    """How many frames the model sees over `duration_s`; refused above the vision config's maximum."""
    needed = math.ceil(round(duration_s * cfg.vision.fps, 6))
    if needed > cfg.vision.max_frames:
        raise ValueError(
            f"{duration_s:.1f} s needs {needed} frames at {cfg.vision.fps:g} fps; "
            f"the model takes at most {cfg.vision.max_frames}"
        )
    return needed


def build_request(
    cfg: VideoRobinConfig,
    text_ids: torch.Tensor,
    params: GenerationParams,
    duration_s: float,
    frames: torch.Tensor | None,
    request_id: str | None = None,
) -> GenerationRequest:
    if frames is not None and cfg.vision is None:
        raise ValueError("this checkpoint has no vision (stage 1): it cannot take video frames")
    return GenerationRequest(
        request_id=request_id or uuid.uuid4().hex,
        text_ids=text_ids,
        frames=frames,
        duration_s=duration_s,
        n_patches=cfg.patches_for(duration_s),
        params=params.with_defaults(cfg.flow),
    )


class Engine:
    def __init__(
        self, bundle: Bundle, device: torch.device | str = "cpu", max_batch: int = 8, max_duration_s: float = 60.0
    ) -> None:
        self.bundle = bundle.to(device)
        self.cfg = bundle.config
        self.device = torch.device(device)
        self.max_duration_s = max_duration_s
        vision_frames = self.cfg.vision.max_frames if self.cfg.vision is not None else 0
        max_len = self.cfg.text.max_tokens + vision_frames + 1 + self.cfg.patches_for(max_duration_s)
        self.scheduler = Scheduler(max_batch)
        self.runner = Runner(bundle.model.eval(), max_batch, max_len, self.device)

    # ---- preparing requests -------------------------------------------------------------------------

    def tokenize(self, prompt: str | None) -> torch.Tensor:
        return tokenize_prompt(self.bundle.tokenizer, self.cfg, prompt)

    @torch.no_grad()
    def encode_video(self, path: str, duration_s: float) -> torch.Tensor:
        """CLIP features (F, feature_dim) of the frames sampled at the config's fps over `duration_s`."""
        vision, clip = self.cfg.vision, self.bundle.model.clip
        frames = sample_frames(path, vision.fps, clip.image_size, duration_s, vision.max_frames)
        return clip(frames).cpu()

    def make_request(
        self,
        video: str | None = None,
        prompt: str | None = None,
        params: GenerationParams = GenerationParams(),
        frames: torch.Tensor | None = None,
        video_duration_s: float | None = None,
        request_id: str | None = None,
    ) -> GenerationRequest:
        """Prepare a request from a video file (or precomputed frame features) and an optional prompt.

        The duration is `params.duration_s`, else the video's. Raises `MediaError`/`ValueError` on bad input.
        """
        if video is not None:
            video_duration_s = probe_video(video).duration_s
        duration = resolve_duration(params, video_duration_s, self.max_duration_s)
        if self.cfg.vision is not None and video is not None and frames is None:
            check_frames(self.cfg, duration)
            frames = self.encode_video(video, duration)
        return build_request(self.cfg, self.tokenize(prompt), params, duration, frames, request_id)

    # ---- the loop -----------------------------------------------------------------------------------

    def add(self, request: GenerationRequest) -> None:
        self.scheduler.add(request)

    def abort(self, request_id: str) -> None:
        row = self.scheduler.abort(request_id)
        if row is not None:
            self.runner.free([row])

    def begin_step(self) -> RefineBatch | None:
        """Admit waiting requests (prefill), then gather what refining every running row needs; None when idle."""
        admitted = self.scheduler.admit()
        if admitted:
            self.runner.plan_first([row for row, _ in admitted], [req for _, req in admitted])
        rows = self.scheduler.active_rows()
        if not rows:
            return None
        states = [self.scheduler.running[row] for row in rows]
        P, D = self.cfg.patch_size, self.cfg.latent_dim
        noise = torch.stack([patch_noise(s.request.params.seed, s.produced, (P, D)) for s in states])
        mu, prev = self.runner.pending(rows)
        return RefineBatch(
            rows=rows,
            mu=mu,
            prev=prev,
            noise=noise.to(self.device),
            steps=torch.tensor([s.request.params.steps for s in states], device=self.device),
            guidance=torch.tensor([s.request.params.guidance for s in states], device=self.device),
        )

    def refine(self, batch: RefineBatch) -> torch.Tensor:
        """The in-process refiner: (B, P, D) patches. A serving Planner sends `batch` to a Refiner instead."""
        return refine_batch(self.bundle.model, batch)

    def end_step(self, batch: RefineBatch, patches: torch.Tensor) -> list[PatchOutput]:
        """Record each row's refined patch, plan the next one for rows that continue, release finished rows."""
        patches = patches.to(self.device)
        rows = batch.rows
        outputs, continuing, finished = [], [], []
        for row, patch in zip(rows, patches, strict=True):
            state = self.scheduler.record(row)
            outputs.append(PatchOutput(state.request.request_id, state.produced - 1, patch.cpu(), state.finished))
            (finished if state.finished else continuing).append(row)
        if continuing:
            self.runner.plan_next(continuing, patches[[rows.index(r) for r in continuing]])
        for row in finished:
            self.scheduler.release(row)
        if finished:
            self.runner.free(finished)
        return outputs

    def step(self) -> list[PatchOutput]:
        """One step of the loop with the in-process refiner: every running row gets one patch."""
        batch = self.begin_step()
        return [] if batch is None else self.end_step(batch, self.refine(batch))

    def stream(self, requests: list[GenerationRequest], progress: Progress | None = None) -> Iterator[PatchOutput]:
        """Yield patches as they are produced, for all `requests` advancing together."""
        for request in requests:
            self.add(request)
        total, done = sum(r.n_patches for r in requests), 0
        while self.scheduler.has_work():
            for output in self.step():
                done += 1
                if progress is not None:
                    progress(done, total)
                yield output

    def generate_latents(
        self, requests: list[GenerationRequest], progress: Progress | None = None
    ) -> dict[str, torch.Tensor]:
        """Whole clips: request id -> (N * P, D) standardised latent frames."""
        patches: dict[str, list[torch.Tensor]] = {r.request_id: [] for r in requests}
        for output in self.stream(requests, progress):
            patches[output.request_id].append(output.patch)
        return {rid: torch.cat(p) for rid, p in patches.items()}

    def to_latents(self, frames: torch.Tensor) -> torch.Tensor:
        """(L, D) standardised frames -> (D, L) VAE latents on the CPU."""
        return self.bundle.model.destandardize(frames[None].to(self.device))[0].cpu()

    def decode(self, frames: torch.Tensor, duration_s: float) -> tuple[torch.Tensor, np.ndarray]:
        """(L, D) standardised frames -> (D, L) latents and (C, S) audio trimmed to `duration_s`."""
        latents = self.to_latents(frames)
        return latents, decode_latents(self.bundle.vae, latents, duration_s)

    def generate(self, requests: list[GenerationRequest], progress: Progress | None = None) -> list[GenerationResult]:
        """Generate and decode whole clips; results in the order of `requests`."""
        latents = self.generate_latents(requests, progress)
        results = []
        for r in requests:
            lat, audio = self.decode(latents[r.request_id], r.duration_s)
            results.append(GenerationResult(r.request_id, lat, audio, self.bundle.vae.sample_rate, r.duration_s))
        return results
