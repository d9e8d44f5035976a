"""The one transformer of the project: RMSNorm, RoPE, grouped-query attention, SwiGLU.

SemanticLM and RITE run it causally; LocEnc and LocDiT run it bidirectionally. Two entry points:
`forward` over whole sequences (training, prefill, the naive reference) and `forward_step` for one new
position per row against a `KVCache`. The math follows Llama/Qwen2 exactly (rotate-half RoPE, repeated
KV heads, fp32 RMSNorm), so such checkpoints load by a key map (`model/hf_import.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.cache import KVCache, Rows
from model.config import TransformerConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class Rotary(nn.Module):
    """Rotate-half RoPE, computed in fp32 for arbitrary per-row positions."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[..., None] * self.inv_freq  # (B, T, hd/2)
        emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # (B, 1, T, hd)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.kv_heads, cfg.head_dim
        self.q = nn.Linear(cfg.hidden, cfg.heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.k = nn.Linear(cfg.hidden, cfg.kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.v = nn.Linear(cfg.hidden, cfg.kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.o = nn.Linear(cfg.heads * cfg.head_dim, cfg.hidden, bias=False)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, kvh, T, hd)
        v = self.v(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        return _rotate(q, cos, sin), _rotate(k, cos, sin), v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool):
        """GQA without copying K/V: the query heads sharing a KV head are folded into the query length."""
        B, _, T, hd = q.shape
        rep = self.heads // self.kv_heads
        qg = q.reshape(B, self.kv_heads, rep * T, hd)  # (B, kvh, rep*T, hd), head h = kv * rep + r
        if causal and mask is None:
            mask = torch.ones(T, k.shape[2], dtype=torch.bool, device=q.device).tril(k.shape[2] - T)[None, None]
        if mask is not None and mask.shape[2] > 1:
            mask = mask.repeat(1, 1, rep, 1)  # (B|1, 1, rep*T, S); a (B, 1, 1, S) mask broadcasts as is
        out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask)
        out = out.reshape(B, self.heads, T, hd).transpose(1, 2).reshape(B, T, self.heads * hd)
        return self.o(out)


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.gate = nn.Linear(hidden, ffn, bias=False)
        self.up = nn.Linear(hidden, ffn, bias=False)
        self.down = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.hidden, cfg.ffn)


class Transformer(nn.Module):
    """A stack of blocks plus a final norm; no embedding and no head (callers own their I/O projections)."""

    def __init__(self, cfg: TransformerConfig, causal: bool) -> None:
        super().__init__()
        self.cfg, self.causal = cfg, causal
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta)

    def new_cache(self, capacity: int, max_len: int, device, dtype=torch.float32) -> KVCache:
        cfg = self.cfg
        return KVCache(cfg.layers, capacity, cfg.kv_heads, max_len, cfg.head_dim, dtype=dtype, device=device)

    def forward(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor | None = None,
        cache: KVCache | None = None,
        rows: Rows | None = None,
    ) -> torch.Tensor:
        """Run whole (right-padded) sequences.

        Args:
            x: (B, T, H) input embeddings.
            lengths: (B,) valid positions per row; None means all T are valid.
            cache, rows: when given, the keys/values are stored as each row's prefix (prefill).
        Returns:
            (B, T, H) normalised hidden states; positions past a row's length are garbage.
        """
        B, T, _ = x.shape
        positions = torch.arange(T, device=x.device).expand(B, T)
        cos, sin = self.rotary(positions, x.dtype)
        mask = None
        if lengths is not None:
            valid = lengths.to(x.device, non_blocking=True)[:, None]
            mask = (torch.arange(T, device=x.device)[None, :] < valid)[:, None, None, :]  # (B,1,1,T)
            if self.causal:
                mask = mask & torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        for i, block in enumerate(self.layers):
            q, k, v = block.attn.project(block.attn_norm(x), cos, sin)
            if cache is not None:
                cache.write_prefix(i, rows, k, v)
            x = x + block.attn.attend(q, k, v, mask, self.causal)
            x = x + block.mlp(block.mlp_norm(x))
        if cache is not None:  # a prefill passes its lengths on the host: nothing is read back here
            cache.set_lengths(rows, lengths.cpu() if lengths is not None else torch.full((B,), T))
        return self.norm(x)

    def forward_step(self, x: torch.Tensor, cache: KVCache, rows: Rows, pos: torch.Tensor, upto: int) -> torch.Tensor:
        """Write one new position per row at its slot and attend over that row's cached prefix.

        Args:
            x: (B, H) the new position's input embedding for each row in `rows`.
            pos, upto: each row's slot (B,) on x's device and how many positions to attend, from
                `cache.slots(rows)` (model/engine/runner.py's compiled step attends over max_len); the
                cache's lengths are the caller's to advance. Nothing is read back, so it compiles to one
                graph per shape.
        Returns:
            (B, H) its normalised hidden state.
        """
        cos, sin = self.rotary(pos[:, None], x.dtype)
        mask = (torch.arange(upto, device=x.device)[None, :] <= pos[:, None])[:, None, None, :]  # (B,1,1,S)
        h = x[:, None]  # (B, 1, H)
        for i, block in enumerate(self.layers):
            q, k, v = block.attn.project(block.attn_norm(h), cos, sin)
            cache.append(i, rows, pos, k, v)
            keys, values = cache.read(i, rows, upto)
            h = h + block.attn.attend(q, keys, values, mask, causal=False)
            h = h + block.mlp(block.mlp_norm(h))
        return self.norm(h)[:, 0]
