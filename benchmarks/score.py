"""Catalogue-scoring benchmark: the Ray Data job vs the standalone engine over the same clips, in ONE run.

Both do the same work per video: probe, batched generation (frames read and CLIP-encoded window by window),
VAE decode, write a WAV. The ratio of their throughputs is the pipeline's overhead (or gain, where stages overlap).
Prints one JSON object per measurement; the last line is the summary.

    python benchmarks/score.py [--videos 48] [--preset tiny] [--device cuda] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time

import pyarrow.parquet as pq
import ray
import torch

from jobs.catalogue import default_seed, read_catalogue
from jobs.score import ScoreConfig, run
from model.build import build_bundle
from model.checkpoint import load_bundle, save_bundle
from model.config import load_config
from model.engine import Engine, GenerationParams
from model.media import write_audio, write_sample_video

DURATIONS = [4.0, 6.0, 8.0, 10.0, 12.0, 5.0, 7.0, 9.0]


def make_library(root: str, videos: int) -> str:
    rows = []
    for i in range(videos):
        path = os.path.join(root, f"v{i:03d}.mp4")
        write_sample_video(path, DURATIONS[i % len(DURATIONS)], cut_every_s=0.5 + 0.1 * (i % 7), size=96)
        rows.append({"id": f"v{i:03d}", "video": path})
    catalogue = os.path.join(root, "catalogue.jsonl")
    with open(catalogue, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return catalogue


def standalone(checkpoint: str, catalogue: str, out: str, device: str, batch: int, steps: int) -> dict:
    """The engine in one process: prepare every request, generate `batch` at a time, decode, write."""
    start = time.perf_counter()
    engine = Engine(load_bundle(checkpoint), device=device, max_batch=batch)
    rows = read_catalogue(catalogue, None)
    requests = [
        engine.make_request(
            video=r["video"],
            prompt=r["prompt"],
            request_id=r["id"],
            params=GenerationParams(seed=default_seed(r["id"]), steps=steps),
        )
        for r in rows
    ]
    audio_s = 0.0
    for i in range(0, len(requests), batch):
        chunk = requests[i : i + batch]
        for result in engine.generate(chunk):
            write_audio(os.path.join(out, f"{result.request_id}.wav"), result.audio, result.sample_rate)
            audio_s += result.duration_s
    wall = time.perf_counter() - start
    return {"wall_s": wall, "videos_per_s": len(rows) / wall, "audio_s_per_wall_s": audio_s / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=48, help="enough to amortise the actors' start-up")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    gpus = 1.0 if args.device == "cuda" else 0.0
    with tempfile.TemporaryDirectory() as root:
        catalogue = make_library(root, args.videos)
        checkpoint = os.path.join(root, "ckpt")
        save_bundle(build_bundle(load_config(args.preset)), checkpoint)
        ray.init(num_cpus=os.cpu_count() * 2, include_dashboard=False, log_to_driver=False)
        # GPU stages share one device: fractions, so both actor pools fit on it.
        cfg = ScoreConfig(
            catalogue=catalogue,
            out=os.path.join(root, "scored"),
            checkpoint=checkpoint,
            steps=args.steps,
            generate_batch=args.batch,
            generate_gpus=gpus / 2,
            decode_gpus=gpus / 4,
        )
        started = time.time()
        pipeline = run(cfg)
        finished = pq.read_table(os.path.join(root, "scored", "manifest.parquet"))["finished_at"].to_pylist()
        pipeline["first_output_s"] = min(finished) - started  # actor start-up + the first batch
        print(json.dumps({"measure": "pipeline", **pipeline}), flush=True)
        ray.shutdown()
        os.makedirs(os.path.join(root, "alone"))
        alone = standalone(checkpoint, catalogue, os.path.join(root, "alone"), args.device, args.batch, args.steps)
        print(json.dumps({"measure": "standalone_engine", **alone}), flush=True)
    device = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({platform.machine()}, {os.cpu_count()} cores)"
    )
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(
        json.dumps(
            {
                "device": device,
                "commit": commit,
                "preset": args.preset,
                "videos": args.videos,
                "steps": args.steps,
                "pipeline_videos_per_s": pipeline["videos_per_s"],
                "pipeline_audio_s_per_wall_s": pipeline["audio_s_per_wall_s"],
                "engine_videos_per_s": alone["videos_per_s"],
                "engine_audio_s_per_wall_s": alone["audio_s_per_wall_s"],
                "pipeline_over_engine": pipeline["videos_per_s"] / alone["videos_per_s"],
                "pipeline_first_output_s": pipeline["first_output_s"],
            }
        )
    )


if __name__ == "__main__":
    main()
