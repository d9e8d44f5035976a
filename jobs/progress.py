"""The one overall progress line of a batch job (score, prepare, evaluate), and ETAs.

`score: 42/100 rows, 3.1 rows/s, ETA 0:00:19` on stderr, from the driver loop that receives the finished
rows: redrawn in place on a terminal; otherwise (a log file, a RayJob's output, --log-json) logged every
`every_s` seconds, and once at the end.
"""

from __future__ import annotations

import datetime
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

log = logging.getLogger("jobs.progress")
T = TypeVar("T")
INTERACTIVE: bool | None = None  # None: redraw when stderr is a terminal; the CLI sets False under --log-json


def eta_text(seconds: float) -> str:
    """0:00:19, 1 day, 2:03:04."""
    return str(datetime.timedelta(seconds=max(0, round(seconds))))


class Progress:
    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "rows",
        every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        interactive: bool | None = None,
    ) -> None:
        self.label, self.total, self.unit, self.every_s, self.clock = label, total, unit, every_s, clock
        self.done = 0
        self.started = self.last = clock()
        chosen = INTERACTIVE if interactive is None else interactive
        self.interactive = sys.stderr.isatty() if chosen is None else chosen

    def line(self) -> str:
        elapsed = self.clock() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        count = f"{self.label}: {self.done}/{self.total} {self.unit}"
        if self.done >= self.total:
            return f"{count} in {eta_text(elapsed)}, {rate:.3g} {self.unit}/s"
        eta = eta_text((self.total - self.done) / rate) if rate > 0 else "?"
        return f"{count}, {rate:.3g} {self.unit}/s, ETA {eta}"

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if self.interactive:
            if now - self.last >= 0.2 or self.done >= self.total:
                self.last = now
                sys.stderr.write(f"\r{self.line()}\x1b[K")
                sys.stderr.flush()
        elif now - self.last >= self.every_s:
            self.last = now
            log.info("%s", self.line())

    def close(self) -> None:
        if self.interactive:
            sys.stderr.write(f"\r{self.line()}\x1b[K\n")
            sys.stderr.flush()
        else:
            log.info("%s", self.line())


def track(items: Iterable[T], label: str, total: int, unit: str = "rows", **kwargs) -> Iterator[T]:
    """`items`, counting each as it comes; the progress line is finished however the loop ends."""
    progress = Progress(label, total, unit, **kwargs)
    try:
        for item in items:
            progress.update()
            yield item
    finally:
        progress.close()
