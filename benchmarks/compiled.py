"""The patch loop's fast settings against the plain one on one model, in ONE run: compiled (LocDiT and the
planning step per batch bucket, model/engine/refine.py and runner.py) and/or bf16 (model/engine/precision.py)
against eager fp32. Per batch: seconds of latents per 10 s clip (the decode is timed by benchmarks/decode.py),
the time the first batch of a bucket costs (compiling included), and how far the variant's latents land from
the plain ones for the same requests: over the whole clips, and over their first patch (later patches feed
back what came before, so a bf16 draw drifts from the fp32 one as any two samplers' do). Runs interleave, so a
noisy neighbour slows both alike. A clip is a prompt and 10 s of random CLIP features, so no video decoding
is timed. Prints JSON; the last line is the summary with the device.

    python benchmarks/compiled.py [--checkpoint DIR] [--batches 1 8] [--repeats 2] [--steps N] [--solver S]
        [--variant compiled|bf16|compiled-bf16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from common import CLIP_S, add_checkpoint_args, describe_device, feature_request, sync

from model.checkpoint import load_bundle
from model.engine import Engine

PROMPT = "a bright piano piece in D major, 120 BPM"
VARIANTS = {
    "compiled": {"compiled": True},
    "bf16": {"compute_dtype": "bfloat16"},
    "compiled-bf16": {"compiled": True, "compute_dtype": "bfloat16"},
}


def run_engine(engine: Engine, batch: int, seed: int, steps, solver) -> tuple[float, dict]:
    """Seconds to write the latents of `batch` clips, and the latents."""
    requests = [feature_request(engine, seed + i, steps=steps, prompt=PROMPT, solver=solver) for i in range(batch)]
    sync(engine.device)
    started = time.perf_counter()
    latents = engine.generate_latents(requests)
    sync(engine.device)
    return time.perf_counter() - started, {r.request_id: latents[r.request_id] for r in requests}


def distance(got: dict, want: dict, frames: int | None = None) -> float:
    """max over clips of |got - want| / max |want|, over the first `frames` latent frames (None: all)."""
    return max(float((got[rid][:frames] - x[:frames]).abs().max() / x[:frames].abs().max()) for rid, x in want.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_checkpoint_args(parser, repeats=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--variant", choices=VARIANTS, default="compiled")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bundle = load_bundle(args.checkpoint)
    summary = {"device": describe_device(device), "checkpoint": args.checkpoint, "clip_s": CLIP_S}
    summary["variant"] = args.variant
    for batch in args.batches:
        engines = {
            "plain": Engine(bundle, device=device, max_batch=batch),
            "variant": Engine(bundle, device=device, max_batch=batch, **VARIANTS[args.variant]),
        }
        first_s, outputs, times = {}, {}, {name: [] for name in engines}
        for name, engine in engines.items():
            first_s[name], outputs[name] = run_engine(engine, batch, 0, args.steps, args.solver)
        for k in range(args.repeats):
            for name, engine in engines.items():
                times[name].append(run_engine(engine, batch, 100 * (k + 1), args.steps, args.solver)[0])
        per_clip = {name: statistics.median(t) / batch for name, t in times.items()}
        row = {
            "batch": batch,
            "plain_latents_s_per_clip": round(per_clip["plain"], 3),
            "variant_latents_s_per_clip": round(per_clip["variant"], 3),
            "speedup": round(per_clip["plain"] / per_clip["variant"], 3),
            "plain_first_batch_s": round(first_s["plain"], 1),
            "variant_first_batch_s": round(first_s["variant"], 1),  # compiling this bucket included
            "max_rel_diff": float(f"{distance(outputs['variant'], outputs['plain']):.2e}"),
            "first_patch_max_rel_diff": float(
                f"{distance(outputs['variant'], outputs['plain'], bundle.config.patch_size):.2e}"
            ),
        }
        print(json.dumps(row), flush=True)
        summary[f"batch{batch}"] = row
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
