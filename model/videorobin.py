"""Video-Robin: the AR-Head (SemanticLM + FSQ + RITE) planning latent patches that LocDiT refines.

Sequence seen by the SemanticLM for one clip (concatenated, not interleaved; DESIGN.md §1):

    [text tokens][video frame tokens][audio-start][patch_1 ... patch_{N-1}]

The output at audio-start plans patch 1, the output at patch i plans patch i+1 (the shift by one patch).
A generation window that continues earlier audio (model/engine/windows.py) puts that audio's last patches
in the prefix after audio-start, exactly where teacher forcing puts a clip's first patches in training.
At those "audio" positions FSQ quantises the SemanticLM output into q; RITE reads q plus the position's
continuous input embedding and yields r; LocDiT is conditioned on mu = W1 q + W2 r. Text and frame
positions pass through unquantised so RITE sees the whole context.

Two paths compute the same plans: `plan_sequence` over whole sequences (training, and the naive
reference generator) and `prefill` + `plan_step` over a KV cache (the engine).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model.backbone import Transformer
from model.cache import KVCache, Rows
from model.config import VideoRobinConfig
from model.distill import Distillation
from model.flow import flow_loss
from model.fsq import FSQ
from model.locdit import LocDiT
from model.locenc import LocEnc
from model.timing import TimeEmbedding
from model.vision import ClipEncoder


def _at(t: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """t[b, pos[b, k]] for (B, T, H) t and (B, K) positions -> (B, K, H)."""
    return t.gather(1, pos[..., None].expand(-1, -1, t.shape[-1]))


@dataclass
class Conditions:
    """The conditioning of a batch of clips, ragged per row."""

    text_ids: list[torch.Tensor]  # each (Lt,) long
    frames: list[torch.Tensor | None]  # each (F, feature_dim) CLIP features, or None
    # Generation windows only: the patches (c, P, D) that open the window, and the time of the first frame
    # after the window's start (frames sit on the video's 1/fps grid, windows on the patch grid).
    context: list[torch.Tensor | None] | None = None
    frame_offset_s: list[float] | None = None

    def __len__(self) -> int:
        return len(self.text_ids)

    def row(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, float]:
        context = self.context[i] if self.context is not None else None
        offset = self.frame_offset_s[i] if self.frame_offset_s is not None else 0.0
        return self.text_ids[i], self.frames[i], context, offset


@dataclass
class PlanCaches:
    """The engine-owned KV caches of the two causal stacks."""

    semantic_lm: KVCache
    rite: KVCache | None

    def advance(self, rows: Rows) -> None:
        for cache in (self.semantic_lm, self.rite):
            if cache is not None:
                cache.advance(rows)

    def free(self, rows: Rows) -> None:
        for cache in (self.semantic_lm, self.rite):
            if cache is not None:
                cache.free(rows)


class VideoRobin(nn.Module):
    def __init__(self, cfg: VideoRobinConfig) -> None:
        super().__init__()
        self.cfg = cfg
        H, Hd, D = cfg.semantic_lm.hidden, cfg.locdit.hidden, cfg.latent_dim
        self.embed = nn.Embedding(cfg.semantic_lm.vocab_size, H)
        self.semantic_lm = Transformer(cfg.semantic_lm, causal=True)
        self.audio_start = nn.Parameter(torch.randn(H) * 0.02)
        self.clip = ClipEncoder(cfg.vision) if cfg.vision is not None else None
        self.vision_proj = nn.Linear(cfg.vision.feature_dim, H) if cfg.vision is not None else None
        self.fsq = FSQ(H, cfg.fsq) if cfg.fsq is not None else None
        self.rite = Transformer(cfg.rite, causal=True) if cfg.rite is not None else None
        self.locenc = LocEnc(cfg.locenc, D, out_dim=H)
        self.plan_proj = nn.Linear(H, Hd)  # W1
        self.residual_proj = nn.Linear(H, Hd) if cfg.rite is not None else None  # W2
        self.locdit = LocDiT(cfg.locdit, D)
        self.timing = TimeEmbedding(H) if cfg.time_embedding else None
        # Latent standardisation, measured on the training set; stored with the checkpoint (latent_stats.json).
        self.register_buffer("latent_mean", torch.zeros(D), persistent=False)
        self.register_buffer("latent_std", torch.ones(D), persistent=False)

    # ---- conditioning -------------------------------------------------------------------------------

    def at_time(self, x: torch.Tensor, seconds: torch.Tensor) -> torch.Tensor:
        """x (..., H) plus the embedding of its time (...) in seconds, when the model has one (model/timing.py)."""
        return x if self.timing is None else x + self.timing(seconds.to(x.device))

    def patch_start_s(self, index: torch.Tensor) -> torch.Tensor:
        """Seconds at which patch number `index` (0-based) starts."""
        return index * (self.cfg.patch_size / self.cfg.latent_rate)

    def prefix(self, cond: Conditions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embed [text][frames][audio-start][context patches] per row, right-padded.

        Returns:
            (B, Tp, H) embeddings; on the host, (B,) prefix lengths and (B,) positions of audio-start. The audio
            positions are audio-start and the context patches after it; the last position plans the next patch.
        """
        rows, starts = [], []
        device = self.audio_start.device
        for i in range(len(cond)):
            ids, frames, context, offset = cond.row(i)
            parts = [self.embed(ids.to(device, non_blocking=True))]
            if frames is not None:
                if self.vision_proj is None:
                    raise ValueError("frame features were given but this model has no vision (stage 1)")
                frame_s = offset + torch.arange(frames.shape[0], device=device) / self.cfg.vision.fps
                parts.append(self.at_time(self.vision_proj(frames.to(self.audio_start, non_blocking=True)), frame_s))
            parts.append(self.at_time(self.audio_start, torch.zeros((), device=device))[None])
            starts.append(sum(p.shape[0] for p in parts) - 1)
            if context is not None and context.shape[0]:
                emb = self.locenc(context.to(self.audio_start, non_blocking=True))  # (c, H): patch j plans patch j + 1
                parts.append(
                    self.at_time(emb, self.patch_start_s(torch.arange(1, context.shape[0] + 1, device=device)))
                )
            rows.append(torch.cat(parts))
        lengths = torch.tensor([r.shape[0] for r in rows])
        return nn.utils.rnn.pad_sequence(rows, batch_first=True), lengths, torch.tensor(starts)

    # ---- the AR-Head on whole sequences --------------------------------------------------------------

    def _quantize(self, h: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        if self.fsq is None:
            return h
        return torch.where(audio[..., None], self.fsq(h), h)

    def _mu(self, q: torch.Tensor, r: torch.Tensor | None) -> torch.Tensor:
        mu = self.plan_proj(q)
        return mu + self.residual_proj(r) if r is not None else mu

    def plan_sequence(self, cond: Conditions, patches: torch.Tensor, n_patches: torch.Tensor) -> torch.Tensor:
        """Planning embeddings for every patch of every clip, from whole sequences (teacher forcing).

        Args:
            patches: (B, N, P, D) standardised target latents, right-padded.
            n_patches: (B,) real patches per clip.
        Returns:
            (B, N, Hd) mu for each patch; mu[:, i] depends only on the conditions and patches < i.
        """
        B, N = patches.shape[:2]
        if cond.context is not None:
            raise ValueError("plan_sequence teacher-forces whole clips: context patches belong in `patches`")
        prefix, plen, _ = self.prefix(cond)
        plen = plen.to(prefix.device)
        lengths = plen + n_patches - 1
        emb = self.locenc(patches[:, : N - 1]) if N > 1 else prefix.new_zeros(B, 0, prefix.shape[-1])  # (B,N-1,H)
        emb = self.at_time(emb, self.patch_start_s(torch.arange(1, N, device=emb.device)))  # plans patch j+1
        x = prefix.new_zeros(B, int(lengths.max()), prefix.shape[-1])
        x[:, : prefix.shape[1]] = prefix  # zero-padded past each row's prefix
        slots = plen[:, None] + torch.arange(N - 1, device=x.device)  # (B, N-1) position of patch j+1
        valid = torch.arange(N - 1, device=x.device) < (n_patches - 1)[:, None]
        b_idx = torch.arange(B, device=x.device)[:, None].expand_as(slots)
        x[b_idx[valid], slots[valid]] = emb[valid]
        pos = torch.arange(x.shape[1], device=x.device)
        audio = (pos >= (plen - 1)[:, None]) & (pos < lengths[:, None])  # (B, T) audio-start and patches
        h = self.semantic_lm(x, lengths)
        q = self._quantize(h, audio)
        r = self.rite(q + x * audio[..., None], lengths) if self.rite is not None else None
        plan_pos = (plen - 1)[:, None] + torch.arange(N, device=x.device)  # (B, N)
        plan_pos = plan_pos.clamp(max=x.shape[1] - 1)  # padded patches read any slot; the loss masks them
        return self._mu(_at(q, plan_pos), _at(r, plan_pos) if r is not None else None)

    def forward(
        self, cond: Conditions, patches: torch.Tensor, n_patches: torch.Tensor, distill: Distillation | None = None
    ) -> dict[str, torch.Tensor]:
        """Training losses for a batch of clips (see `plan_sequence` for shapes): flow matching, or with
        `distill` the few-step student's distance to its teacher (model/distill.py)."""
        mu = self.plan_sequence(cond, patches, n_patches)  # (B, N, Hd)
        prev = torch.cat([torch.zeros_like(patches[:, :1]), patches[:, :-1]], dim=1)  # zeros before patch 1
        valid = torch.arange(patches.shape[1], device=patches.device) < n_patches[:, None]  # (B, N)
        if distill is not None:
            loss = distill.loss(self.locdit, mu[valid], prev[valid])
            return {"loss": loss, "distill": loss.detach()}
        weight = torch.ones(int(valid.sum()), device=patches.device)
        loss = flow_loss(self.locdit, mu[valid], prev[valid], patches[valid], weight, self.cfg.flow)
        return {"loss": loss, "flow": loss.detach()}

    # ---- the AR-Head over a KV cache (generation) ---------------------------------------------------

    def new_caches(self, capacity: int, max_len: int, device, dtype=torch.float32) -> PlanCaches:
        rite = self.rite.new_cache(capacity, max_len, device, dtype) if self.rite is not None else None
        return PlanCaches(self.semantic_lm.new_cache(capacity, max_len, device, dtype), rite)

    def prefill(self, cond: Conditions, caches: PlanCaches, rows: Rows) -> torch.Tensor:
        """Run the prefixes of rows into their cache slots (a new request, or a new window of a running one).
        Returns (B, Hd): mu of the patch after each row's prefix."""
        x, plen_host, audio_from = self.prefix(cond)
        plen, audio_from = (t.to(x.device, non_blocking=True) for t in (plen_host, audio_from))
        pos = torch.arange(x.shape[1], device=x.device)
        audio = (pos[None] >= audio_from[:, None]) & (pos[None] < plen[:, None])  # audio-start + context
        h = self.semantic_lm(x, plen_host, caches.semantic_lm, rows)
        q = self._quantize(h, audio)
        r = self.rite(q + x * audio[..., None], plen_host, caches.rite, rows) if self.rite is not None else None
        last = (plen - 1)[:, None]  # audio-start, or the last context patch
        return self._mu(_at(q, last)[:, 0], _at(r, last)[:, 0] if r is not None else None)

    def plan_step(self, patch: torch.Tensor, caches: PlanCaches, rows: Rows, index: torch.Tensor) -> torch.Tensor:
        """Feed each row's newest patch (B, P, D) back and return (B, Hd): mu of its next patch, whose number
        (0-based) is `index` (B,)."""
        pos, upto = caches.semantic_lm.slots(rows)  # both stacks hold the same positions
        mu = self.plan_at(patch, caches, rows, index, pos.to(patch.device, non_blocking=True), upto)
        caches.advance(rows)
        return mu

    def plan_at(
        self, patch: torch.Tensor, caches: PlanCaches, rows: Rows, index: torch.Tensor, pos: torch.Tensor, upto: int
    ) -> torch.Tensor:
        """`plan_step` writing at the cache slots `pos` (B,) and attending over `upto` positions, without
        advancing the caches: the part of a step that runs on the device (and compiles, model/engine/runner.py)."""
        e = self.at_time(self.locenc(patch), self.patch_start_s(index))  # (B, H)
        h = self.semantic_lm.forward_step(e, caches.semantic_lm, rows, pos, upto)
        q = self.fsq(h) if self.fsq is not None else h
        r = self.rite.forward_step(q + e, caches.rite, rows, pos, upto) if self.rite is not None else None
        return self._mu(q, r)

    # ---- latents ------------------------------------------------------------------------------------

    def standardize(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, D, L) VAE latents -> (B, L, D) standardised frames."""
        return (latents.transpose(1, 2) - self.latent_mean) / self.latent_std

    def destandardize(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, L, D) standardised frames -> (B, D, L) VAE latents."""
        return (frames * self.latent_std + self.latent_mean).transpose(1, 2)
