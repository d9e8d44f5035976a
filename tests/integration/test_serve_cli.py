"""`videorobin serve` as a user runs it: joins the cluster, becomes ready, answers, stops on a signal."""

from __future__ import annotations

import os
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


TOKEN = "page-token"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's; CI installs them (.ci/run)


def test_videorobin_serve_becomes_ready_answers_serves_its_page_and_stops_on_sigterm(ray_address, tmp_path):
    save_bundle(build_bundle(load_config("tiny")), str(tmp_path / "ckpt"))
    write_sample_video(str(tmp_path / "clip.mp4"), duration_s=2.0, size=96)
    port = _free_port()
    cmd = [sys.executable, "-m", "jobs.cli", "serve", "--checkpoint", str(tmp_path / "ckpt")]
    cmd += ["--address", ray_address, "--port", str(port), "--mode", "fused", "--require-token"]
    env = {**os.environ, "VIDEOROBIN_API_TOKEN": TOKEN}
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
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
                files = {"video": ("clip.mp4", f, "video/mp4")}
                response = client.post("/v1/soundtracks", files=files, headers={"Authorization": f"Bearer {TOKEN}"})
            assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
        _the_page_writes_a_soundtrack_in_a_real_browser(port, tmp_path)
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=120)
        assert server.returncode == 0, err[-3000:]
        assert f"http://127.0.0.1:{port}" in out
        assert "API auth: bearer token required" in out
    finally:
        if server.poll() is None:
            server.kill()


def _browser(profile: str):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: CI installs Debian's chromium and chromium-driver (see .ci/run)")
        pytest.skip("no Chromium: apt-get install --no-install-recommends chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # the system's browser: nothing is downloaded
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=1100,1500",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _the_page_writes_a_soundtrack_in_a_real_browser(port: int, tmp_path) -> None:
    """GET / in headless Chromium: a wrong file and a missing token are explained in plain words; with the
    token, the 2 s clip plays while its soundtrack streams in, and the page offers the whole WAV. The
    screenshot stays in the test's output directory."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    (tmp_path / "notes.txt").write_text("not a video\n" * 40)
    driver = _browser(str(tmp_path / "chromium-profile"))
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        status = driver.find_element(By.ID, "status")

        def attempt(path) -> str:
            driver.find_element(By.ID, "video").send_keys(str(path))
            driver.find_element(By.ID, "generate").click()
            WebDriverWait(driver, 180).until(
                lambda d: (
                    d.find_element(By.ID, "generate").is_enabled()
                    and status.text
                    and not status.text.startswith(("Uploading", "Playing"))
                )
            )
            return status.text

        assert attempt(tmp_path / "clip.mp4").startswith("The server needs an API token")
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        assert attempt(tmp_path / "notes.txt").startswith("That file is not a video the server can read")
        driver.find_element(By.ID, "prompt").send_keys("calm piano, 80 BPM")
        assert attempt(tmp_path / "clip.mp4") == "Done: 2.0 s of music.", status.text
        assert driver.find_element(By.ID, "progress").get_attribute("value") == "1"
        size = driver.execute_async_script(
            "const done = arguments[0];"
            "fetch(document.getElementById('download-wav').href).then(r => r.arrayBuffer())"
            ".then(b => done(b.byteLength));"
        )
        assert size == 44 + 2 * 48000 * 2 * 2  # the header, then 2 s of 16-bit stereo at 48 kHz
        assert driver.execute_script("return document.getElementById('player').currentTime") > 0
        assert driver.find_element(By.ID, "download-mp4").is_displayed()
        driver.save_screenshot(str(tmp_path / "web-page.png"))
        print(f"\nscreenshot: {tmp_path / 'web-page.png'}")
    finally:
        driver.quit()
