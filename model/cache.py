"""A static, batched KV cache with per-row lengths, owned by the engine (never by a module).

The cache is a pool of rows preallocated once. A request occupies one row for its lifetime; rows join
(prefill) and leave (free) between steps while the others keep their state, and each row writes at its
own position, so clips of different lengths and prefix sizes advance together in one batch.

Lengths are bookkept on the host: a step's positions and how far it attends are known without reading
anything back from the device, so the patch loop queues its device work without waiting (README "Fast
generation"). Index tensors go to the device with non-blocking copies for the same reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Rows:
    """The cache rows one call works on: an index tensor, plus a slice when they are consecutive."""

    index: torch.Tensor  # (B,) long, on the cache's device
    span: slice | None
    host: torch.Tensor  # (B,) long, the same on the host

    @classmethod
    def of(cls, rows: Sequence[int], device: torch.device | str = "cpu", sliced: bool = True) -> Rows:
        """`sliced=False`: always index, never slice (a compiled step sees one kind of Rows per shape)."""
        rows = list(rows)
        consecutive = sliced and bool(rows) and rows == list(range(rows[0], rows[0] + len(rows)))
        span = slice(rows[0], rows[0] + len(rows)) if consecutive else None
        host = torch.tensor(rows, dtype=torch.long)
        return cls(host.to(device, non_blocking=True), span, host)

    def __len__(self) -> int:
        return self.index.numel()

    def take(self, t: torch.Tensor) -> torch.Tensor:
        """t[rows] along dim 0; a view when the rows are consecutive."""
        return t[self.span] if self.span is not None else t.index_select(0, self.index)


class KVCache:
    """Keys and values of one transformer stack for `capacity` rows of up to `max_len` positions, stored in
    `dtype` (the loop's compute dtype) whatever the dtype of what is written."""

    def __init__(
        self,
        layers: int,
        capacity: int,
        kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (layers, capacity, kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = torch.zeros(capacity, dtype=torch.long)  # filled positions per row, on the host
        self.max_len = max_len

    @property
    def capacity(self) -> int:
        return self.lengths.numel()

    def write_prefix(self, layer: int, rows: Rows, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store a prefill's keys/values (B, kv_heads, T, hd) at positions [0, T) of `rows`."""
        t = k.shape[2]
        if t > self.max_len:
            raise ValueError(f"prefix of {t} positions exceeds the cache's max_len {self.max_len}")
        self.k[layer, rows.index, :, :t] = k.to(self.k.dtype)
        self.v[layer, rows.index, :, :t] = v.to(self.v.dtype)

    def append(self, layer: int, rows: Rows, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one new position (B, kv_heads, 1, hd) at each row's slot `pos` (B,); callers check the bound."""
        self.k[layer, rows.index, :, pos] = k[:, :, 0].to(self.k.dtype)
        self.v[layer, rows.index, :, pos] = v[:, :, 0].to(self.v.dtype)

    def slots(self, rows: Rows) -> tuple[torch.Tensor, int]:
        """Where each row's next position goes (B,) on the host, and how many positions a step over `rows`
        attends (one past the furthest slot)."""
        pos = self.lengths[rows.host]
        upto = int(pos.max()) + 1
        if upto > self.max_len:
            raise ValueError(f"a row would exceed the cache's max_len {self.max_len}")
        return pos, upto

    def read(self, layer: int, rows: Rows, upto: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, kv_heads, upto, hd) of `rows`; slots past a row's length are masked by callers."""
        return rows.take(self.k[layer])[:, :, :upto], rows.take(self.v[layer])[:, :, :upto]

    def set_lengths(self, rows: Rows, lengths: torch.Tensor) -> None:
        """`lengths` (B,) on the host (a prefill's are known there before anything runs)."""
        self.lengths[rows.host] = lengths

    def advance(self, rows: Rows) -> None:
        self.lengths[rows.host] += 1

    def free(self, rows: Rows) -> None:
        self.lengths[rows.host] = 0
