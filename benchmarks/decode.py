"""Where a VAE decode's time goes and what cuts it, in ONE run: one 10 s clip of the `paper` preset's Oobleck
VAE (random weights: the time does not depend on them) decoded window by window as the engine does, in
fp32 and bf16, eager and through torch.compile (one graph for every window length), at each --batches size
(seconds per clip); the fp32 decode's time by operator family (convolutions, the Snake activations'
elementwise work, the rest); and how far each variant's audio lands from the fp32 eager decode. Prints
JSON; the last line is the summary with the device.

    python benchmarks/decode.py [--preset paper] [--batches 1 4] [--repeats 2] [--threads 2] [--no-compile]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from functools import partial

import torch
from common import CLIP_S, describe_device, sync
from torch.profiler import profile

from model.config import load_config
from model.vae import build_vae, decode_windows, native_bf16

CONVOLUTIONS = ("conv",)  # aten::convolution, mkldnn_convolution, cudnn_convolution, conv_transpose...
ELEMENTWISE = ("mul", "add", "sin", "pow", "exp", "addcmul", "copy_", "tanh", "elu")


def timed(fn, device, repeats: int) -> tuple[float, float, torch.Tensor]:
    """(first call's seconds, median of `repeats` later calls, the output)."""
    sync(device)
    started = time.perf_counter()
    out = fn()
    sync(device)
    first = time.perf_counter() - started
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - started)
    return first, statistics.median(times), out


def breakdown(fn) -> dict[str, float]:
    """Share of the decode's operator self-time per family."""
    with profile() as prof:
        fn()
    totals = {"convolutions": 0.0, "elementwise": 0.0, "other": 0.0}
    for event in prof.key_averages():
        name = event.key.removeprefix("aten::")
        family = "convolutions" if any(c in name for c in CONVOLUTIONS) else "other"
        if family == "other" and name.rstrip("_") in {e.rstrip("_") for e in ELEMENTWISE}:
            family = "elementwise"
        totals[family] += event.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return {k: round(v / whole, 3) for k, v in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper", help="whose VAE (its config; random weights)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--no-compile", action="store_true", help="eager only (compiling costs ~30 s a variant)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    vae = build_vae(load_config(args.preset).vae).to(device)
    vae.freeze()
    length = round(CLIP_S * vae.sample_rate / vae.hop)
    variants = [(dtype, False) for dtype in ("float32", "bfloat16")]
    variants += [] if args.no_compile else [(dtype, True) for dtype in ("float32", "bfloat16")]
    summary = {
        "benchmark": "decode",
        "device": describe_device(device),
        "native_bf16": native_bf16(device),
        "preset": args.preset,
        "vae": vae.cfg.family,
        "clip_s": CLIP_S,
        "latents": length,
        "windows": len(decode_windows(length, vae.cfg.chunk_latents, vae.context, vae.cfg.decode_crossfade)),
    }
    for batch in args.batches:
        latents = torch.randn(batch, vae.cfg.latent_dim, length, device=device)
        reference, per_clip = None, {}
        for dtype, compiled in variants:
            vae.set_decode(dtype, compiled)
            first, median, audio = timed(partial(vae.decode, latents), device, args.repeats)  # the engine's windows
            if reference is None:
                reference = audio
                if batch == args.batches[0] and device.type == "cpu":
                    summary["fp32_time_shares"] = breakdown(partial(vae.decode, latents))
            name = f"{dtype}{'_compiled' if compiled else ''}"
            per_clip[name] = median / batch
            row = {
                "batch": batch,
                "variant": name,
                "seconds_per_clip": round(median / batch, 3),
                "first_call_s": round(first, 1),
                "rel_error_vs_fp32": float(f"{float((audio - reference).norm() / reference.norm()):.2e}"),
            }
            print(json.dumps(row), flush=True)
        summary[f"batch{batch}_seconds_per_clip"] = {k: round(v, 3) for k, v in per_clip.items()}
        summary[f"batch{batch}_speedup_vs_fp32"] = {k: round(per_clip["float32"] / v, 2) for k, v in per_clip.items()}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
