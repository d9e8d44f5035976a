"""The CPU-task stages of `videorobin score`: probe, and write outputs.

Kept free of torch and the model so the many short-lived task workers start quickly.
"""

from __future__ import annotations

import math
import os
import tempfile
import time

import numpy as np

from jobs.catalogue import output_stem
from jobs.metrics import record_audio, record_stage
from model.io import is_local_uri, local_copy, uri_join, write_bytes_atomic
from model.media import MediaError, mux, probe_video, sample_frames, write_audio

HEAVY = ("latents", "audio")  # per-row arrays that never reach the manifest


def error_text(stage: str, err: BaseException) -> str:
    """The one-line `error` of a failed manifest row: the stage, then the reason."""
    return f"{stage}: {' '.join(str(err).split()) or type(err).__name__}"


def _fail(row: dict, stage: str, err: BaseException) -> dict:
    row["status"], row["error"] = "failed", error_text(stage, err)
    return row


def probe(row: dict, fps: float, image_size: int, max_duration_s: float, dataset: str = "") -> dict:
    """Read the video header and its first frame (the rest is read window by window while the music is
    written); a bad video becomes a failed row."""
    start = time.perf_counter()
    row |= {"status": "ok", "error": ""}
    try:
        with local_copy(row["video"], suffix=os.path.splitext(row["video"])[1]) as path:
            info = probe_video(path)
            duration = row["duration"] if row["duration"] is not None else info.duration_s
            if duration > max_duration_s:
                raise MediaError(f"{duration:.1f} s is longer than the limit of {max_duration_s:.0f} s")
            row["duration_s"] = float(duration)
            if fps > 0:
                sample_frames(path, fps, image_size, 1 / fps, 1)
    except Exception as err:  # noqa: BLE001 - any exception on one row fails that row only
        row["duration_s"] = float("nan")
        _fail(row, "probe", err)
    row["probe_s"] = time.perf_counter() - start
    record_stage("probe", [row["status"]], row["probe_s"], dataset)
    return row


def write_outputs(
    row: dict, out: str, fmt: str, do_mux: bool, sample_rate: int, model_id: str, dataset: str = ""
) -> dict:
    """Write the audio (and muxed mp4) under their final names; return the manifest row."""
    start = time.perf_counter()
    audio = np.asarray(row.pop("audio"))
    for key in (*HEAVY, "duration"):  # only manifest columns leave this stage
        row.pop(key, None)
    stem = output_stem(row["id"])
    row |= {"audio": "", "mp4": "", "checkpoint": model_id}
    if row["status"] == "ok":
        try:
            row["audio"] = uri_join(out, f"audio/{stem}.{fmt}")
            write_audio(row["audio"], audio, sample_rate, fmt)
            if do_mux:
                row["mp4"] = uri_join(out, f"mp4/{stem}.mp4")
                _write_mp4(row["video"], audio, sample_rate, row["mp4"])
            record_audio(row["duration_s"], dataset)
        except Exception as err:  # noqa: BLE001 - the row fails, the job goes on
            _fail(row, "write", err)
    row["write_s"] = time.perf_counter() - start
    row["finished_at"] = time.time()
    if not math.isfinite(row["duration_s"]):
        row["duration_s"] = None  # unknown: the video could not be probed
    record_stage("write", [row["status"]], row["write_s"], dataset)
    return row


def _write_mp4(video_uri: str, audio: np.ndarray, sample_rate: int, out_uri: str) -> None:
    with local_copy(video_uri, suffix=os.path.splitext(video_uri)[1]) as src:
        if is_local_uri(out_uri):  # mux writes atomically in place
            os.makedirs(os.path.dirname(os.path.abspath(out_uri)), exist_ok=True)
            mux(src, audio, sample_rate, out_uri)
            return
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, "muxed.mp4")
            mux(src, audio, sample_rate, local)
            with open(local, "rb") as f:
                write_bytes_atomic(out_uri, f.read())
