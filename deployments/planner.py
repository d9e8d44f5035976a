"""Planner: the patch loop for every in-flight request of a replica, one batched AR step for all of them.

`PatchLoop` drives the engine's own step (`Engine.begin_step` -> refine -> `Engine.end_step`) with the
refinement pluggable: the Planner awaits the Refiner deployment, the fused deployment refines in
process. While one step waits on the Refiner, new requests queue up and join at the next step (after
their prefill), and finished or abandoned ones leave, so the replica's KV-cache rows stay busy.
"""

from __future__ import annotations

import asyncio
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
from model.engine import Engine, GenerationRequest, PatchOutput, RefineBatch
from model.engine.align import stream_aligned
from model.engine.prepare import DEFAULT_MAX_DURATION_S
from model.engine.request import GenerationSpec
from model.media import MediaError

log = logging.getLogger("ray.serve")

Refine = Callable[[RefineBatch], Awaitable[torch.Tensor]]


class RefinerUnavailable(RuntimeError):
    """The Refiner stayed unreachable for longer than the planner's retry budget."""


class PatchLoop:
    """One background task steps the engine while any request is in flight; each request reads its queue."""

    def __init__(self, engine: Engine, refine: Refine):
        self.engine, self.refine = engine, refine
        self.queues: dict[str, asyncio.Queue] = {}
        self.inbox: list[GenerationRequest] = []
        self.aborted: list[str] = []
        self.task: asyncio.Task | None = None
        self.metrics = serving_metrics()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[PatchOutput]:
        queue: asyncio.Queue = asyncio.Queue()
        self.queues[request.request_id] = queue
        self.inbox.append(request)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run())
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item.error is not None:  # this request's video broke mid-way; the others go on
                    finished = True
                    raise MediaError(item.error)
                finished = item.finished
                yield item
        finally:
            self.queues.pop(request.request_id, None)
            if not finished:  # the caller went away (disconnect, timeout): free its row between steps
                self.aborted.append(request.request_id)

    async def _run(self) -> None:
        while True:
            for request_id in self.aborted:
                self.engine.abort(request_id)
            self.aborted.clear()
            for request in self.inbox:
                self.engine.add(request)
            self.inbox.clear()
            if not self.engine.scheduler.has_work():
                return  # no await since the inbox was drained: a new request restarts the task
            self.metrics["queue"].set(len(self.queues), tags={"stage": "planner"})
            try:
                batch = await asyncio.to_thread(self.engine.begin_step)
                if batch is None:
                    self._deliver(self.engine.drain_failures())
                    continue
                self.metrics["batch"].observe(len(batch.rows), tags={"stage": "planner"})
                patches = await self.refine(batch)
                outputs = await asyncio.to_thread(self.engine.end_step, batch, patches)
            except Exception as err:  # noqa: BLE001 - every request of the failed step learns why, none hangs
                log.exception("planner step failed")
                self._fail_running(err)
                continue
            self.metrics["patches"].inc(len(outputs))
            self._deliver(outputs)

    def _deliver(self, outputs: list[PatchOutput]) -> None:
        for output in outputs:
            queue = self.queues.get(output.request_id)
            if queue is not None:
                queue.put_nowait(output)

    def _fail_running(self, err: Exception) -> None:
        scheduler = self.engine.scheduler
        ids = [s.request.request_id for s in scheduler.running.values()] + [r.request_id for r in scheduler.waiting]
        for request_id in ids:
            self.engine.abort(request_id)
        for queue in self.queues.values():
            queue.put_nowait(err)


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

    def run(subs: list[GenerationRequest]) -> dict[str, torch.Tensor]:
        return asyncio.run_coroutine_threadsafe(window(subs), event_loop).result()

    choose = cut_chooser(await asyncio.to_thread(detect_cuts, video))
    patches = stream_aligned(engine, request, candidates, choose, run=run)
    while (output := await asyncio.to_thread(next, patches, None)) is not None:
        yield engine.to_latents(output.patch).numpy()


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
    ):
        device = pick_device(device)
        self.engine = Engine(load_bundle(checkpoint, device), device, capacity, max_duration_s)
        self.refiner, self.encoder, self.retry_s = refiner, encoder, retry_s
        if encoder is not None:  # each window's frames go to the batched FrameEncoder
            self.engine.encode_frames = self._encode_from_step
        self.event_loop: asyncio.AbstractEventLoop | None = None
        self.loop = PatchLoop(self.engine, self._refine)

    def _encode_from_step(self, frames: np.ndarray) -> torch.Tensor:
        """Called in the engine's step thread (never on the event loop, which stays free to await the call)."""
        call = asyncio.run_coroutine_threadsafe(self._encode(frames), self.event_loop)
        return torch.from_numpy(call.result())

    async def _encode(self, frames: np.ndarray) -> np.ndarray:
        return await self.encoder.encode.remote(frames)

    async def _refine(self, batch: RefineBatch) -> torch.Tensor:
        """One step's patches from the Refiner; a lost replica is retried (same inputs, same result)."""
        deadline, delay = time.monotonic() + self.retry_s, 0.1
        while True:
            try:
                return await self.refiner.refine.remote(batch.to("cpu"))
            except (RayActorError, ActorUnavailableError) as err:
                if time.monotonic() + delay > deadline:
                    raise RefinerUnavailable(f"the Refiner did not answer for {self.retry_s:.0f} s: {err}") from err
                log.warning("Refiner call failed (%s); retrying in %.1f s", type(err).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, 2.0)

    async def generate(self, spec: GenerationSpec) -> AsyncIterator:
        self.event_loop = asyncio.get_running_loop()
        async for item in serve_spec(self.loop, self.engine, spec):
            yield item

    async def ready(self) -> bool:
        return True
