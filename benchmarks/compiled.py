"""Compiled vs eager patch step (LocDiT, model/engine/refine.py, and the planning step, model/engine/runner.py) on
one model, in ONE run: seconds of latents per 10 s clip at each batch (the decode is timed by
benchmarks/decode.py), the time the first batch of a bucket costs
(compiling included), and how far the compiled latents land from the eager ones for the same requests. A
clip is a prompt and 10 s of random CLIP features, so no video decoding is timed. Prints JSON; the last
line is the summary with the device.

    python benchmarks/compiled.py [--checkpoint DIR] [--batches 1 8] [--repeats 2] [--steps N] [--solver S]
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


def run_engine(engine: Engine, batch: int, seed: int, steps, solver) -> tuple[float, dict]:
    """Seconds to write the latents of `batch` clips, and the latents."""
    requests = [feature_request(engine, seed + i, steps=steps, prompt=PROMPT, solver=solver) for i in range(batch)]
    sync(engine.device)
    started = time.perf_counter()
    latents = engine.generate_latents(requests)
    sync(engine.device)
    return time.perf_counter() - started, {r.request_id: latents[r.request_id] for r in requests}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_checkpoint_args(parser, repeats=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bundle = load_bundle(args.checkpoint)
    summary = {"device": describe_device(device), "checkpoint": args.checkpoint, "clip_s": CLIP_S}
    for batch in args.batches:
        per_clip, first_s, outputs = {}, {}, {}
        for compiled in (False, True):
            engine = Engine(bundle, device=device, max_batch=batch, compiled=compiled)
            first_s[compiled], outputs[compiled] = run_engine(engine, batch, 0, args.steps, args.solver)
            times = [run_engine(engine, batch, 100 * (k + 1), args.steps, args.solver)[0] for k in range(args.repeats)]
            per_clip[compiled] = statistics.median(times) / batch
        worst = max(
            float((outputs[True][rid] - eager).abs().max() / eager.abs().max()) for rid, eager in outputs[False].items()
        )
        row = {
            "batch": batch,
            "eager_latents_s_per_clip": round(per_clip[False], 3),
            "compiled_latents_s_per_clip": round(per_clip[True], 3),
            "speedup": round(per_clip[False] / per_clip[True], 3),
            "eager_first_batch_s": round(first_s[False], 1),
            "compiled_first_batch_s": round(first_s[True], 1),  # compiling this bucket included
            "max_rel_diff": float(f"{worst:.2e}"),  # max |compiled - eager| / max |eager| over the clips
        }
        print(json.dumps(row), flush=True)
        summary[f"batch{batch}"] = row
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
