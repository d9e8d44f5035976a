"""Long-clip quality of the trained default model, on held-out material, in ONE run:

  seams        for each context length, clips of several windows (held-out captions, beat videos at their
               tempo): spectral flux and loudness jump at window boundaries against the same measure inside
               windows (ratio), and how often tempo and key of the 5 s before a boundary agree with the 5 s
               after it, against two 5 s halves of one window;
  continuation the held-out reference kept up to 5 s (`--from 5`) and the rest written by the model: does the
               new part keep the tempo and key estimated on the kept part, against a clip without the audio;
  cuts         beat-to-cut F-measure of `--align-cuts 4` against `--align-cuts 1` on held-out videos, and the
               time each takes.

The estimators are the evaluation's (librosa beats, essentia key, mir_eval matching). Prints JSON lines; the
last is the summary with the device.

    python benchmarks/windows.py --manifest DATASET/heldout.jsonl [--contexts 2,4,6] [--clips 12]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace

import numpy as np
import torch

from jobs.evaluation.cuts import cut_alignment, cut_chooser, detect_cuts
from jobs.evaluation.music import beat_times, compile_beat_tracker, estimate_key, tempo_score, to_mono
from jobs.quality import held_out_rows
from model.checkpoint import default_checkpoint, load_bundle
from model.config import WindowConfig
from model.engine import Engine, GenerationParams
from model.engine.align import stream_aligned
from model.engine.prepare import samples_per_patch
from model.engine.request import AudioPrompt
from model.media import read_audio, write_beat_video

RATE = 48000
SEGMENT_S = 5.0
FRAME = 1024  # analysis hop at 48 kHz (21 ms)


def _emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def frame_features(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per 21 ms frame: loudness (dB RMS) and positive spectral flux of the magnitude spectrum."""
    mono = to_mono(audio, RATE, RATE)
    n = len(mono) // FRAME
    frames = mono[: n * FRAME].reshape(n, FRAME)
    loud = 20 * np.log10(np.sqrt((frames**2).mean(1)) + 1e-5)
    spec = np.abs(np.fft.rfft(frames * np.hanning(FRAME), axis=1))
    flux = np.concatenate([[0.0], np.maximum(spec[1:] - spec[:-1], 0).sum(1)])
    return loud, flux


def jumps_at(loud: np.ndarray, flux: np.ndarray, times: list[float]) -> np.ndarray:
    """(len(times), 2): the largest loudness step and spectral flux within one frame of each time."""
    out = []
    for t in times:
        i = int(round(t * RATE / FRAME))
        lo, hi = max(1, i - 1), min(len(loud) - 1, i + 1)
        out.append([np.abs(np.diff(loud[lo - 1 : hi + 1])).max(), flux[lo : hi + 1].max()])
    return np.asarray(out)


def agree(a: np.ndarray, b: np.ndarray) -> tuple[bool, bool]:
    """(tempo within 8 %, same key) between two stretches of audio."""
    tempo_a, tempo_b = beat_times(a, RATE)[0], beat_times(b, RATE)[0]
    return tempo_score(tempo_b, tempo_a)["match"], estimate_key(a, RATE) == estimate_key(b, RATE)


def _seg(audio: np.ndarray, start_s: float, length_s: float = SEGMENT_S) -> np.ndarray:
    return audio[:, round(start_s * RATE) : round((start_s + length_s) * RATE)]


def seams(bundle, rows: list[dict], context_s: float, seconds: float, root: str, batch: int) -> dict:
    cfg = bundle.config.model_copy(update={"window": WindowConfig(window_s=10.0, context_s=context_s)})
    engine = Engine(replace(bundle, config=cfg), max_batch=batch)
    requests = []
    for i, row in enumerate(rows):
        video = os.path.join(root, f"beat_{row['id']}.mp4")
        if not os.path.exists(video):
            write_beat_video(video, seconds, beat_s=60 / row["tempo_bpm"], beats_per_bar=4, fps=25, size=64)
        params = GenerationParams(seed=1000 + i, duration_s=seconds)
        requests.append(engine.make_request(video, row["caption"], params, request_id=row["id"]))
    started = time.perf_counter()
    results = [r for k in range(0, len(requests), batch) for r in engine.generate(requests[k : k + batch])]
    wall = time.perf_counter() - started
    at, inside, across, within = [], [], [], []
    for request, result in zip(requests, results, strict=True):
        windows = engine.plan_windows(request)
        bounds = [(w.start + w.context) * cfg.patch_s for w in windows[1:]]
        loud, flux = frame_features(result.audio)
        at.append(jumps_at(loud, flux, bounds))
        grid = np.arange(0.5, seconds - 0.5, 0.5)
        away = [t for t in grid if min(abs(t - b) for b in bounds) >= 0.5]
        inside.append(jumps_at(loud, flux, away))
        for b in bounds:
            if b - SEGMENT_S >= 0 and b + SEGMENT_S <= seconds:
                across.append(agree(_seg(result.audio, b - SEGMENT_S), _seg(result.audio, b)))
        within.append(agree(_seg(result.audio, 0.0), _seg(result.audio, SEGMENT_S)))
    at_all, inside_all = np.concatenate(at), np.concatenate(inside)
    ratio = at_all.mean(0) / inside_all.mean(0)
    return {
        "measure": "seams",
        "context_s": context_s,
        "clips": len(rows),
        "boundaries": int(len(at_all)),
        "loudness_jump_ratio": round(float(ratio[0]), 3),
        "flux_ratio": round(float(ratio[1]), 3),
        "tempo_agree_across": round(float(np.mean([a[0] for a in across])), 3),
        "key_agree_across": round(float(np.mean([a[1] for a in across])), 3),
        "tempo_agree_within": round(float(np.mean([w[0] for w in within])), 3),
        "key_agree_within": round(float(np.mean([w[1] for w in within])), 3),
        "pairs_across": len(across),
        "generate_s_per_audio_s": round(wall / (seconds * len(rows)), 3),
    }


def continuation(engine: Engine, rows: list[dict], batch: int) -> dict:
    """The reference kept to 5 s and the rest written, against the same clip written without the audio."""
    kept_s = SEGMENT_S
    continued, plain, reference = [], [], []
    for k in range(0, len(rows), batch):
        chunk = rows[k : k + batch]
        prompts = [AudioPrompt(read_audio(r["audio"], RATE), RATE, from_s=kept_s) for r in chunk]
        with_audio = [
            engine.make_request(
                r["video"], r["caption"], GenerationParams(seed=7), audio_prompt=p, request_id=f"c{r['id']}"
            )
            for r, p in zip(chunk, prompts, strict=True)
        ]
        without = [
            engine.make_request(r["video"], r["caption"], GenerationParams(seed=7), request_id=f"p{r['id']}")
            for r in chunk
        ]
        new = engine.generate(with_audio)
        whole = engine.generate(without)
        for p, c, w in zip(prompts, new, whole, strict=True):
            head = p.kept(samples_per_patch(engine.cfg))
            continued.append(agree(head, c.audio[:, : round(SEGMENT_S * RATE)]))
            plain.append(agree(head, _seg(w.audio, head.shape[1] / RATE)))
            reference.append(agree(head, _seg(p.audio, head.shape[1] / RATE)))
    rate = lambda pairs, i: round(float(np.mean([x[i] for x in pairs])), 3)  # noqa: E731
    return {
        "measure": "continuation",
        "clips": len(rows),
        "tempo_kept": {
            "continued": rate(continued, 0),
            "without_audio": rate(plain, 0),
            "reference": rate(reference, 0),
        },
        "key_kept": {"continued": rate(continued, 1), "without_audio": rate(plain, 1), "reference": rate(reference, 1)},
    }


def cuts(engine: Engine, rows: list[dict], candidates: int) -> dict:
    scores, walls = {1: [], candidates: []}, {1: 0.0, candidates: 0.0}
    for i, row in enumerate(rows):
        video_cuts = detect_cuts(row["video"])
        for n in (1, candidates):
            request = engine.make_request(
                row["video"], row["caption"], GenerationParams(seed=500 + i), request_id=f"{row['id']}-{n}"
            )
            started = time.perf_counter()
            patches = stream_aligned(engine, request, n, cut_chooser(video_cuts)) if n > 1 else None
            audio = np.concatenate([a for _, a in engine.stream_audio([request], patches=patches)], axis=1)
            walls[n] += time.perf_counter() - started
            scores[n].append(cut_alignment(video_cuts, beat_times(audio, RATE)[1])["f_measure"])
    return {
        "measure": "cuts",
        "clips": len(rows),
        "candidates": candidates,
        "beat_cut_f": {str(n): round(float(np.mean(s)), 3) for n, s in scores.items()},
        "seconds_per_clip": {str(n): round(w / len(rows), 2) for n, w in walls.items()},
        "time_ratio": round(walls[candidates] / walls[1], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="make-dataset's heldout.jsonl")
    parser.add_argument("--checkpoint", default=default_checkpoint())
    parser.add_argument("--contexts", default="2,4,6", help="context lengths to compare, seconds")
    parser.add_argument("--clips", type=int, default=12, help="long clips per context length")
    parser.add_argument("--seconds", type=float, default=34.0, help="length of each long clip")
    parser.add_argument("--continue-clips", type=int, default=16)
    parser.add_argument("--cut-clips", type=int, default=12)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    compile_beat_tracker()
    bundle = load_bundle(args.checkpoint)
    rows = held_out_rows(args.manifest, None)
    by_piece = list({r["piece"]: r for r in rows}.values())  # one clip per held-out piece first
    summary = {"device": f"{os.cpu_count()}-core {platform.machine()} CPU ({args.threads} threads), no GPU"}
    with tempfile.TemporaryDirectory(prefix="videorobin-windows-") as root:
        summary["seams"] = []
        for context in (float(c) for c in args.contexts.split(",")):
            record = seams(bundle, by_piece[: args.clips], context, args.seconds, root, args.batch)
            _emit(record)
            summary["seams"].append(record)
    engine = Engine(bundle, max_batch=args.batch)
    record = continuation(engine, by_piece[: args.continue_clips], args.batch)
    _emit(record)
    summary["continuation"] = record
    if args.cut_clips:
        record = cuts(Engine(bundle, max_batch=args.candidates), by_piece[-args.cut_clips :], args.candidates)
        _emit(record)
        summary["cuts"] = record
    _emit(summary)


if __name__ == "__main__":
    main()
