"""How fast the shipped default model writes a 10 s soundtrack: latents, decode, total, at batch 1 (CLI use)
and batch 8 (a catalogue), medians of --repeats runs after one warm-up. Prints JSON; the last line is the
summary with the device.

    python benchmarks/default_model.py [--checkpoint DIR] [--repeats 3] [--threads 2] [--steps N] [--solver midpoint]
        [--compiled]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import torch
from common import CLIP_S, add_checkpoint_args, describe_device, time_engine

from model.checkpoint import load_bundle
from model.engine import Engine, GenerationParams
from model.media import write_beat_video

PROMPT = "a bright piano piece in D major, 120 BPM"


def time_batch(engine: Engine, video: str, batch: int, repeats: int, steps=None, solver=None) -> dict:
    def request(seed: int):
        return engine.make_request(video, PROMPT, GenerationParams(seed=seed, steps=steps, solver=solver))

    return time_engine(engine, request, batch, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_checkpoint_args(parser, repeats=3)
    parser.add_argument("--compiled", action="store_true", help="the compiled engine (warmed up per batch first)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        video = os.path.join(tmp, "clip.mp4")
        write_beat_video(video, CLIP_S, beat_s=0.5, beats_per_bar=4)
        rows = []
        for batch in (1, 8):
            device = "cuda" if torch.cuda.is_available() else "cpu"
            engine = Engine(bundle, device=device, max_batch=batch, compiled=args.compiled)
            rows.append(time_batch(engine, video, batch, args.repeats, args.steps, args.solver))
            print(json.dumps(rows[-1]))
    one, eight = rows
    print(
        json.dumps(
            {
                "device": describe_device(),
                "checkpoint": args.checkpoint,
                "clip_s": CLIP_S,
                "steps": args.steps or bundle.config.flow.steps,
                "solver": args.solver or bundle.config.flow.solver,
                "compiled": args.compiled,
                "batch1_total_s": one["total_s"],
                "batch1_latents_s": one["latents_s"],
                "batch1_decode_s": one["decode_s"],
                "batch8_seconds_per_clip": eight["seconds_per_clip"],
                "batch8_speedup": round(one["seconds_per_clip"] / eight["seconds_per_clip"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
