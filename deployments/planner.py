"""Planner: the patch loop for every in-flight request of a replica, one batched AR step for all of them.

`PatchLoop` drives the engine's own step (`Engine.begin_step` -> refine -> `Engine.end_step`) with the
refinement pluggable: the Planner awaits the Refiner deployment, the fused deployment refines in
process. While one step waits on the Refiner, new requests queue up and join at the next step (after
their prefill), and finished or abandoned ones leave, so the replica's KV-cache rows stay busy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np
import torch
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError

from deployments.devices import pick_device
from deployments.metrics import serving_metrics
from model.checkpoint import load_bundle
from model.config import ComputeDtype, DecodeDtype
from model.engine import Engine, GenerationRequest, PatchOutput, RefineBatch
from model.engine.align import stream_aligned
from model.engine.prepare import DEFAULT_MAX_DURATION_S
from model.engine.request import GenerationSpec
from model.media import MediaError

log = logging.getLogger("ray.serve")

Refine = Callable[[RefineBatch], Awaitable[torch.Tensor]]


class ModelUnavailable(RuntimeError):
    """A model deployment (Refiner, FrameEncoder) stayed unreachable past the planner's retry budget."""


class PlannerBroken(RuntimeError):
    """The patch loop failed too often in a row to trust its state; the replica fails its health check."""


class PatchLoop:
    """One background task steps the engine while any request is in flight; each request reads its queue.

    The task survives anything a step, an admission or an abort raises: the requests concerned fail, the
    others go on. After `max_failed_steps` failures in a row it stops trusting its caches, fails everything
    and reports itself broken, and `trouble()` (the replica's health check) says why, so Serve replaces it.
    """

    def __init__(self, engine: Engine, refine: Refine, max_failed_steps: int = 3, stall_s: float = 120.0):
        self.engine, self.refine = engine, refine
        self.max_failed_steps, self.stall_s = max_failed_steps, stall_s
        self.queues: dict[str, asyncio.Queue] = {}
        self.inbox: list[GenerationRequest] = []
        self.aborted: list[str] = []
        self.task: asyncio.Task | None = None
        self.failed_steps = 0
        self.broken: str | None = None
        self.step_started: float | None = None  # monotonic time of the step in progress
        self.metrics = serving_metrics()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[PatchOutput]:
        if self.broken is not None:
            raise PlannerBroken(self.broken)
        if request.request_id in self.queues:
            raise ValueError(f"request id {request.request_id!r} is already in flight")
        queue: asyncio.Queue = asyncio.Queue()
        self.queues[request.request_id] = queue
        self.inbox.append(request)
        self._set_queue_gauge()
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run())
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True  # the loop already dropped this request
                    raise item
                if item.error is not None:  # this request's video broke mid-way; the others go on
                    finished = True
                    raise MediaError(item.error)
                finished = item.finished
                yield item
        finally:
            self.queues.pop(request.request_id, None)
            self._set_queue_gauge()
            if not finished:  # the caller went away (disconnect, timeout)
                waiting = [r for r in self.inbox if r is not request]
                if len(waiting) < len(self.inbox):
                    self.inbox = waiting  # never reached the engine: nothing to free
                else:
                    self.aborted.append(request.request_id)  # freed before the next step

    async def _run(self) -> None:
        while True:
            try:
                self._abort_and_admit()
                if not self.engine.scheduler.has_work():
                    return  # no await since the inbox was drained: a new request restarts the task
                self.step_started = time.monotonic()
                batch = await asyncio.to_thread(self.engine.begin_step)
                if batch is None:
                    self._deliver(self.engine.drain_failures())
                    continue
                self.metrics["batch"].observe(len(batch.rows), tags={"stage": "planner"})
                patches = await self.refine(batch)
                outputs = await asyncio.to_thread(self.engine.end_step, batch, patches)
            except Exception as err:  # noqa: BLE001 - the requests of the failed step learn why, none hangs
                log.exception("planner step failed")
                if not self._fail_running(err):
                    return
                continue
            finally:
                self.step_started = None
            self.failed_steps = 0
            self.metrics["patches"].inc(len(outputs))
            self._deliver(outputs)

    def _abort_and_admit(self) -> None:
        aborted, self.aborted = self.aborted, []
        for request_id in aborted:
            self.engine.abort(request_id)
        inbox, self.inbox = self.inbox, []
        for request in inbox:
            try:
                self.engine.add(request)
            except Exception as err:  # noqa: BLE001 - a request the engine refuses fails alone
                log.warning("request %s refused by the engine: %s", request.request_id, err)
                self._send(request.request_id, err)

    def _send(self, request_id: str, item) -> None:
        queue = self.queues.get(request_id)
        if queue is not None:
            queue.put_nowait(item)

    def _deliver(self, outputs: list[PatchOutput]) -> None:
        for output in outputs:
            self._send(output.request_id, output)

    def _fail_running(self, err: Exception) -> bool:
        """Fail the requests the engine holds; False (and the loop broken) when it cannot be trusted any more."""
        self.failed_steps += 1
        scheduler = self.engine.scheduler
        ids = [s.request.request_id for s in scheduler.running.values()] + [r.request_id for r in scheduler.waiting]
        try:
            for request_id in ids:
                self.engine.abort(request_id)
        except Exception as abort_err:  # noqa: BLE001 - freeing rows failed: the caches are suspect
            log.exception("planner could not free its rows")
            self.failed_steps, err = self.max_failed_steps, abort_err
        if self.failed_steps >= self.max_failed_steps:
            self.broken = f"patch loop failed {self.failed_steps} times in a row; last: {type(err).__name__}: {err}"
            log.error("planner broken: %s", self.broken)
            ids, self.inbox = list(self.queues), []
        for request_id in ids:
            self._send(request_id, err)
        return self.broken is None

    def _set_queue_gauge(self) -> None:
        self.metrics["queue"].set(len(self.queues), tags={"stage": "planner"})

    def trouble(self) -> str | None:
        """Why this loop cannot serve (broken, its task died, or a step stuck past `stall_s`); None when fine."""
        if self.broken is not None:
            return self.broken
        task = self.task
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            return f"patch loop task died: {task.exception()!r}"
        started = self.step_started
        if started is not None and time.monotonic() - started > self.stall_s:
            return f"a patch step has run for {time.monotonic() - started:.0f} s (limit {self.stall_s:.0f} s)"
        return None


async def latents_of(loop: PatchLoop, engine: Engine, request: GenerationRequest) -> AsyncIterator[np.ndarray]:
    """Each patch of the request as (D, P) VAE latents: destandardised here, so decoders need no statistics."""
    async for output in loop.stream(request):
        yield engine.to_latents(output.patch).numpy()


async def serve_spec(loop: PatchLoop, engine: Engine, spec: GenerationSpec) -> AsyncIterator:
    """A served request: its `RequestInfo` once the engine has built it, then each patch's (D, P) latents.

    The video travels as bytes and is read here window by window, so the front end never decodes it whole
    and the first window starts as soon as its own frames are encoded, whatever the video's length."""
    with tempfile.TemporaryDirectory(prefix="videorobin-") as tmp:
        video = None
        if spec.video is not None:
            video = os.path.join(tmp, "video")
            with open(video, "wb") as f:
                f.write(spec.video)
        request = await asyncio.to_thread(
            engine.make_request,
            video=video,
            prompt=spec.prompt,
            params=spec.params,
            video_duration_s=spec.video_duration_s,
            request_id=spec.request_id,
            audio_prompt=spec.audio,
        )
        yield engine.request_info(request)
        if spec.align_cuts > 1:
            async for latents in _aligned(loop, engine, request, spec.align_cuts, video):
                yield latents
            return
        async for latents in latents_of(loop, engine, request):
            yield latents


async def _aligned(
    loop: PatchLoop, engine: Engine, request: GenerationRequest, candidates: int, video: str
) -> AsyncIterator[np.ndarray]:
    """`align_cuts`: the engine's best-of-N windows, each window's candidates run by the replica's patch loop
    (batched with every other request) while the choosing runs in a thread."""
    from jobs.evaluation.cuts import cut_chooser, detect_cuts

    event_loop = asyncio.get_running_loop()

    async def latents(sub: GenerationRequest) -> torch.Tensor:
        return torch.cat([output.patch async for output in loop.stream(sub)])

    async def window(subs: list[GenerationRequest]) -> dict[str, torch.Tensor]:
        return dict(zip([s.request_id for s in subs], await asyncio.gather(*map(latents, subs)), strict=True))

    running: list[concurrent.futures.Future] = []

    def run(subs: list[GenerationRequest]) -> dict[str, torch.Tensor]:
        running[:] = [asyncio.run_coroutine_threadsafe(window(subs), event_loop)]
        return running[0].result()

    choose = cut_chooser(await asyncio.to_thread(detect_cuts, video))
    patches = stream_aligned(engine, request, candidates, choose, run=run)
    try:
        while (output := await asyncio.to_thread(next, patches, None)) is not None:
            yield engine.to_latents(output.patch).numpy()
    finally:  # a caller that leaves mid-window frees the window's candidates now, not at the window's end
        for call in running:
            call.cancel()


@serve.deployment
class Planner:
    def __init__(
        self,
        checkpoint: str,
        refiner,
        encoder=None,
        device: str | None = None,
        capacity: int = 8,
        max_duration_s: float = DEFAULT_MAX_DURATION_S,
        retry_s: float = 30.0,
        stall_s: float = 120.0,
        decode_dtype: DecodeDtype = "auto",  # `align_cuts` decodes candidates here to choose one: as the decoder does
        compiled: bool = False,  # the planning step per batch bucket (model/engine/runner.py)
        compute_dtype: ComputeDtype = "float32",
    ):
        device = pick_device(device)
        bundle = load_bundle(checkpoint, device)
        self.engine = Engine(
            bundle, device, capacity, max_duration_s, compiled, decode_dtype, compute_dtype=compute_dtype
        )
        self.refiner, self.encoder, self.retry_s = refiner, encoder, retry_s
        if encoder is not None:  # each window's frames go to the batched FrameEncoder
            self.engine.encode_frames = self._encode_from_step
        self.event_loop: asyncio.AbstractEventLoop | None = None
        self.loop = PatchLoop(self.engine, self._refine, stall_s=stall_s)

    def _encode_from_step(self, frames: np.ndarray) -> torch.Tensor:
        """Called in the engine's step thread (never on the event loop, which stays free to await the call).
        Bounded: a FrameEncoder that never answers fails this step instead of stalling the loop."""
        call = asyncio.run_coroutine_threadsafe(self._encode(frames), self.event_loop)
        try:
            return torch.from_numpy(call.result(timeout=2 * self.retry_s))
        except concurrent.futures.TimeoutError:
            call.cancel()
            raise ModelUnavailable(f"the FrameEncoder did not answer within {2 * self.retry_s:.0f} s") from None

    async def _encode(self, frames: np.ndarray) -> np.ndarray:
        return await self._retrying("FrameEncoder", lambda: self.encoder.encode.remote(frames))

    async def _refine(self, batch: RefineBatch) -> torch.Tensor:
        batch = await asyncio.to_thread(batch.to, "cpu")  # a device copy syncs: never on the event loop
        return await self._retrying("Refiner", lambda: self.refiner.refine.remote(batch))

    async def _retrying(self, name: str, call: Callable[[], Awaitable]):
        """A call to a stateless deployment; a lost replica is retried (same inputs, same result)."""
        deadline, delay = time.monotonic() + self.retry_s, 0.1
        while True:
            try:
                return await call()
            except (RayActorError, ActorUnavailableError) as err:
                if time.monotonic() + delay > deadline:
                    raise ModelUnavailable(f"the {name} did not answer for {self.retry_s:.0f} s: {err}") from err
                log.warning("%s call failed (%s); retrying in %.1f s", name, type(err).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, 2.0)

    async def generate(self, spec: GenerationSpec) -> AsyncIterator:
        self.event_loop = asyncio.get_running_loop()
        async for item in serve_spec(self.loop, self.engine, spec):
            yield item

    def check_health(self) -> None:
        """Serve's health check: a replica whose patch loop cannot serve is replaced."""
        if (trouble := self.loop.trouble()) is not None:
            raise PlannerBroken(trouble)

    async def ready(self) -> bool:
        self.check_health()
        return True
