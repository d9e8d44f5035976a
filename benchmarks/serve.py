"""Serving benchmark: closed-loop clients over loopback against the disaggregated application, the fused
application and the in-process engine, in ONE run, on the device present (stated in the output).

Each of N clients sends a request, reads the streamed WAV to the end, and sends the next, for a fixed
time. Reported per setup: requests/s, latency p50/p95/p99, time to first audio p50/p95; then the ratios
fused / disaggregated and engine / disaggregated. The engine runs the same closed loop without HTTP or
Ray (requests join its batch as others finish, audio decoded window by window as in the server), so
its figures bound what the service could reach on this machine.

    python benchmarks/serve.py [--clients 4] [--seconds 30] [--video-seconds 4] [--steps 8] [--checkpoint DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import tempfile
import threading
import time

import httpx
import numpy as np
import ray
import torch
from ray import serve

from deployments.app import build_app
from deployments.config import ServeConfig
from model.build import build_bundle
from model.checkpoint import load_bundle, save_bundle
from model.config import load_config
from model.engine import Engine, GenerationParams
from model.media import write_sample_video
from model.vae import decode_window_array as decode_window

PROMPT = "lo-fi piano, 90 BPM, A minor, builds at the end"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _summary(latencies: list[float], firsts: list[float], errors: int, wall: float) -> dict:
    pct = lambda xs, q: round(float(np.percentile(xs, q)), 3) if xs else None  # noqa: E731
    return {
        "requests": len(latencies),
        "errors": errors,
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 4),
        "latency_p50_s": pct(latencies, 50),
        "latency_p95_s": pct(latencies, 95),
        "latency_p99_s": pct(latencies, 99),
        "first_audio_p50_s": pct(firsts, 50),
        "first_audio_p95_s": pct(firsts, 95),
    }


def stream_once(http: httpx.Client, data: bytes, fields: dict) -> tuple[int, float, float | None]:
    """One streamed request read to the end: (status, latency, time to the first audio bytes)."""
    started, first, received = time.monotonic(), None, 0
    files = {"video": ("clip.mp4", data, "video/mp4")}
    with http.stream("POST", "/v1/soundtracks:stream", files=files, data=fields) as response:
        for chunk in response.iter_bytes():
            received += len(chunk)
            if first is None and received > 44:  # past the WAV header
                first = time.monotonic() - started
    return response.status_code, time.monotonic() - started, first


def http_closed_loop(base: str, data: bytes, clients: int, seconds: float, fields: dict) -> dict:
    latencies, firsts, errors = [], [], [0]
    lock, stop = threading.Lock(), time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(base_url=base, timeout=600) as http:
            while time.monotonic() < stop:
                status, latency, first = stream_once(http, data, fields)
                with lock:
                    if status != 200:
                        errors[0] += 1
                        continue
                    latencies.append(latency)
                    firsts.append(first)

    began = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return _summary(latencies, firsts, errors[0], time.monotonic() - began)


def engine_closed_loop(checkpoint: str, video: str, clients: int, seconds: float, params: GenerationParams) -> dict:
    engine = Engine(load_bundle(checkpoint), max_batch=clients)
    cfg, vae = engine.cfg, engine.bundle.vae
    latencies, firsts, live = [], [], {}
    stop = time.monotonic() + seconds

    def admit() -> None:
        started = time.monotonic()
        request = engine.make_request(video, PROMPT, params)
        clip, _ = engine.request_info(request).decoder(cfg)
        live[request.request_id] = [started, clip, None]
        engine.add(request)

    began = time.monotonic()
    for _ in range(clients):
        admit()
    while live:
        for output in engine.step():
            entry = live[output.request_id]
            for window, latents in entry[1].add(engine.to_latents(output.patch).numpy()):
                entry[1].emit(window, decode_window(vae, latents, window))
                if entry[2] is None:
                    entry[2] = time.monotonic() - entry[0]
            if output.finished:
                latencies.append(time.monotonic() - entry[0])
                firsts.append(entry[2])
                del live[output.request_id]
                if time.monotonic() < stop:
                    admit()
    return _summary(latencies, firsts, 0, time.monotonic() - began)


def serve_mode(mode: str, checkpoint: str, port: int, video: str, args) -> dict:
    cfg = ServeConfig(checkpoint=checkpoint, mode=mode, planner_capacity=max(8, args.clients))
    serve.run(build_app(cfg), name=mode, route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    fields = {"prompt": PROMPT, "steps": str(args.steps)}
    with open(video, "rb") as f:
        data = f.read()
    with httpx.Client(base_url=base, timeout=600) as http:
        while http.get("/readyz").status_code != 200:
            time.sleep(0.5)
        assert stream_once(http, data, fields)[0] == 200  # warm-up: one request through every deployment
    result = http_closed_loop(base, data, args.clients, args.seconds, fields)
    serve.delete(mode)
    return result


def _ratio(a, b) -> float | None:
    return round(a / b, 3) if a and b else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0, help="load duration per setup")
    parser.add_argument("--video-seconds", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--checkpoint", help="default: a random tiny model")
    parser.add_argument("--preset", default="tiny")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="serve-bench-")
    checkpoint = args.checkpoint or os.path.join(tmp, "ckpt")
    if not args.checkpoint:
        save_bundle(build_bundle(load_config(args.preset)), checkpoint)
    video = os.path.join(tmp, "clip.mp4")
    write_sample_video(video, args.video_seconds, size=96)
    ray.init(
        num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, configure_logging=False, log_to_driver=False
    )
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    results = {mode: serve_mode(mode, checkpoint, port, video, args) for mode in ("disaggregated", "fused")}
    serve.shutdown()
    ray.shutdown()
    results["engine"] = engine_closed_loop(
        checkpoint, video, args.clients, args.seconds, GenerationParams(steps=args.steps)
    )
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"cpu ({platform.machine()}, {os.cpu_count()} cores)"
    )
    base = results["disaggregated"]
    summary = {
        "benchmark": "serve",
        "device": device,
        "preset": None if args.checkpoint else args.preset,
        "clients": args.clients,
        "video_s": args.video_seconds,
        "steps": args.steps,
        **{mode: r for mode, r in results.items()},
        "fused_vs_disaggregated_rps": _ratio(results["fused"]["requests_per_s"], base["requests_per_s"]),
        "engine_vs_disaggregated_rps": _ratio(results["engine"]["requests_per_s"], base["requests_per_s"]),
        "disaggregated_vs_engine_latency_p50": _ratio(base["latency_p50_s"], results["engine"]["latency_p50_s"]),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
