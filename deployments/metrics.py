"""The service's Prometheus metrics, recorded through Ray (`ray.serve.metrics`; exported as `ray_videorobin_*`).

Names are constants so the dashboard and alert rules can be checked against what the service exports.
"""

from __future__ import annotations

from functools import cache

REQUESTS = "videorobin_http_requests"  # counter {route, status}
ERRORS = "videorobin_errors"  # counter {code}
LATENCY = "videorobin_request_latency_s"  # histogram {route}
FIRST_AUDIO = "videorobin_time_to_first_audio_s"  # histogram
RTF = "videorobin_real_time_factor"  # histogram: generation wall time / audio duration
PATCHES = "videorobin_patches"  # counter
BATCH = "videorobin_batch_size"  # histogram {stage: encoder | planner | refiner}
QUEUE = "videorobin_queue_length"  # gauge {stage: ingress | planner}
SERVING_METRICS = (REQUESTS, ERRORS, LATENCY, FIRST_AUDIO, RTF, PATCHES, BATCH, QUEUE)

SECONDS = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300]
SIZES = [1, 2, 4, 8, 16, 32, 64]
RATIOS = [0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8]


@cache
def serving_metrics() -> dict:
    """One set per replica process (Ray adds the deployment, replica and application tags)."""
    from ray.serve.metrics import Counter, Gauge, Histogram

    return {
        "requests": Counter(REQUESTS, "HTTP requests by route and status", tag_keys=("route", "status")),
        "errors": Counter(ERRORS, "refused or failed requests by error code", tag_keys=("code",)),
        "latency": Histogram(LATENCY, "end-to-end latency of a request", SECONDS, tag_keys=("route",)),
        "first_audio": Histogram(FIRST_AUDIO, "from request arrival to the first audio bytes", SECONDS),
        "rtf": Histogram(RTF, "generation wall time / audio duration", RATIOS),
        "patches": Counter(PATCHES, "patches generated"),
        "batch": Histogram(BATCH, "rows per batched call", SIZES, tag_keys=("stage",)),
        "queue": Gauge(QUEUE, "requests waiting or running", tag_keys=("stage",)),
    }
