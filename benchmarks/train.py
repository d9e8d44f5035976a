"""Training-throughput benchmark: `videorobin train` (Ray Train + DeepSpeed) vs a plain PyTorch loop, ONE run.

Both train the same model on the same prepared clips with the same batch per worker: the plain loop is
AdamW in this process, no Ray, no DeepSpeed; ours is `jobs.train.run` with 1 and with N workers. Ray
gives a worker with under 2 CPUs one torch thread, so the plain loop runs once with one thread (the
like-for-like reference: the ratio is the framework's overhead) and once with every core (what one
process could do on this machine). N workers over 1 worker is the data-parallel scaling. Throughput is the
median over steps after the first (start-up excluded), in samples/s and latent patches/s; model FLOPs
per sample are estimated (6 x parameters x tokens each stack sees) to report achieved FLOP/s, and MFU
against the GPU's bf16 peak when on a GPU.

    python benchmarks/train.py [--preset tiny] [--clips 32] [--seconds 4] [--steps 30] [--batch-size 4]
        [--workers 2] [--gpus-per-worker 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq
import ray
import torch

from jobs.train import TrainConfig, resolve_model, run
from jobs.train_runs import latest_train_state
from model.build import parameter_counts
from model.training import collate
from model.videorobin import VideoRobin

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s by product name


def flops_per_sample(model: VideoRobin, text_tokens: float, frames: float, patches: float) -> float:
    """Training FLOPs (forward + backward = 6 x params x tokens) for one clip, per stack it passes through."""
    cfg, counts = model.cfg, parameter_counts(model)
    P = cfg.patch_size
    ar = counts["semantic_lm"] + counts.get("rite", 0)
    return 6 * (
        ar * (text_tokens + frames + patches)
        + counts["locenc"] * patches * (P + 1)
        + counts["locdit"] * patches * (2 * P + 1)
    )


def prepare(root: str, args) -> str:
    data = os.path.join(root, "prepared")
    cli = [sys.executable, "-m", "jobs.cli"]
    subprocess.run(
        [*cli, "make-dataset", "--out", os.path.join(root, "data"), "--clips", str(args.clips)]
        + ["--duration", str(args.seconds)],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*cli, "prepare", "--manifest", os.path.join(root, "data", "manifest.jsonl"), "--out", data]
        + ["--preset", args.preset, "--address", ray.get_runtime_context().gcs_address],
        check=True,
        capture_output=True,
    )
    return data


def plain_loop(cfg: TrainConfig, data: str, steps: int, threads: int) -> dict:
    """The reference: the same batches and loss through torch AdamW in this process."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    model_cfg = resolve_model(cfg)
    rows = pq.read_table(os.path.join(data, "shards")).to_pydict()
    batch = {k: np.array(v + [None], dtype=object)[:-1] for k, v in rows.items()}
    stats = json.load(open(os.path.join(data, "latent_stats.json")))
    mean, std = np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)
    torch.manual_seed(0)
    model = VideoRobin(model_cfg).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.01)
    rng, n, times, patches = np.random.default_rng(0), len(batch["id"]), [], []
    for _ in range(steps):
        pick = rng.choice(n, cfg.batch_size, replace=False)
        tb = collate({k: v[pick] for k, v in batch.items()}, model_cfg, cfg.clip_seconds, mean, std, rng)
        start = time.perf_counter()
        loss = model(tb.cond, tb.patches, tb.n_patches)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        times.append(time.perf_counter() - start)
        patches.append(int(tb.n_patches.sum()))
    torch.set_num_threads(before)
    step_s = float(np.median(times[1:]))
    return {
        "samples_per_s": cfg.batch_size / step_s,
        "patches_per_s": float(np.median(patches)) / step_s,
    }


def ours(cfg: TrainConfig, workers: int) -> dict:
    cfg = cfg.model_copy(update={"workers": workers, "name": f"bench-{workers}w"})
    run(cfg)
    state = latest_train_state(cfg.storage, cfg.run_name)
    steps = [h for h in state["history"][1:] if h["step"] % cfg.checkpoint_every]  # no start-up, no saves
    return {k: float(np.median([h[k] for h in steps])) for k in ("samples_per_s", "patches_per_s")}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="tiny")
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    gpu = args.gpus_per_worker > 0
    device = torch.cuda.get_device_name() if gpu else f"{platform.machine()} CPU, {os.cpu_count()} cores"
    with tempfile.TemporaryDirectory() as root:
        ray.init(num_cpus=max(os.cpu_count() or 2, args.workers + 2), configure_logging=False, log_to_driver=False)
        data = prepare(root, args)
        cfg = TrainConfig(
            stage="t2m",
            data=data,
            storage=os.path.join(root, "runs"),
            steps=args.steps,
            batch_size=args.batch_size,
            clip_seconds=args.seconds,
            checkpoint_every=args.steps,
            gpus_per_worker=args.gpus_per_worker,
            cpus_per_worker=0.5 if not gpu else 8,
            log_every=args.steps,
        )
        refs = {} if gpu else {t: plain_loop(cfg, data, args.steps, t) for t in sorted({1, os.cpu_count() or 1})}
        results = {w: ours(cfg, w) for w in sorted({1, args.workers})}
        model = VideoRobin(resolve_model(cfg))
        text = float(np.mean([len(t) for t in pq.read_table(os.path.join(data, "shards"))["token_ids"].to_pylist()]))
        patches = model.cfg.patches_for(args.seconds)
        flops = flops_per_sample(model, text, 0.0, patches)
        summary = {
            "device": device,
            "torch": torch.__version__,
            "preset": args.preset,
            "batch_per_worker": args.batch_size,
            "steps": args.steps,
            "flops_per_sample": flops,
        }
        for threads, ref in refs.items():
            summary[f"plain_torch_{threads}thread"] = {k: round(ref[k], 3) for k in ("samples_per_s", "patches_per_s")}
        for w, r in results.items():
            summary[f"ray_train_{w}w"] = {k: round(v, 3) for k, v in r.items()}
            summary[f"ray_train_{w}w"]["achieved_flop_s"] = round(r["samples_per_s"] * flops)
            if gpu:
                peak = next((v for k, v in PEAK_BF16.items() if k in device), None)
                if peak:
                    summary[f"ray_train_{w}w"]["mfu"] = round(r["samples_per_s"] * flops / (peak * w), 4)
        if refs:
            summary["ratio_1w_over_plain_1thread"] = round(results[1]["samples_per_s"] / refs[1]["samples_per_s"], 3)
        if args.workers > 1:
            summary[f"scaling_{args.workers}w_over_1w"] = round(
                results[args.workers]["samples_per_s"] / results[1]["samples_per_s"], 3
            )
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
