"""`videorobin serve` as a user runs it: joins the cluster, becomes ready, answers, stops on a signal."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import pytest

from model.build import build_bundle
from model.checkpoint import save_bundle
from model.config import load_config
from model.media import write_sample_video
from tests.integration.test_serve import _free_port

pytestmark = pytest.mark.ray


def test_videorobin_serve_becomes_ready_answers_and_stops_on_sigterm(ray_address, tmp_path):
    save_bundle(build_bundle(load_config("tiny")), str(tmp_path / "ckpt"))
    write_sample_video(str(tmp_path / "clip.mp4"), duration_s=2.0, size=96)
    port = _free_port()
    cmd = [sys.executable, "-m", "jobs.cli", "serve", "--checkpoint", str(tmp_path / "ckpt")]
    cmd += ["--address", ray_address, "--port", str(port), "--mode", "fused"]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            deadline = time.time() + 180
            while True:
                assert server.poll() is None, server.communicate()[1][-3000:]
                assert time.time() < deadline, "never ready"
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(1)
            with open(tmp_path / "clip.mp4", "rb") as f:
                response = client.post("/v1/soundtracks", files={"video": ("clip.mp4", f, "video/mp4")})
            assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=120)
        assert server.returncode == 0, err[-3000:]
        assert f"http://127.0.0.1:{port}" in out
    finally:
        if server.poll() is None:
            server.kill()
