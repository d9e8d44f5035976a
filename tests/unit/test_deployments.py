"""The serving layer without a cluster: the patch loop's scheduling, admission and aborts, the Ingress's
accounting, the upload size cap, and the URI checks. Real engine (tiny preset), real asyncio, real sockets."""

from __future__ import annotations

import asyncio
import gc
import http.server
import socket
import threading

import numpy as np
import pytest
import torch
from starlette.requests import ClientDisconnect, Request

from deployments.admission import CLIENT_CLOSED, Admission, CountedStream
from deployments.config import Limits, ServeConfig
from deployments.errors import ApiError
from deployments.inputs import read_inputs
from deployments.planner import PatchLoop, PlannerBroken
from deployments.uris import CheckedURI, check_uri, download, is_global_address
from model.engine import Engine, GenerationParams

GUARD_S = 60.0  # only so that a regression fails instead of hanging the suite


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, GUARD_S))


class Refiner:
    """Stands in for the Refiner deployment: the engine's own refinement, with a count of calls, an optional
    gate to hold a step in flight, and an optional fault to inject."""

    def __init__(self, engine: Engine, fail_times: int = 0):
        self.engine, self.fail_times = engine, fail_times
        self.calls: list[list[int]] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def __call__(self, batch):
        self.calls.append(list(batch.rows))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_times:
            self.fail_times -= 1
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return await asyncio.to_thread(self.engine.refine, batch)


def _loop(bundle, fail_times=0, **kwargs) -> tuple[PatchLoop, Engine, Refiner]:
    engine = Engine(bundle, max_batch=4)
    refiner = Refiner(engine, fail_times)
    return PatchLoop(engine, refiner, **kwargs), engine, refiner


def _request(engine: Engine, request_id: str, duration_s: float = 0.5):
    return engine.make_request(
        prompt="piano", params=GenerationParams(seed=1, duration_s=duration_s), request_id=request_id
    )


async def _collect(loop: PatchLoop, request) -> list:
    return [output async for output in loop.stream(request)]


async def _idle(loop: PatchLoop) -> None:
    if loop.task is not None:
        await loop.task


# ---- the patch loop ----------------------------------------------------------------------------------------


def test_a_request_abandoned_before_admission_never_runs(tiny_bundle):
    loop, engine, refiner = _loop(tiny_bundle)
    running = _request(engine, "running", 0.8)

    async def scenario():
        refiner.gate = asyncio.Event()
        first = asyncio.ensure_future(_collect(loop, running))
        await refiner.entered.wait()  # the loop is inside a step: new requests wait in its inbox
        queued = asyncio.ensure_future(_collect(loop, _request(engine, "gone")))
        await asyncio.sleep(0.05)
        assert [r.request_id for r in loop.inbox] == ["gone"]
        queued.cancel()
        refiner.gate.set()
        return await first

    assert len(run(scenario())) == running.n_patches
    assert all(len(rows) == 1 for rows in refiner.calls)  # "gone" never took a row
    assert not engine.scheduler.has_work() and loop.queues == {} and loop.inbox == []


def test_a_request_abandoned_while_its_step_is_refined_leaves_at_the_next_step(tiny_bundle):
    loop, engine, refiner = _loop(tiny_bundle)
    stay, leave = _request(engine, "stay", 0.8), _request(engine, "leave", 0.8)

    async def scenario():
        refiner.gate = asyncio.Event()
        staying = asyncio.ensure_future(_collect(loop, stay))
        leaving = asyncio.ensure_future(_collect(loop, leave))
        await refiner.entered.wait()  # both rows are in the step now being refined
        leaving.cancel()
        refiner.gate.set()
        return await staying

    outputs = run(scenario())
    assert [o.index for o in outputs] == list(range(stay.n_patches))
    assert len(refiner.calls[0]) == 2
    assert all(len(rows) == 1 for rows in refiner.calls[2:])  # from the step after the abort, one row only
    assert not engine.scheduler.has_work()


def test_a_repeated_request_id_fails_alone(tiny_bundle):
    loop, engine, refiner = _loop(tiny_bundle)
    first = _request(engine, "same")

    async def scenario():
        refiner.gate = asyncio.Event()
        running = asyncio.ensure_future(_collect(loop, first))
        await refiner.entered.wait()
        with pytest.raises(ValueError, match="already in flight"):
            await loop.stream(_request(engine, "same")).__anext__()
        refiner.gate.set()
        return await running

    assert len(run(scenario())) == first.n_patches
    assert loop.trouble() is None


def test_a_failed_step_fails_its_requests_and_the_loop_serves_the_next(tiny_bundle):
    loop, engine, _ = _loop(tiny_bundle, fail_times=1)

    async def scenario():
        with pytest.raises(RuntimeError, match="illegal memory access"):
            await _collect(loop, _request(engine, "unlucky"))
        return await _collect(loop, _request(engine, "next"))

    outputs = run(scenario())
    assert outputs[-1].finished and loop.trouble() is None
    assert not engine.scheduler.has_work()


def test_a_loop_that_keeps_failing_reports_itself_broken(tiny_bundle):
    loop, engine, _ = _loop(tiny_bundle, fail_times=100, max_failed_steps=3)

    async def scenario():
        for i in range(3):
            with pytest.raises(RuntimeError):
                await _collect(loop, _request(engine, f"r{i}"))
        with pytest.raises(PlannerBroken):
            await _collect(loop, _request(engine, "after"))

    run(scenario())
    assert "3 times in a row" in loop.trouble()


def test_a_step_stuck_past_its_limit_fails_the_health_check(tiny_bundle):
    loop, engine, refiner = _loop(tiny_bundle, stall_s=0.05)

    async def scenario():
        refiner.gate = asyncio.Event()
        running = asyncio.ensure_future(_collect(loop, _request(engine, "stuck")))
        await refiner.entered.wait()
        healthy_at_start = loop.trouble()
        while loop.trouble() is None:
            await asyncio.sleep(0.01)
        stuck = loop.trouble()
        refiner.gate.set()
        await running
        return healthy_at_start, stuck, loop.trouble()

    at_start, stuck, after = run(scenario())
    assert at_start is None and "has run for" in stuck and after is None


# ---- the Ingress's accounting ------------------------------------------------------------------------------


class Recorder:
    """Ray's metric objects' interface, recording what the service reports."""

    def __init__(self):
        self.values: list[tuple[float, dict]] = []

    def inc(self, value=1.0, tags=None):
        self.values.append((value, tags or {}))

    set = observe = inc


def _admission(max_in_flight=8):
    metrics = {name: Recorder() for name in ("requests", "errors", "latency", "queue")}
    return Admission(max_in_flight, 2, metrics), metrics


def _statuses(metrics) -> list[str]:
    return [tags["status"] for _, tags in metrics["requests"].values]


async def _serve_stream(response, disconnect_after: int | None = None) -> list[bytes]:
    """Run a streamed response as an ASGI server would; the client leaves after `disconnect_after` chunks."""
    sent: list[bytes] = []

    async def send(message):
        if message["type"] == "http.response.body" and message.get("body"):
            if disconnect_after is not None and len(sent) >= disconnect_after:
                raise OSError("client went away")
            sent.append(message["body"])

    async def receive():
        await asyncio.Event().wait()  # the client sends nothing more

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "method": "POST", "headers": []}
    try:
        await response(scope, receive, send)
    except ClientDisconnect:  # starlette's word for a send that failed
        pass
    return sent


def test_in_flight_returns_to_zero_after_every_kind_of_ending():
    admission, metrics = _admission()

    async def chunks(fail: Exception | None = None):
        yield b"header"
        yield b"audio"
        if fail is not None:
            raise fail
        yield b"more audio"

    async def scenario():
        ok = CountedStream(admission.admit("/s"), chunks())
        assert await _serve_stream(ok) == [b"header", b"audio", b"more audio"]
        await _serve_stream(CountedStream(admission.admit("/s"), chunks(RuntimeError("decoder lost"))))
        timeout = ApiError("timeout", "the request ran past its time limit")
        await _serve_stream(CountedStream(admission.admit("/s"), chunks(timeout)))
        await _serve_stream(CountedStream(admission.admit("/s"), chunks()), disconnect_after=1)
        never_iterated = CountedStream(admission.admit("/s"), chunks())
        del never_iterated
        gc.collect()

    asyncio.run(scenario())
    assert admission.in_flight == 0
    assert metrics["queue"].values[-1][0] == 0
    assert sorted(_statuses(metrics)) == sorted(["200", "500", "504", str(CLIENT_CLOSED), str(CLIENT_CLOSED)])
    assert sorted(tags["code"] for _, tags in metrics["errors"].values) == ["internal_error", "timeout"]


def test_a_full_replica_refuses_with_retry_after_and_counts_it_once():
    admission, metrics = _admission(max_in_flight=1)
    ticket = admission.admit("/s")
    with pytest.raises(ApiError) as refused:
        admission.admit("/s")
    assert refused.value.code == "overloaded" and refused.value.headers() == {"Retry-After": "2"}
    ticket.status = 200
    ticket.release()
    ticket.release()
    assert admission.in_flight == 0 and _statuses(metrics) == ["200"]


# ---- reading the request -----------------------------------------------------------------------------------


def _chunked_request(chunks: list[bytes], content_type: str) -> tuple[Request, list[int]]:
    """A request whose body arrives in chunks with no Content-Length; returns it and how many were read."""
    read = [0]

    async def receive():
        i = read[0]
        read[0] += 1
        return {"type": "http.request", "body": chunks[i], "more_body": i + 1 < len(chunks)}

    headers = [(b"content-type", content_type.encode()), (b"transfer-encoding", b"chunked")]
    return Request({"type": "http", "method": "POST", "headers": headers}, receive), read


def test_a_chunked_upload_is_refused_as_soon_as_it_passes_the_limit(tmp_path):
    boundary = "b0undary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="video"; filename="v.mp4"\r\n\r\n'.encode()
    chunks = [head] + [b"\0" * 4096] * 100 + [f"\r\n--{boundary}--\r\n".encode()]
    request, read = _chunked_request(chunks, f"multipart/form-data; boundary={boundary}")
    cfg = ServeConfig(checkpoint="unused", limits=Limits(max_upload_bytes=10_000))
    with pytest.raises(ApiError) as refused:
        run(read_inputs(request, str(tmp_path), cfg))
    assert refused.value.code == "payload_too_large"
    assert read[0] <= 4  # the upload stopped at the limit; the other ~400 KB were never read


def test_dns_for_a_video_uri_runs_off_the_event_loop(tmp_path, monkeypatch):
    released = threading.Event()
    seen: list[bool] = []

    def slow_dns(*args, **kwargs):
        seen.append(released.wait(10))  # set by a coroutine: only if the event loop is free
        raise socket.gaierror("no such host")

    monkeypatch.setattr(socket, "getaddrinfo", slow_dns)
    body = b'{"video_uri": "https://videos.example.com/a.mp4"}'
    request, _ = _chunked_request([body], "application/json")
    cfg = ServeConfig(checkpoint="unused", allowed_uri_prefixes=["https://videos.example.com/"])

    async def scenario():
        async def release():
            await asyncio.sleep(0)
            released.set()

        reading = asyncio.ensure_future(read_inputs(request, str(tmp_path), cfg))
        await release()
        with pytest.raises(ApiError) as refused:
            await reading
        return refused.value.code

    assert run(scenario()) == "uri_not_allowed"
    assert seen == [True]


# ---- URIs ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address", ["100.64.0.1", "192.0.0.8", "10.1.2.3", "127.0.0.1", "169.254.169.254", "::ffff:10.0.0.1", "fd00::1"]
)
def test_only_globally_routable_hosts_may_be_read(address):
    host = f"[{address}]" if ":" in address else address
    assert not is_global_address(address)
    with pytest.raises(ApiError) as refused:
        check_uri(f"http://{host}/v.mp4", [f"http://{host}/"])
    assert refused.value.code == "uri_not_allowed"


def test_public_addresses_pass_the_check():
    assert is_global_address("8.8.8.8") and is_global_address("2606:4700::1111")
    assert check_uri("http://8.8.8.8/a/../v.mp4", ["http://8.8.8.8/"]) == CheckedURI(
        "http://8.8.8.8/v.mp4", ("8.8.8.8",)
    )


def test_a_download_connects_to_the_checked_address_without_resolving_again(tmp_path):
    """`video.invalid` resolves nowhere (RFC 2606): the bytes can only come from the pinned address."""
    (tmp_path / "clip.mp4").write_bytes(b"\x01" * 5000)
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        pinned = CheckedURI(f"http://video.invalid:{port}/clip.mp4", ("127.0.0.1",))
        download(pinned, str(tmp_path / "copy"), limit=10_000)
        assert (tmp_path / "copy").read_bytes() == b"\x01" * 5000
        with pytest.raises(ApiError) as too_big:
            download(pinned, str(tmp_path / "copy2"), limit=1000)
        assert too_big.value.code == "payload_too_large"
    finally:
        server.shutdown()


def test_require_token_refuses_to_start_without_one(monkeypatch):
    monkeypatch.delenv("VIDEOROBIN_API_TOKEN", raising=False)
    with pytest.raises(ValueError, match="require_token"):
        ServeConfig(checkpoint="unused", require_token=True)
    assert ServeConfig(checkpoint="unused").auth_mode().startswith("open")
    assert ServeConfig(checkpoint="unused", auth_token="s3cret", require_token=True).auth_mode().startswith("bearer")


def test_latent_patches_are_unchanged_by_the_loop(tiny_bundle):
    """The loop is scheduling only: a request's patches equal the engine's own generation."""
    loop, engine, _ = _loop(tiny_bundle)
    request = _request(engine, "same-as-engine", 0.8)
    served = torch.cat([o.patch for o in run(_collect(loop, request))])
    direct = Engine(tiny_bundle, max_batch=4).generate_latents([_request(engine, "direct", 0.8)])["direct"]
    assert np.array_equal(served.numpy(), direct.numpy())
