"""The streaming path (`Engine.stream_audio`, what `videorobin generate` runs) with the VAE decode inline vs
overlapped with the patch loop on a second thread (model/engine/decoding.py), in ONE run: seconds until
the whole clip's audio has streamed, medians of --repeats runs after a warm-up, at each --batches size,
and whether both wrote the same audio. A clip is a prompt and 10 s of random CLIP features (no video
decoding is timed). Prints JSON; the last line is the summary with the device.

    python benchmarks/overlap.py [--checkpoint DIR | --preset paper] [--steps N] [--solver S] [--decode-dtype D]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from common import CLIP_S, add_checkpoint_args, describe_device, feature_request, sync

from model.build import build_bundle
from model.checkpoint import load_bundle
from model.config import DECODE_DTYPES, load_config
from model.engine import Engine

PROMPT = "a bright piano piece in D major, 120 BPM"


def stream_once(engine: Engine, batch: int, seed: int, args) -> tuple[float, list[np.ndarray]]:
    requests = [
        feature_request(engine, seed + i, steps=args.steps, prompt=PROMPT, solver=args.solver) for i in range(batch)
    ]
    sync(engine.device)
    started = time.perf_counter()
    chunks = [audio for _, audio in engine.stream_audio(requests)]  # numpy: the device has finished
    return time.perf_counter() - started, chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_checkpoint_args(parser, repeats=3)
    parser.add_argument("--preset", help="random weights of this preset instead of --checkpoint (e.g. paper)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1])
    parser.add_argument("--decode-dtype", choices=DECODE_DTYPES, default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bundle = build_bundle(load_config(args.preset)) if args.preset else load_bundle(args.checkpoint)
    summary = {
        "benchmark": "overlap",
        "device": describe_device(device),
        "model": args.preset or args.checkpoint,
        "clip_s": CLIP_S,
        "decode_dtype": args.decode_dtype,
    }
    for batch in args.batches:
        seconds, audio = {}, {}
        for overlap in (False, True):
            engine = Engine(
                bundle, device=device, max_batch=batch, decode_dtype=args.decode_dtype, overlap_decode=overlap
            )
            stream_once(engine, batch, 0, args)  # warm-up
            runs = [stream_once(engine, batch, 100, args) for _ in range(args.repeats)]
            seconds[overlap], audio[overlap] = statistics.median(t for t, _ in runs), runs[0][1]
        same = all(np.array_equal(a, b) for a, b in zip(audio[False], audio[True], strict=True))
        row = {
            "batch": batch,
            "inline_s": round(seconds[False], 3),
            "overlapped_s": round(seconds[True], 3),
            "speedup": round(seconds[False] / seconds[True], 3),
            "same_audio": same,
        }
        print(json.dumps(row), flush=True)
        summary[f"batch{batch}"] = row
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
