"""Engine benchmark: KV cache vs naive recompute, batch 8 vs batch 1, and one paper-size clip.

Compares in ONE run, on whatever device is present (stated in the output):
  (a) paper preset, 10 s clip: the AR head (SemanticLM + RITE, with LocEnc feeding patches back) with the
      KV cache vs recomputing the whole sequence for every patch -> `cache_speedup`; and the whole patch
      loop (AR head + LocDiT trajectories) both ways -> `loop_speedup` (reported only).
  (b) tiny preset, eight 10 s clips: one at a time vs all eight in one batch -> `batch_speedup`.
  (c) paper preset: seconds for one 10 s clip at batch 1 (latents, then VAE decode).
Prints one JSON object per measurement; the last line holds the summary.

    python benchmarks/engine.py [--device cuda] [--repeats 3] [--parts batch paper] [--compiled]
"""

from __future__ import annotations

import argparse
import json
import subprocess

import torch
from common import CLIP_S, describe_device, feature_request, median_time

from model.build import build_bundle
from model.cache import Rows
from model.config import load_config
from model.engine import Engine
from model.engine.reference import generate_by_recompute
from model.videorobin import Conditions


def _emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


@torch.no_grad()
def ar_head_cached(engine: Engine, request, teacher: torch.Tensor) -> None:
    model, runner = engine.bundle.model, engine.runner
    rows = Rows.of([0], engine.device)
    frames = request.frames.features(0, round(CLIP_S * engine.cfg.vision.fps))
    model.prefill(Conditions([request.text_ids], [frames]), runner.caches, rows)
    for i in range(request.n_patches - 1):
        model.plan_step(teacher[i][None], runner.caches, rows, torch.tensor([i + 1], device=engine.device))
    runner.free([0])


def bench_paper(device: torch.device, repeats: int) -> dict:
    bundle = build_bundle(load_config("paper"))
    engine = Engine(bundle, device=device, max_batch=1, max_duration_s=CLIP_S)
    request = feature_request(engine, seed=0)
    cfg = engine.cfg
    teacher = torch.randn(request.n_patches, cfg.patch_size, cfg.latent_dim, device=device)
    model = engine.bundle.model
    ar_head_cached(engine, request, teacher)  # burn-in
    cached = median_time(lambda: ar_head_cached(engine, request, teacher), device, repeats)
    naive = median_time(lambda: generate_by_recompute(model, request, plan_only=True, teacher=teacher), device, 1)
    _emit(
        {
            "measure": "ar_head_10s",
            "preset": "paper",
            "cached_s": cached,
            "naive_s": naive,
            "cache_speedup": naive / cached,
        }
    )
    generated = {}
    loop = median_time(lambda: generated.update(engine.generate_latents([request])), device, 1)
    naive_loop = median_time(lambda: generate_by_recompute(model, request), device, 1)
    _emit(
        {
            "measure": "patch_loop_10s",
            "preset": "paper",
            "cached_s": loop,
            "naive_s": naive_loop,
            "loop_speedup": naive_loop / loop,
        }
    )
    frames = generated[request.request_id]
    decode = median_time(lambda: engine.decode(frames, request), device, 1)
    _emit(
        {
            "measure": "paper_clip_10s_batch1",
            "latents_s": loop,
            "vae_decode_s": decode,
            "total_s": loop + decode,
            "rtf": (loop + decode) / CLIP_S,
        }
    )
    return {
        "cache_speedup": naive / cached,
        "loop_speedup": naive_loop / loop,
        "paper_clip_s": loop + decode,
        "paper_latents_s": loop,
        "paper_vae_decode_s": decode,
    }


def bench_batch(device: torch.device, repeats: int, compiled: bool, clips: int = 8) -> dict:
    bundle = build_bundle(load_config("tiny"))
    one = Engine(bundle, device=device, max_batch=1, compiled=compiled)
    many = Engine(bundle, device=device, max_batch=clips, compiled=compiled)
    requests = [feature_request(many, seed=s) for s in range(clips)]
    one.generate_latents(requests[:1])  # burn-in (and each batch size's compiling)
    many.generate_latents(requests)

    def sequential():
        for r in requests:
            one.generate_latents([r])

    t1 = median_time(sequential, device, repeats)
    t8 = median_time(lambda: many.generate_latents(requests), device, repeats)
    _emit(
        {
            "measure": "tiny_throughput",
            "clips": clips,
            "compiled": compiled,
            "batch1_clips_per_s": clips / t1,
            f"batch{clips}_clips_per_s": clips / t8,
            "batch_speedup": t1 / t8,
        }
    )
    return {"batch_speedup": t1 / t8, "tiny_batch1_clips_per_s": clips / t1, "tiny_batch8_clips_per_s": clips / t8}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", nargs="+", choices=["batch", "paper"], default=["batch", "paper"])
    parser.add_argument("--compiled", action="store_true", help="the batch part with the compiled engine")
    args = parser.parse_args()
    device = torch.device(args.device)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    summary = {"device": describe_device(device), "commit": commit, "torch": torch.__version__}
    if "batch" in args.parts:
        summary |= bench_batch(device, args.repeats, args.compiled)
    if "paper" in args.parts:
        summary |= bench_paper(device, args.repeats)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
