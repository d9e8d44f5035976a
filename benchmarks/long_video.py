"""A long video through all three paths, against a short one, in ONE run: `videorobin generate`, the server's
`/v1/soundtracks:stream`, and a `videorobin score` catalogue. For each: wall time per second of audio and
the peak memory of everything the command started (the sum of RSS over its process tree, sampled every
0.2 s), and whether the three paths wrote the same audio for the same seed. Prints JSON lines; the last
is the summary with the ratios and the device.

    python benchmarks/long_video.py [--minutes 10] [--short-minutes 1] [--checkpoint DIR] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
import yaml

from model.media import write_beat_video

PROMPT = "calm piano and strings, 96 BPM, D minor"
SEED = 7
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}


class PeakMemory:
    """Peak of the summed RSS of a process and all its descendants, sampled in a thread."""

    def __init__(self, pid: int) -> None:
        self.root, self.peak, self.stopped = psutil.Process(pid), 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _total(self) -> int:
        total = 0
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self.stopped.is_set():
            self.peak = max(self.peak, self._total())
            time.sleep(0.2)

    def stop(self) -> int:
        self.stopped.set()
        self.thread.join()
        return self.peak


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "jobs.cli", *args]


def _model_args(args) -> list[str]:
    out = ["--steps", str(args.steps)] if args.steps else []
    return out + (["--checkpoint", args.checkpoint] if args.checkpoint else [])


def _measured(command: list[str], env: dict, what: str) -> dict:
    """Run a command to its end: wall time and the peak memory of its process tree."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    memory = PeakMemory(proc.pid)
    _, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{what} failed: {err.decode()[-2000:]}")
    return {"wall_s": time.perf_counter() - started, "peak_rss_mb": memory.stop() / 2**20}


def run_generate(video: str, out: str, args) -> dict:
    """The CLI; with --cli-threads 1 its float sums run in the order of the Ray actors' (one intra-op thread
    each), which is what bit-equality of the three paths needs (the AR loop amplifies 1-ulp differences)."""
    command = _cli("generate", "--video", video, "--prompt", PROMPT, "--seed", str(SEED), "--out", out)
    env = {**ENV, **({"OMP_NUM_THREADS": str(args.cli_threads)} if args.cli_threads else {})}
    return _measured(command + _model_args(args), env, "generate")


def run_score(video: str, out: str, args) -> dict:
    catalogue = os.path.join(out, "catalogue.parquet")
    os.makedirs(out, exist_ok=True)
    pq.write_table(pa.table({"id": ["clip"], "video": [video], "prompt": [PROMPT], "seed": [SEED]}), catalogue)
    command = _cli("score", "--catalogue", catalogue, "--out", os.path.join(out, "scored"), "--generate-batch", "1")
    return _measured(command + _model_args(args), ENV, "score")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`videorobin serve` (disaggregated) with limits that let a long video through."""

    def __init__(self, root: str, args) -> None:
        config = {"limits": {"max_video_s": 7200, "request_timeout_s": 7200, "max_upload_bytes": 2**30}}
        if args.checkpoint:
            config["checkpoint"] = args.checkpoint
        path = os.path.join(root, "serve.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        self.port = _free_port()
        command = _cli("serve", "--config", path, "--port", str(self.port))
        self.log = open(os.path.join(root, "serve.log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(command, env=ENV, stdout=self.log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=7200)
        deadline = time.time() + 600
        while True:
            try:
                if self.client.get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the server never became ready")
            time.sleep(2)

    def stream(self, video: str, out: str, steps: int | None) -> dict:
        data = {"prompt": PROMPT, "seed": str(SEED), **({"steps": str(steps)} if steps else {})}
        memory = PeakMemory(self.proc.pid)
        started, first = time.perf_counter(), None
        with open(video, "rb") as f, open(out, "wb") as sink:
            files = {"video": ("video.mp4", f, "video/mp4")}
            with self.client.stream("POST", "/v1/soundtracks:stream", files=files, data=data) as response:
                if response.status_code != 200:
                    raise RuntimeError(f"serve answered {response.status_code}: {response.read()[:500]}")
                written = 0
                for chunk in response.iter_bytes():
                    sink.write(chunk)
                    written += len(chunk)
                    if first is None and written > 44:
                        first = time.perf_counter() - started
        return {
            "wall_s": time.perf_counter() - started,
            "first_audio_s": first,
            "peak_rss_mb": memory.stop() / 2**20,
        }

    def close(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _pcm(path: str) -> np.ndarray:
    audio, _ = sf.read(path, dtype="int16", always_2d=True)
    return audio


def _device() -> str:
    return f"{os.cpu_count()}-core {platform.machine()} CPU, no GPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--short-minutes", type=float, default=1.0)
    parser.add_argument("--checkpoint", help="default: the shipped model")
    parser.add_argument("--steps", type=int, help="LocDiT solver steps per patch (default: the model's)")
    parser.add_argument("--keep", help="keep the outputs (and partial results, to resume) in this directory")
    parser.add_argument("--cli-threads", type=int, help="intra-op threads of the CLI (default: torch's own)")
    args = parser.parse_args()
    root = args.keep or tempfile.mkdtemp(prefix="videorobin-long-")
    os.makedirs(root, exist_ok=True)
    lengths = {"short": args.short_minutes * 60, "long": args.minutes * 60}
    videos = {}
    for name, seconds in lengths.items():
        videos[name] = os.path.join(root, f"{name}.mp4")
        if not os.path.exists(videos[name]):
            write_beat_video(videos[name], seconds, beat_s=60 / 96, beats_per_bar=4, fps=25, size=64)
    saved = os.path.join(root, "results.json")  # a rerun with the same --keep goes on where it stopped
    results: dict[str, dict] = json.load(open(saved)) if os.path.exists(saved) else {}  # noqa: SIM115

    def record(path: str, name: str, result: dict) -> None:
        results[f"{path}_{name}"] = result
        with open(saved, "w") as f:
            json.dump(results, f)
        print(json.dumps({"path": path, "video": name, **result}), flush=True)

    for name, video in videos.items():
        if f"generate_{name}" not in results:
            record("generate", name, run_generate(video, os.path.join(root, f"generate_{name}.wav"), args))
        if f"score_{name}" not in results:
            record("score", name, run_score(video, os.path.join(root, f"score_{name}"), args))
    server = Server(root, args)
    try:
        for name, video in videos.items():
            if f"serve_{name}" not in results:
                record("serve", name, server.stream(video, os.path.join(root, f"serve_{name}.wav"), args.steps))
    finally:
        server.close()
    summary: dict = {"device": _device(), "minutes": args.minutes, "short_minutes": args.short_minutes}
    for path in ("generate", "score", "serve"):
        short, long = results[f"{path}_short"], results[f"{path}_long"]
        summary[path] = {
            "peak_rss_mb": [round(short["peak_rss_mb"]), round(long["peak_rss_mb"])],
            "memory_ratio": round(long["peak_rss_mb"] / short["peak_rss_mb"], 3),
            "s_per_audio_s": [round(short["wall_s"] / lengths["short"], 3), round(long["wall_s"] / lengths["long"], 3)],
            "time_ratio": round((long["wall_s"] / lengths["long"]) / (short["wall_s"] / lengths["short"]), 3),
        }
        if "first_audio_s" in short:
            summary[path]["first_audio_s"] = [round(short["first_audio_s"], 2), round(long["first_audio_s"], 2)]
    for name in lengths:
        cli = _pcm(os.path.join(root, f"generate_{name}.wav"))
        others = {
            "serve": _pcm(os.path.join(root, f"serve_{name}.wav")),
            "score": _pcm(os.path.join(root, f"score_{name}", "scored", "audio", "clip.wav")),
        }
        summary[f"same_audio_{name}"] = {
            k: bool(v.shape == cli.shape and np.abs(v.astype(int) - cli).max() <= 1) for k, v in others.items()
        }
        serve, score = others["serve"], others["score"]
        summary[f"same_audio_{name}"]["serve_vs_score"] = bool(np.array_equal(serve, score))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
