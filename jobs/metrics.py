"""Prometheus metrics of the offline jobs: the only place their names are defined.

Recorded with `ray.util.metrics` from inside Ray workers, exported by Ray's metrics agent with a `ray_`
prefix (counters gain `_total`): `ray_videorobin_score_videos_total{stage,status}` and
`ray_videorobin_score_stage_seconds_bucket{stage}`; `dashboards/scoring.json` reads these names, and
`dashboards/training.json` the `ray_videorobin_train_*` ones.
"""

from __future__ import annotations

from functools import cache

SCORE_VIDEOS = "videorobin_score_videos"
TRAIN_GAUGES = {  # metric name -> the key of a training step's metrics it shows
    "videorobin_train_loss": "loss",
    "videorobin_train_lr": "lr",
    "videorobin_train_grad_norm": "grad_norm",
    "videorobin_train_samples_per_second": "samples_per_s",
    "videorobin_train_patches_per_second": "patches_per_s",
    "videorobin_train_step": "step",
}
SCORE_STAGE_SECONDS = "videorobin_score_stage_seconds"
SCORE_AUDIO_SECONDS = "videorobin_score_audio_seconds"
STAGE_SECONDS_BOUNDARIES = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]


@cache
def score_metrics():
    """(videos counter, stage-seconds histogram, audio-seconds counter), created once per worker process."""
    from ray.util.metrics import Counter, Histogram

    videos = Counter(SCORE_VIDEOS, description="Videos leaving a score stage", tag_keys=("stage", "status"))
    seconds = Histogram(
        SCORE_STAGE_SECONDS,
        description="Wall seconds a video (or its batch) spent in a stage",
        boundaries=STAGE_SECONDS_BOUNDARIES,
        tag_keys=("stage",),
    )
    audio = Counter(SCORE_AUDIO_SECONDS, description="Seconds of audio written")
    return videos, seconds, audio


def record_stage(stage: str, statuses: list[str], seconds: float) -> None:
    videos, histogram, _ = score_metrics()
    for status in statuses:
        videos.inc(1, tags={"stage": stage, "status": status})
    if statuses:
        histogram.observe(seconds, tags={"stage": stage})


def record_audio(seconds: float) -> None:
    score_metrics()[2].inc(seconds)


@cache
def train_metrics():
    """One gauge per TRAIN_GAUGES entry, tagged by run name and stage; set by rank 0 every step."""
    from ray.util.metrics import Gauge

    return {
        name: Gauge(name, description=f"Training {key} at the latest optimizer step", tag_keys=("run", "stage"))
        for name, key in TRAIN_GAUGES.items()
    }


def record_train_step(run: str, stage: str, metrics: dict) -> None:
    for name, gauge in train_metrics().items():
        gauge.set(float(metrics[TRAIN_GAUGES[name]]), tags={"run": run, "stage": stage})
