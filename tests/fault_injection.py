"""Faults injected into a third-party library inside a job's Ray workers, for the fault tests.

A driver started with `job_env(...)` in its environment gives every worker of its job Ray's
`worker_process_setup_hook` below, which makes PyAV's `av.open` raise a RuntimeError (an error our stages do
not expect, unlike a MediaError) for files whose name says so:

    poison-task-*   in Ray tasks (score's probe and write, prepare's reads)
    poison-actor-*  in Ray actors (score's generation, prepare's encoders)
    poison-late-*   in actors, from the third time the process opens that file (the engine's later windows)
"""

from __future__ import annotations

import json
import os
from collections import Counter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def job_env() -> dict[str, str]:
    """Environment variables for a driver whose Ray job should carry the fault hook."""
    runtime_env = {
        "worker_process_setup_hook": "tests.fault_injection.poison_pyav",
        "env_vars": {"PYTHONPATH": REPO},
    }
    return {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": runtime_env})}


def _in_actor() -> bool:
    import ray

    return ray.get_runtime_context().get_actor_id() is not None


def poison_pyav() -> None:
    import av

    real_open, opened = av.open, Counter()

    def open_poisoned(file, *args, **kwargs):
        name = os.path.basename(str(file))
        opened[name] += 1
        if (
            name.startswith("poison-task-")
            and not _in_actor()
            or name.startswith("poison-actor-")
            and _in_actor()
            or name.startswith("poison-late-")
            and _in_actor()
            and opened[name] > 2
        ):
            raise RuntimeError(f"injected fault: PyAV cannot open {name}")
        return real_open(file, *args, **kwargs)

    av.open = open_poisoned
