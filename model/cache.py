"""A static, batched KV cache with per-row lengths, owned by the engine (never by a module).

The cache is a pool of rows preallocated once. A request occupies one row for its lifetime; rows join
(prefill) and leave (free) between steps while the others keep their state, and each row writes at its
own position, so clips of different lengths and prefix sizes advance together in one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Rows:
    """The cache rows one call works on: an index tensor, plus a slice when they are consecutive."""

    index: torch.Tensor  # (B,) long
    span: slice | None

    @classmethod
    def of(cls, rows: Sequence[int], device: torch.device | str = "cpu") -> Rows:
        rows = list(rows)
        consecutive = bool(rows) and rows == list(range(rows[0], rows[0] + len(rows)))
        span = slice(rows[0], rows[0] + len(rows)) if consecutive else None
        return cls(torch.tensor(rows, dtype=torch.long, device=device), span)

    def __len__(self) -> int:
        return self.index.numel()

    def take(self, t: torch.Tensor) -> torch.Tensor:
        """t[rows] along dim 0; a view when the rows are consecutive."""
        return t[self.span] if self.span is not None else t.index_select(0, self.index)


class KVCache:
    """Keys and values of one transformer stack for `capacity` rows of up to `max_len` positions."""

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
        self.lengths = torch.zeros(capacity, dtype=torch.long, device=device)  # filled positions per row
        self.max_len = max_len

    @property
    def capacity(self) -> int:
        return self.lengths.numel()

    def write_prefix(self, layer: int, rows: Rows, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store a prefill's keys/values (B, kv_heads, T, hd) at positions [0, T) of `rows`."""
        t = k.shape[2]
        if t > self.max_len:
            raise ValueError(f"prefix of {t} positions exceeds the cache's max_len {self.max_len}")
        self.k[layer, rows.index, :, :t] = k
        self.v[layer, rows.index, :, :t] = v

    def append(self, layer: int, rows: Rows, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one new position (B, kv_heads, 1, hd) at each row's slot `pos` (B,); callers check the bound."""
        self.k[layer, rows.index, :, pos] = k[:, :, 0]
        self.v[layer, rows.index, :, pos] = v[:, :, 0]

    def read(self, layer: int, rows: Rows, upto: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, kv_heads, upto, hd) of `rows`; slots past a row's length are masked by callers."""
        return rows.take(self.k[layer])[:, :, :upto], rows.take(self.v[layer])[:, :, :upto]

    def set_lengths(self, rows: Rows, lengths: torch.Tensor) -> None:
        self.lengths[rows.index] = lengths

    def advance(self, rows: Rows) -> None:
        self.lengths[rows.index] += 1

    def free(self, rows: Rows) -> None:
        self.lengths[rows.index] = 0
