"""The service's Prometheus metrics, recorded through Ray (`ray.serve.metrics`; exported as `ray_videorobin_*`)."""

from __future__ import annotations

from functools import cache

from ray.serve.metrics import Counter, Gauge, Histogram

SECONDS = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300]
BATCH = [1, 2, 4, 8, 16, 32, 64]
RTF = [0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8]


@cache
def serving_metrics() -> dict:
    """One set per replica process (Ray adds the deployment, replica and application tags)."""
    return {
        "requests": Counter(
            "videorobin_http_requests", "HTTP requests by route and status", tag_keys=("route", "status")
        ),
        "errors": Counter("videorobin_errors", "refused or failed requests by error code", tag_keys=("code",)),
        "latency": Histogram(
            "videorobin_request_latency_s", "end-to-end latency of a request", SECONDS, tag_keys=("route",)
        ),
        "first_audio": Histogram(
            "videorobin_time_to_first_audio_s", "from request arrival to the first audio bytes", SECONDS
        ),
        "rtf": Histogram("videorobin_real_time_factor", "generation wall time / audio duration", RTF),
        "patches": Counter("videorobin_patches", "patches generated"),
        "batch": Histogram("videorobin_batch_size", "rows per batched call", BATCH, tag_keys=("stage",)),
        "queue": Gauge("videorobin_queue_length", "requests waiting or running", tag_keys=("stage",)),
    }
