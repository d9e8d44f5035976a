"""The Ingress's admission and accounting: how many requests are in flight, and one count per request.

Every admitted request holds a `Ticket`; releasing it (idempotent) lowers the in-flight count and the queue
gauge and counts the request once with its final status. A streamed response releases its ticket when the
body ends, when the response is torn down without ever being iterated, or at the latest when it is
garbage-collected, so the count returns to zero after any mix of finished, failed and abandoned requests.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse

from deployments.errors import ApiError

log = logging.getLogger("ray.serve")

CLIENT_CLOSED = 499  # the client left before the response ended (nginx's convention)


class Admission:
    def __init__(self, max_in_flight: int, retry_after_s: int, metrics: dict) -> None:
        self.max_in_flight, self.retry_after_s, self.metrics = max_in_flight, retry_after_s, metrics
        self.in_flight = 0

    def admit(self, route: str) -> Ticket:
        if self.in_flight >= self.max_in_flight:
            raise ApiError("overloaded", f"{self.in_flight} requests in flight on this replica", self.retry_after_s)
        self._move(+1)
        return Ticket(self, route)

    def refuse(self, route: str, err: ApiError) -> None:
        """A request refused before admission: counted, never in flight."""
        self.metrics["errors"].inc(tags={"code": err.code})
        self.count(route, err.status, time.monotonic())

    def count(self, route: str, status: int, started: float) -> None:
        self.metrics["requests"].inc(tags={"route": route, "status": str(status)})
        self.metrics["latency"].observe(time.monotonic() - started, tags={"route": route})

    def _move(self, step: int) -> None:
        self.in_flight += step
        self.metrics["queue"].set(self.in_flight, tags={"stage": "ingress"})


class Ticket:
    """One admitted request. Its status defaults to 499 (the client left) until the handler sets one."""

    def __init__(self, admission: Admission, route: str) -> None:
        self.admission, self.route = admission, route
        self.started = time.monotonic()
        self.status = CLIENT_CLOSED
        self.released = False

    def fail(self, err: ApiError) -> None:
        self.status = err.status
        self.admission.metrics["errors"].inc(tags={"code": err.code})

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.admission._move(-1)
        self.admission.count(self.route, self.status, self.started)

    def release_with(self, owner: object) -> None:
        """Release when `owner` (a streamed response) is garbage-collected, if nothing released it before."""
        weakref.finalize(owner, self.release)


async def accounted(ticket: Ticket, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A streamed body with its outcome counted. Headers are gone once it starts, so a failure ends the
    stream short (a WAV header's length tells the client) and is counted with its status, never as 200."""
    try:
        async for chunk in body:
            yield chunk
        ticket.status = 200
    except ApiError as err:
        ticket.fail(err)
        log.warning("stream ended early: %s", err.message)
    except Exception as err:  # noqa: BLE001 - counted as a 500; the client sees a short stream
        ticket.fail(ApiError("internal_error", f"internal error ({type(err).__name__})"))
        log.exception("stream failed")
    finally:
        ticket.release()


class CountedStream(StreamingResponse):
    """A streamed response that releases its ticket however it ends: finished, failed, the client gone,
    or torn down before its body was ever iterated."""

    def __init__(self, ticket: Ticket, body: AsyncIterator[bytes], **kwargs) -> None:
        super().__init__(accounted(ticket, body), **kwargs)
        self.ticket = ticket
        ticket.release_with(self)

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.ticket.release()
