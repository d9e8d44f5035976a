"""Row bookkeeping for the engine, in pure Python: which request holds which cache row, and how far it is."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from model.engine.request import GenerationRequest


@dataclass
class RowState:
    request: GenerationRequest
    produced: int = 0  # patches refined so far

    @property
    def finished(self) -> bool:
        return self.produced >= self.request.n_patches


class Scheduler:
    """First come, first served over a fixed pool of rows; rows join and leave between steps."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
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
            self.running[row] = RowState(request)
            admitted.append((row, request))
        return admitted

    def active_rows(self) -> list[int]:
        return sorted(self.running)

    def record(self, row: int) -> RowState:
        state = self.running[row]
        state.produced += 1
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
