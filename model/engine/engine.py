"""The engine: requests in, patches and waveforms out. `step`, `stream` and `generate` share one loop.

Per step, for every running row at once: one LocDiT trajectory (cond and uncond halves in one batched
call), then one LocEnc + SemanticLM + RITE step from the KV cache for rows that continue. New requests
join between steps (prefill) and finished ones leave, so a finished row costs nothing. A row that reaches
the end of a generation window (model/engine/windows.py) is prefilled again with the next window's frames
and its last patches while the other rows keep stepping, so clips of any length share one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from model.build import Bundle
from model.config import ComputeDtype, DecodeDtype
from model.engine.decoding import WindowDecoder
from model.engine.precision import loop_model
from model.engine.prepare import (
    DEFAULT_MAX_DURATION_S,
    PROMPT_MARGIN_PATCHES,
    build_request,
    resolve_duration,
    samples_per_patch,
    tokenize_prompt,
)
from model.engine.refine import BatchRefiner
from model.engine.request import AudioPrompt, GenerationParams, GenerationRequest, RequestInfo
from model.engine.runner import Runner, patch_noise
from model.engine.scheduler import RowState, Scheduler
from model.engine.windows import FrameSource, VideoFrames, frames_per_window, window_frames, windows_of
from model.errors import InputError, MediaError
from model.vae import AudioAutoencoder, decode_window_array
from model.videorobin import Conditions

Progress = Callable[[int, int], None]  # (patches done, patches total)


@dataclass
class PatchOutput:
    request_id: str
    index: int  # 0-based patch number within the request
    patch: torch.Tensor | None  # (P, D) standardised latent frames, on the CPU; None when it failed
    finished: bool
    error: str | None = None  # why the request stopped (its video could not be read mid-way)


@dataclass
class RefineBatch:
    """One step's refinement inputs for the running rows: all a stateless refiner needs."""

    rows: list[int]
    mu: torch.Tensor  # (B, Hd) plans
    prev: torch.Tensor  # (B, P, D) previous patches
    noise: torch.Tensor  # (B, P, D)
    steps: torch.Tensor  # (B,) solver steps per row, on the host (below)
    guidance: torch.Tensor  # (B,) CFG scale per row
    midpoint: torch.Tensor  # (B,) bool: the row's solver is midpoint (else Euler), on the host

    TENSORS = ("mu", "prev", "noise", "steps", "guidance", "midpoint")
    HOST = ("steps", "midpoint")  # the sampler's loop bounds: read on the host, never waiting for the device

    def to(self, device: torch.device | str) -> RefineBatch:
        return RefineBatch(self.rows, *(self._moved(k, device) for k in self.TENSORS))

    def _moved(self, key: str, device: torch.device | str) -> torch.Tensor:
        t = getattr(self, key)
        return t.cpu() if key in self.HOST else t.to(device, non_blocking=True)

    @classmethod
    def concat(cls, batches: list[RefineBatch]) -> RefineBatch:
        """Several steps' rows as one batch (row numbers are only meaningful per source)."""
        rows = [r for b in batches for r in b.rows]
        return cls(rows, *(torch.cat([getattr(b, k).cpu() for b in batches]) for k in cls.TENSORS))


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


class Engine:
    def __init__(
        self,
        bundle: Bundle,
        device: torch.device | str = "cpu",
        max_batch: int = 8,
        max_duration_s: float = DEFAULT_MAX_DURATION_S,
        compiled: bool = False,
        decode_dtype: DecodeDtype = "auto",
        overlap_decode: bool = True,
        compute_dtype: ComputeDtype = "float32",
    ) -> None:
        """`compiled`: LocDiT and the planning step through torch.compile, one graph each per batch bucket
        (model/engine/refine.py, runner.py), and the VAE decoder, one graph for every window length.
        `decode_dtype`: the VAE decoder's (model/vae.py: "auto" is bf16 where the hardware has it and it pays).
        `overlap_decode`: `stream_audio` decodes on a second thread while the patch loop goes on.
        `compute_dtype`: the patch loop's ("bfloat16": a bf16 copy of the model, bf16 KV caches, fp32 ODE state;
        model/engine/precision.py)."""
        self.bundle = bundle.to(device)
        self.overlap_decode = overlap_decode
        bundle.vae.set_decode(decode_dtype, compiled)
        self.cfg = cfg = bundle.config
        self.device = torch.device(device)
        self.max_duration_s = max_duration_s
        frames = 0
        if cfg.vision is not None:
            frames = frames_per_window(cfg)
            if frames > cfg.vision.max_frames:
                raise InputError(f"a {cfg.window.window_s:g} s window holds {frames} frames > vision.max_frames")
        max_len = cfg.text.max_tokens + frames + 1 + cfg.window_patches
        self.scheduler = Scheduler(max_batch, self.plan_windows, cfg.context_patches)
        model, dtype = loop_model(bundle.model, compute_dtype)
        self.runner = Runner(model, max_batch, max_len, self.device, compiled, dtype)
        self.refiner = BatchRefiner(model, self.device, compiled, dtype)
        self.failures: list[PatchOutput] = []  # rows stopped between steps, reported with the next outputs
        # (F, S, S, 3) uint8 frames -> (F, feature_dim) CLIP features; a server may send them elsewhere
        self.encode_frames: Callable[[np.ndarray], torch.Tensor] = self._encode

    # ---- preparing requests -------------------------------------------------------------------------

    def tokenize(self, prompt: str | None) -> torch.Tensor:
        return tokenize_prompt(self.bundle.tokenizer, self.cfg, prompt)

    def video_frames(self, path: str) -> VideoFrames:
        """The video at `path` as a frame source: read and CLIP-encoded one window at a time."""
        vision, clip = self.cfg.vision, self.bundle.model.clip
        return VideoFrames(path, vision.fps, clip.image_size, lambda frames: self.encode_frames(frames))

    @torch.no_grad()
    def _encode(self, frames: np.ndarray) -> torch.Tensor:
        return self.bundle.model.clip(frames).cpu()

    def plan_windows(self, request: GenerationRequest):
        prompt = 0 if request.context is None else request.context.shape[0]
        return windows_of(self.cfg, request.first_patch, request.n_patches, prompt)

    def make_request(
        self,
        video: str | None = None,
        prompt: str | None = None,
        params: GenerationParams = GenerationParams(),
        frames: torch.Tensor | FrameSource | None = None,
        video_duration_s: float | None = None,
        request_id: str | None = None,
        audio_prompt: AudioPrompt | None = None,
    ) -> GenerationRequest:
        """Prepare a request from a video file (or precomputed frame features), an optional prompt and an
        optional audio prompt.

        The duration is `params.duration_s`, else the video's; with `--from` (`audio_prompt.from_s`) that is the
        whole output's length (else the track's) and only what follows the kept part is new.
        Raises `MediaError`/`ValueError` on bad input.
        """
        if video is not None:
            from model.media import probe_video  # PyAV only where a video is read (benchmarks/gpu.sh has none)

            video_duration_s = probe_video(video).duration_s
        context, first_patch = None, 0
        if audio_prompt is not None:
            context, first_patch = self.prompt_patches(audio_prompt)
        if audio_prompt is not None and audio_prompt.from_s is not None:
            # `--from`: the output is the whole track (or as long as the video); only its rest is new
            kept_s = first_patch * self.cfg.patch_s
            total = params.duration_s or video_duration_s or audio_prompt.seconds
            if total <= kept_s:
                raise InputError(f"--from {kept_s:.2f} s leaves nothing to write (the end is {total:.2f} s)")
            params = replace(params, duration_s=total - kept_s)
        duration = resolve_duration(params, video_duration_s, self.max_duration_s)
        if self.cfg.vision is not None and video is not None and frames is None:
            frames = self.video_frames(video)
        return build_request(
            self.cfg, self.tokenize(prompt), params, duration, frames, request_id, context, first_patch
        )

    @torch.no_grad()
    def prompt_patches(self, prompt: AudioPrompt) -> tuple[torch.Tensor, int]:
        """An audio prompt's last patches (c, P, D), standardised, and the timeline patch where new music starts.

        Only the end of the prompt matters (the first window's context), so only its last seconds are encoded;
        they are cut on the patch grid counted back from the prompt's end, so new music follows with no gap.
        """
        vae, cfg = self.bundle.vae, self.cfg
        per_patch = samples_per_patch(cfg)
        audio = prompt.kept(per_patch)
        whole = audio.shape[1] // per_patch  # of this (tail of the) prompt
        if whole == 0:
            raise InputError(f"the audio prompt is shorter than one patch ({cfg.patch_s * 1000:.0f} ms)")
        take = min(whole, cfg.context_patches + PROMPT_MARGIN_PATCHES)
        clip = torch.from_numpy(audio[:, audio.shape[1] - take * per_patch :]).to(self.device)
        latents = vae.encode(clip[None].to(next(vae.parameters()).dtype))  # (1, D, take * P)
        frames = self.bundle.model.standardize(latents.float())[0]  # (take * P, D)
        context = frames.reshape(take, cfg.patch_size, cfg.latent_dim)[-cfg.context_patches :].cpu()
        first_patch = prompt.kept_patches(per_patch) if prompt.from_s is not None else 0
        return context, first_patch

    def request_info(self, request: GenerationRequest) -> RequestInfo:
        lead = None
        if request.context is not None:
            lead = self.to_latents(request.context.reshape(-1, self.cfg.latent_dim)).numpy()
        return RequestInfo(request.duration_s, request.n_patches, lead)

    # ---- the loop -----------------------------------------------------------------------------------

    def add(self, request: GenerationRequest) -> None:
        self.scheduler.add(request)

    def abort(self, request_id: str) -> None:
        row = self.scheduler.abort(request_id)
        if row is not None:
            self.runner.free([row])

    def _open_windows(self, rows: list[int]) -> None:
        """Prefill `rows` with their current window: text, the window's frames, the patches that open it."""
        ready, conds = [], []
        for row in rows:
            state = self.scheduler.running[row]
            try:
                conds.append(self._window_conditions(state))
                ready.append(row)
            except MediaError as err:  # this row's video broke mid-way: it alone stops
                self.failures.append(PatchOutput(state.request.request_id, state.produced, None, True, str(err)))
                self.scheduler.release(row)
                self.runner.free([row])
        if not ready:
            return
        P, D = self.cfg.patch_size, self.cfg.latent_dim
        states = [self.scheduler.running[row] for row in ready]
        prev = torch.stack([s.recent[-1] if s.current.context else torch.zeros(P, D) for s in states])
        cond = Conditions(*(list(part) for part in zip(*conds, strict=True)))
        self.runner.open_windows(ready, cond, prev, [s.current.context for s in states])

    def _window_conditions(self, state: RowState) -> tuple:
        request, window = state.request, state.current
        frames, offset = None, 0.0
        if request.frames is not None:
            end_s = request.first_patch * self.cfg.patch_s + request.duration_s
            frames, offset = window_frames(self.cfg, request.frames, window, end_s)
        context = torch.stack(list(state.recent)[-window.context :]) if window.context else None
        return request.text_ids, frames, context, offset

    def begin_step(self) -> RefineBatch | None:
        """Admit waiting requests (prefill), then gather what refining every running row needs; None when idle."""
        admitted = self.scheduler.admit()
        if admitted:
            self._open_windows([row for row, _ in admitted])
        rows = self.scheduler.active_rows()
        if not rows:
            return None
        states = [self.scheduler.running[row] for row in rows]
        P, D = self.cfg.patch_size, self.cfg.latent_dim
        noise = torch.stack([patch_noise(s.request.params.seed, s.timeline_patch, (P, D)) for s in states])
        mu, prev = self.runner.pending(rows)
        return RefineBatch(
            rows=rows,
            mu=mu,
            prev=prev,
            noise=noise.to(self.device, non_blocking=True),
            steps=torch.tensor([s.request.params.steps for s in states]),
            guidance=torch.tensor([s.request.params.guidance for s in states]).to(self.device, non_blocking=True),
            midpoint=torch.tensor([s.request.params.solver == "midpoint" for s in states]),
        )

    def refine(self, batch: RefineBatch) -> torch.Tensor:
        """The in-process refiner: (B, P, D) patches. A serving Planner sends `batch` to a Refiner instead."""
        return self.refiner(batch)

    def end_step(self, batch: RefineBatch, patches: torch.Tensor) -> list[PatchOutput]:
        """Record each row's refined patch; plan the next one for rows that continue in their window, prefill
        the next window for rows that reach a window's end, release finished rows."""
        host = patches.cpu()  # the step's one read-back (none when a Refiner sent them)
        patches = patches.to(self.device, non_blocking=True)
        outputs, continuing, reopening, finished = self.drain_failures(), [], [], []
        for row, patch in zip(batch.rows, host, strict=True):
            state = self.scheduler.record(row, patch)
            outputs.append(PatchOutput(state.request.request_id, state.produced - 1, state.recent[-1], state.finished))
            if state.finished:
                finished.append(row)
            else:
                (reopening if state.opens_window else continuing).append(row)
        if continuing:
            at = torch.tensor([batch.rows.index(r) for r in continuing]).to(self.device, non_blocking=True)
            self.runner.plan_next(continuing, patches[at])
        for row in finished:
            self.scheduler.release(row)
        if finished:
            self.runner.free(finished)
        if reopening:
            self._open_windows(reopening)
        return outputs

    def drain_failures(self) -> list[PatchOutput]:
        failures, self.failures = self.failures, []
        return failures

    def step(self) -> list[PatchOutput]:
        """One step of the loop with the in-process refiner: every running row gets one patch."""
        batch = self.begin_step()
        return self.drain_failures() if batch is None else self.end_step(batch, self.refine(batch))

    def stream(
        self,
        requests: list[GenerationRequest],
        progress: Progress | None = None,
        errors: dict[str, str] | None = None,
    ) -> Iterator[PatchOutput]:
        """Yield patches as they are produced, for all `requests` advancing together. A request whose video
        cannot be read mid-way stops: its reason goes into `errors` and the others go on, or without
        `errors` it raises `MediaError` (and the others are aborted)."""
        for request in requests:
            self.add(request)
        total, done = sum(r.n_patches for r in requests), 0
        try:
            while self.scheduler.has_work():
                for output in self.step():
                    if output.error is not None and errors is None:
                        raise MediaError(output.error)
                    if output.error is not None:
                        errors[output.request_id] = output.error
                        continue
                    done += 1
                    if progress is not None:
                        progress(done, total)
                    yield output
        finally:
            for request in requests:
                self.abort(request.request_id)

    def generate_latents(
        self,
        requests: list[GenerationRequest],
        progress: Progress | None = None,
        errors: dict[str, str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Whole clips: request id -> (N * P, D) standardised latent frames (see `stream` for `errors`)."""
        patches: dict[str, list[torch.Tensor]] = {r.request_id: [] for r in requests}
        for output in self.stream(requests, progress, errors):
            patches[output.request_id].append(output.patch)
        failed = errors or {}
        return {rid: torch.cat(p) for rid, p in patches.items() if rid not in failed}

    def to_latents(self, frames: torch.Tensor) -> torch.Tensor:
        """(L, D) standardised frames -> (D, L) VAE latents on the CPU."""
        return self.bundle.model.destandardize(frames[None].to(self.device))[0].cpu()

    def decode(self, frames: torch.Tensor, request: GenerationRequest) -> np.ndarray:
        """(N * P, D) standardised frames of `request`'s new patches -> its (C, S) audio (after its prompt)."""
        clip, ready = self.request_info(request).decoder(self.cfg)
        ready += clip.add(self.to_latents(frames).numpy())
        return np.concatenate([clip.emit(w, decode_window_array(self.bundle.vae, x, w)) for w, x in ready], axis=1)

    def stream_audio(
        self,
        requests: list[GenerationRequest],
        progress: Progress | None = None,
        on_patch: Callable[[PatchOutput], None] | None = None,
        patches: Iterator[PatchOutput] | None = None,
    ) -> Iterator[tuple[str, np.ndarray]]:
        """(request id, (C, S) audio) as soon as each decode window of each request is decoded: memory holds
        a few windows per request whatever the length. Concatenated per request: `generate`'s audio. With
        the engine's `overlap_decode`, windows decode on a second thread while the loop goes on
        (model/engine/decoding.py; the same audio in the same order). `patches` replaces the engine's own
        stream of them (cut-aware generation, model/engine/align.py)."""
        decoders = {r.request_id: self.request_info(r).decoder(self.cfg) for r in requests}
        queue = WindowDecoder(self.bundle.vae, self.overlap_decode)
        try:
            for r in requests:
                clip, ready = decoders[r.request_id]
                for window, latents in ready:
                    queue.put(r.request_id, clip, window, latents)
            for output in self.stream(requests, progress) if patches is None else patches:
                if on_patch is not None:
                    on_patch(output)
                clip, _ = decoders[output.request_id]
                for window, latents in clip.add(self.to_latents(output.patch).numpy()):
                    queue.put(output.request_id, clip, window, latents)
                yield from queue.finished()
            yield from queue.finished(wait=True)
        finally:
            queue.close()

    def generate(self, requests: list[GenerationRequest], progress: Progress | None = None) -> list[GenerationResult]:
        """Generate and decode whole clips; results in the order of `requests`."""
        patches: dict[str, list[torch.Tensor]] = {r.request_id: [] for r in requests}
        audio: dict[str, list[np.ndarray]] = {r.request_id: [] for r in requests}
        collect = lambda output: patches[output.request_id].append(output.patch)  # noqa: E731
        for request_id, chunk in self.stream_audio(requests, progress, on_patch=collect):
            audio[request_id].append(chunk)
        rate = self.bundle.vae.sample_rate
        return [
            GenerationResult(
                r.request_id,
                self.to_latents(torch.cat(patches[r.request_id])),
                np.concatenate(audio[r.request_id], axis=1),
                rate,
                r.duration_s,
            )
            for r in requests
        ]
