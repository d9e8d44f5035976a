"""One local Ray cluster per test session, started with `ray start` so subprocess drivers can join it.

The cluster lives in its own temp dir (/tmp/vr-XXXXXXXX: short, for Ray's socket paths) on a free GCS port, and
teardown stops only its processes: never `ray stop`, which stops every Ray cluster on the machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import psutil
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


@dataclass(frozen=True)
class RayCluster:
    """The session's cluster: its GCS address and the temp dir every one of its processes was started under."""

    address: str
    temp_dir: str

    def processes(self) -> list[psutil.Process]:
        """Its live processes: those whose command line names its temp dir (GCS, raylet, agents, monitors), their
        descendants (workers, renamed `ray::...` once they run a task or actor), and workers its raylet started
        that have since been reparented; also the Ray client server, which names only the GCS address."""
        marker = self.temp_dir + os.sep
        port = ":" + self.address.rsplit(":", 1)[1]  # the GCS port, whichever host name a process was given
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["cmdline"]):
            parts = proc.info["cmdline"] or []
            if any(marker in part or (part.startswith("--address=") and part.endswith(port)) for part in parts):
                found[proc.pid] = proc
        raylets = {str(p.pid) for p in found.values() if _name(p) == "raylet"}
        for proc in list(found.values()):
            try:
                found.update((child.pid, child) for child in proc.children(recursive=True))
            except psutil.Error:
                pass
        for proc in psutil.process_iter():
            if proc.pid not in found and raylets:
                try:
                    if proc.environ().get("RAY_RAYLET_PID") in raylets:
                        found[proc.pid] = proc
                except psutil.Error:
                    pass
        found.pop(os.getpid(), None)
        return list(found.values())

    def kill_one(self, name_part: str) -> int | None:
        """SIGKILL one of this cluster's processes whose command line (a worker's `ray::<Actor>` title)
        contains `name_part`; its pid, or None when there is none."""
        for proc in self.processes():
            try:
                if any(name_part in part for part in proc.cmdline()):
                    proc.kill()
                    return proc.pid
            except psutil.Error:  # exited meanwhile
                continue
        return None

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after `grace_s`, to this cluster's processes only, until none is left."""
        for _ in range(5):
            procs = self.processes()
            if not procs:
                return
            for proc in procs:
                _signal(proc, psutil.Process.terminate)
            _, alive = psutil.wait_procs(procs, timeout=grace_s)
            for proc in alive:
                _signal(proc, psutil.Process.kill)
            psutil.wait_procs(alive, timeout=grace_s)


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:
        return ""


def _signal(proc: psutil.Process, how) -> None:
    try:
        how(proc)
    except psutil.Error:  # already gone
        pass


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory, metrics_port):
    """The session's cluster, started with `ray start --head`; teardown stops it and keeps its logs."""
    env = {**os.environ, **RAY_ENV}
    env.pop("RAY_ADDRESS", None)
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    port = _free_port()
    # /tmp/ray/ray_current_cluster is neither read nor written: `ray start` writes the address into --temp-dir,
    # and every test and driver joins by explicit address.
    temp_dir = os.path.realpath(tempfile.mkdtemp(prefix="vr-", dir="/tmp"))  # as its processes will name it
    cluster = RayCluster(f"127.0.0.1:{port}", temp_dir)
    try:
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
                f"--temp-dir={temp_dir}",
            ],
            check=True,
            env=env,
            capture_output=True,
            timeout=120,
        )
        os.environ.update(RAY_ENV)
        yield cluster
    finally:
        cluster.stop()
        logs = os.path.join(temp_dir, "session_latest", "logs")
        if os.path.isdir(logs):
            try:
                shutil.copytree(logs, tmp_path_factory.mktemp("ray-logs"), dirs_exist_ok=True, symlinks=True)
            except (OSError, shutil.Error):  # logs are a debugging aid, not worth failing the session over
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_address(ray_cluster) -> str:
    """The address of the session's cluster."""
    return ray_cluster.address
