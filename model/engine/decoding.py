"""Decode windows in the order they were handed out, optionally on a second thread while the patch loop goes on.

The engine's streaming iterator hands each complete decode window (model/vae.py, `StreamingLatents`) to a
`WindowDecoder` and yields what it has finished. With `overlap`, one background thread decodes (on a GPU,
on its own CUDA stream, so its kernels run beside the patch loop's); the audio and its order are exactly
those of decoding inline, and at most `depth` windows wait, so memory stays flat whatever the length.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from model.vae import AudioAutoencoder, DecodeWindow, StreamingLatents, decode_window_array


class WindowDecoder:
    def __init__(self, vae: AudioAutoencoder, overlap: bool, depth: int = 4) -> None:
        self.vae, self.depth = vae, depth
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="vae-decode") if overlap else None
        device = next(vae.parameters()).device
        self.stream = torch.cuda.Stream(device) if overlap and device.type == "cuda" else None
        self.pending: deque[tuple[str, StreamingLatents, DecodeWindow, Future | np.ndarray]] = deque()

    def put(self, request_id: str, clip: StreamingLatents, window: DecodeWindow, latents: np.ndarray) -> None:
        """Decode `window` of `request_id` (its latents from `clip.add`): now, or queued on the thread."""
        job = self._decode(latents, window) if self.pool is None else self.pool.submit(self._decode, latents, window)
        self.pending.append((request_id, clip, window, job))

    def finished(self, wait: bool = False) -> Iterator[tuple[str, np.ndarray]]:
        """(request id, the clip's next audio) for the decoded windows at the head of the queue, in order: those
        already done, and more while over `depth` wait; with `wait`, all of them."""
        while self.pending:
            request_id, clip, window, job = self.pending[0]
            if isinstance(job, Future) and not (wait or job.done() or len(self.pending) > self.depth):
                return
            self.pending.popleft()
            yield request_id, clip.emit(window, job.result() if isinstance(job, Future) else job)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _decode(self, latents: np.ndarray, window: DecodeWindow) -> np.ndarray:
        if self.stream is None:
            return decode_window_array(self.vae, latents, window)
        with torch.cuda.stream(self.stream):  # the copy back to the host waits for this stream's kernels
            return decode_window_array(self.vae, latents, window)
