"""What the benchmarks share: the device in words, timing that waits for the GPU, a clip request made of
random CLIP features, and the latents / decode / total timing of one engine batch.

The benchmarks run as `python benchmarks/NAME.py`, which puts this folder first on sys.path: `import common`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from model.checkpoint import default_checkpoint
from model.config import SOLVERS
from model.engine import Engine, GenerationParams, GenerationRequest

CLIP_S = 10.0


def describe_device(device: torch.device | str | None = None) -> str:
    """The GPU's name, or the CPU with the torch threads that ran the numbers."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    isa = torch.backends.cpu.get_cpu_capability()  # e.g. AVX2, AVX512, AMX: the same "2-core CPU" differs by host
    return f"{os.cpu_count()}-core {platform.machine()} CPU ({isa}, {torch.get_num_threads()} torch threads), no GPU"


def add_checkpoint_args(parser: argparse.ArgumentParser, repeats: int) -> None:
    """The flags of a benchmark of one checkpoint: which, how many timed runs, threads, and its sampler."""
    parser.add_argument("--checkpoint", default=default_checkpoint())
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--steps", type=int, help="LocDiT solver steps (default: the model's)")
    parser.add_argument("--solver", choices=SOLVERS, help="LocDiT solver (default: the model's)")


def sync(device: torch.device | str) -> None:
    """CUDA calls return before the work is done: wait for it before reading the clock."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def feature_request(
    engine: Engine,
    seed: int,
    duration_s: float = CLIP_S,
    steps: int | None = None,
    prompt: str | None = None,
    solver: str | None = None,
) -> GenerationRequest:
    """A clip with random CLIP features at the model's frame rate (what a real video becomes) instead of a
    video file, so no decoding or CLIP tower is timed. `steps=None`, `solver=None` keep the model's own."""
    cfg = engine.cfg
    frames = torch.randn(
        round(duration_s * cfg.vision.fps), cfg.vision.feature_dim, generator=torch.Generator().manual_seed(seed)
    )
    params = GenerationParams(seed=seed, duration_s=duration_s, steps=steps, solver=solver)
    return engine.make_request(prompt=prompt, params=params, frames=frames, request_id=f"clip{seed}")


def time_engine(
    engine: Engine,
    make_request: Callable[[int], GenerationRequest],
    batch: int,
    repeats: int,
    warmup_request: Callable[[int], GenerationRequest] | None = None,
) -> dict:
    """Medians over `repeats` batches (after one warm-up) of `batch` requests `make_request(seed)`: all their
    latents in one batch, then each decoded to audio. The warm-up batch is made by `warmup_request`, by
    default `make_request` (a shorter clip warms the allocator and thread pools as well, in less time)."""

    def once(seed: int, make=make_request) -> tuple[float, float]:
        requests = [make(seed + i) for i in range(batch)]
        sync(engine.device)
        started = time.perf_counter()
        latents = engine.generate_latents(requests)
        sync(engine.device)
        mid = time.perf_counter()
        for r in requests:
            engine.decode(latents[r.request_id], r)  # returns numpy audio: the GPU has finished
        return mid - started, time.perf_counter() - mid

    once(0, warmup_request or make_request)  # warm-up: allocator, kernels, caches
    runs = [once(100 * (k + 1)) for k in range(repeats)]
    latent_s = statistics.median(r[0] for r in runs)
    decode_s = statistics.median(r[1] for r in runs)
    return {
        "batch": batch,
        "latents_s": round(latent_s, 3),
        "decode_s": round(decode_s, 3),
        "total_s": round(latent_s + decode_s, 3),
        "seconds_per_clip": round((latent_s + decode_s) / batch, 3),
        "clips_per_s": round(batch / (latent_s + decode_s), 3),
    }
