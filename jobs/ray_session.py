"""Joining a Ray cluster, the same way for every job and command."""

from __future__ import annotations

import os

# `videorobin --log-json` (jobs/cli.py) sets this to its --log-level: the job's Ray workers log JSON lines too.
WORKER_JSON_LOG_LEVEL: str | None = None


def connect(address: str | None, *, log_to_driver: bool = False) -> bool:
    """Join the cluster at `address` (else $RAY_ADDRESS); with neither, start a private local one.

    Returns whether this call started the session. Not ray.init()'s own discovery: it joins whatever
    /tmp/ray/ray_current_cluster names, a file that outlives a stopped or crashed `ray start`, and a
    job would then wait minutes on a dead address instead of running.
    """
    import ray  # here, not at the top: commands that never touch Ray start without importing it
    from ray.job_config import JobConfig

    if ray.is_initialized():
        return False
    job = JobConfig()
    if WORKER_JSON_LOG_LEVEL:
        # Ray configures Python logging in every worker of this job (tasks and actors, on every node). Set on the
        # JobConfig rather than ray.init(logging_config=), which would also add a handler of its own to this
        # driver's root logger, next to ours. "name": the logger's, which the driver's JSON lines have too.
        job.set_py_logging_config(
            ray.LoggingConfig(encoding="JSON", log_level=WORKER_JSON_LOG_LEVEL, additional_log_standard_attrs=["name"])
        )
    ray.init(
        address=address or os.environ.get("RAY_ADDRESS") or "local",
        configure_logging=False,
        log_to_driver=log_to_driver,
        job_config=job,
    )
    return True
