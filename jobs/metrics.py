"""Prometheus metrics of the offline jobs: the only place their names are defined.

Recorded with `ray.util.metrics` from inside Ray workers, exported by Ray's metrics agent with a `ray_`
prefix (counters gain `_total`): `ray_videorobin_score_videos_total{dataset,stage,status}`,
`ray_videorobin_score_stage_seconds_bucket{dataset,stage}`, `ray_videorobin_score_audio_seconds_total{dataset}`
and the driver's `ray_videorobin_score_rows_left{dataset}`; `dashboards/scoring.json` and
`dashboards/scoring-alerts.yaml` read these names, `dashboards/training.json` and
`dashboards/training-alerts.yaml` the `ray_videorobin_train_*` ones.
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
TRAIN_TARGET_STEP = "videorobin_train_target_step"  # the step the run ends at: a run is active while step < it
SCORE_STAGE_SECONDS = "videorobin_score_stage_seconds"
SCORE_AUDIO_SECONDS = "videorobin_score_audio_seconds"
SCORE_ROWS_LEFT = "videorobin_score_rows_left"  # set by the driver: rows of this run not finished yet
STAGE_SECONDS_BOUNDARIES = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]
JOB_METRICS = (
    SCORE_VIDEOS,
    SCORE_STAGE_SECONDS,
    SCORE_AUDIO_SECONDS,
    SCORE_ROWS_LEFT,
    *TRAIN_GAUGES,
    TRAIN_TARGET_STEP,
)


@cache
def score_metrics():
    """(videos counter, stage-seconds histogram, audio-seconds counter), created once per worker process.
    Every score metric carries a `dataset` tag (ScoreConfig.dataset_tag) so dashboards filter by catalogue."""
    from ray.util.metrics import Counter, Histogram

    videos = Counter(SCORE_VIDEOS, description="Videos leaving a score stage", tag_keys=("dataset", "stage", "status"))
    seconds = Histogram(
        SCORE_STAGE_SECONDS,
        description="Wall seconds a video (or its batch) spent in a stage",
        boundaries=STAGE_SECONDS_BOUNDARIES,
        tag_keys=("dataset", "stage"),
    )
    audio = Counter(SCORE_AUDIO_SECONDS, description="Seconds of audio written", tag_keys=("dataset",))
    return videos, seconds, audio


def record_stage(stage: str, statuses: list[str], seconds: float, dataset: str = "") -> None:
    videos, histogram, _ = score_metrics()
    for status in statuses:
        videos.inc(1, tags={"dataset": dataset, "stage": stage, "status": status})
    if statuses:
        histogram.observe(seconds, tags={"dataset": dataset, "stage": stage})


def record_audio(seconds: float, dataset: str = "") -> None:
    score_metrics()[2].inc(seconds, tags={"dataset": dataset})


@cache
def _rows_left_gauge():
    from ray.util.metrics import Gauge

    return Gauge(SCORE_ROWS_LEFT, description="Rows of the running score job not finished yet", tag_keys=("dataset",))


def record_rows_left(rows: int, dataset: str = "") -> None:
    """Set by the driver as rows come back (0 at the end): the scoring stall alert's 'the job runs'."""
    _rows_left_gauge().set(rows, tags={"dataset": dataset})


@cache
def train_metrics():
    """One gauge per TRAIN_GAUGES entry and TRAIN_TARGET_STEP, tagged by run name and stage; set by rank 0
    every step."""
    from ray.util.metrics import Gauge

    gauges = {
        name: Gauge(name, description=f"Training {key} at the latest optimizer step", tag_keys=("run", "stage"))
        for name, key in TRAIN_GAUGES.items()
    }
    gauges[TRAIN_TARGET_STEP] = Gauge(
        TRAIN_TARGET_STEP, description="The optimizer step the run ends at", tag_keys=("run", "stage")
    )
    return gauges


def record_train_step(run: str, stage: str, metrics: dict, target_step: int | None = None) -> None:
    gauges, tags = train_metrics(), {"run": run, "stage": stage}
    for name, key in TRAIN_GAUGES.items():
        gauges[name].set(float(metrics[key]), tags=tags)
    if target_step is not None:
        gauges[TRAIN_TARGET_STEP].set(float(target_step), tags=tags)
