"""Row bookkeeping for the engine, in pure Python: which request holds which cache row, and how far it is."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from model.engine.request import GenerationRequest
from model.engine.windows import Window


@dataclass
class RowState:
    request: GenerationRequest
    windows: list[Window]
    produced: int = 0  # patches refined so far
    window: int = 0  # the window being written
    in_window: int = 0  # patches written in it
    recent: deque[torch.Tensor] = field(default_factory=deque)  # the last patches: the next window's context

    @property
    def finished(self) -> bool:
        return self.produced >= self.request.n_patches

    @property
    def timeline_patch(self) -> int:
        """The timeline number of the next patch: with the seed, it alone decides the patch's noise."""
        return self.request.first_patch + self.produced

    @property
    def current(self) -> Window:
        return self.windows[self.window]

    @property
    def opens_window(self) -> bool:
        """True when the row's next patch is the first of a window (the row needs a prefill)."""
        return self.in_window == 0 and not self.finished

    def record(self, patch: torch.Tensor) -> None:
        self.produced += 1
        self.in_window += 1
        self.recent.append(patch)
        if not self.finished and self.in_window == self.current.new:
            self.window, self.in_window = self.window + 1, 0


class Scheduler:
    """First come, first served over a fixed pool of rows; rows join and leave between steps."""

    def __init__(self, capacity: int, plan_windows, context_patches: int) -> None:
        self.capacity = capacity
        self.plan_windows, self.context_patches = plan_windows, context_patches
        self.waiting: deque[GenerationRequest] = deque()
        self.running: dict[int, RowState] = {}
        self._free = list(range(capacity))

    def add(self, request: GenerationRequest) -> None:
        if any(r.request_id == request.request_id for r in self.waiting) or any(
            s.request.request_id == request.request_id for s in self.running.values()
        ):
            raise ValueError(f"request id {request.request_id!r} is already in the engine")
        self.waiting.append(request)

    def admit(self) -> list[tuple[int, GenerationRequest]]:
        """Move waiting requests into free rows (lowest rows first, so batches stay consecutive)."""
        admitted = []
        self._free.sort()
        while self.waiting and self._free:
            row, request = self._free.pop(0), self.waiting.popleft()
            prompt = list(request.context) if request.context is not None else []
            recent = deque(prompt[-self.context_patches :], maxlen=self.context_patches)
            self.running[row] = RowState(request, self.plan_windows(request), recent=recent)
            admitted.append((row, request))
        return admitted

    def active_rows(self) -> list[int]:
        return sorted(self.running)

    def record(self, row: int, patch: torch.Tensor) -> RowState:
        state = self.running[row]
        state.record(patch)
        return state

    def release(self, row: int) -> None:
        del self.running[row]
        self._free.append(row)

    def abort(self, request_id: str) -> int | None:
        """Drop a request wherever it is; returns its row if it held one."""
        self.waiting = deque(r for r in self.waiting if r.request_id != request_id)
        for row, state in list(self.running.items()):
            if state.request.request_id == request_id:
                self.release(row)
                return row
        return None

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)
