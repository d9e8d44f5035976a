"""Joining a Ray cluster, the same way for every job and command."""

from __future__ import annotations

import os


def connect(address: str | None, *, log_to_driver: bool = False) -> bool:
    """Join the cluster at `address` (else $RAY_ADDRESS); with neither, start a private local one.

    Returns whether this call started the session. Not ray.init()'s own discovery: it joins whatever
    /tmp/ray/ray_current_cluster names, a file that outlives a stopped or crashed `ray start`, and a
    job would then wait minutes on a dead address instead of running.
    """
    import ray  # here, not at the top: commands that never touch Ray start without importing it

    if ray.is_initialized():
        return False
    ray.init(
        address=address or os.environ.get("RAY_ADDRESS") or "local",
        configure_logging=False,
        log_to_driver=log_to_driver,
    )
    return True
