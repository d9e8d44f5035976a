"""One local Ray cluster per test session, started with `ray start` so subprocess drivers can join it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def metrics_port() -> int:
    """Where the session cluster serves Prometheus metrics (an OS-chosen port, above Ray's worker ports)."""
    return _free_port()


@pytest.fixture(scope="session")
def ray_address(tmp_path_factory, metrics_port):
    """The address of the session's cluster."""
    env = {**os.environ, **RAY_ENV}
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    port = _free_port()
    # Logical CPUs above the 2 real cores leave room for a killed driver's actors while Ray reaps them.
    subprocess.run(
        [
            ray_bin,
            "start",
            "--head",
            f"--port={port}",
            "--num-cpus=4",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--metrics-export-port={metrics_port}",
            f"--temp-dir={tmp_path_factory.mktemp('ray')}",
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=120,
    )
    os.environ.update(RAY_ENV)
    yield f"127.0.0.1:{port}"
    subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)
