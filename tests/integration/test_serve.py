"""The Serve application on the session's Ray cluster, over real HTTP on loopback: uploads, URIs, streaming,
concurrency and batching, equality with the engine, refusals, a killed Refiner, metrics."""

from __future__ import annotations

import io
import socket
import threading
import time
import urllib.request

import av
import httpx
import numpy as np
import pytest
import ray
import soundfile as sf
from ray import serve

from deployments.app import build_app
from deployments.config import ServeConfig
from model.build import build_bundle
from model.checkpoint import load_bundle, save_bundle
from model.config import load_config
from model.engine import Engine, GenerationParams
from model.media import write_sample_video
from tests.media_files import write_bad_inputs

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PCM16_TOLERANCE = 2 / 32767  # rounding to 16 bits, read back by soundfile as /32768
# Served audio is compared with the engine's to the last bit, so both decode in fp32: bf16 convolution kernels
# round differently from one process to another (measured: a bf16 step, up to 0.015, in a few samples)
EXACT = "float32"

pytestmark = pytest.mark.ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    videos = root / "videos"
    videos.mkdir()
    for name, seconds in (("short", 3.0), ("long", 10.0), ("too_long", 13.0)):
        write_sample_video(str(videos / f"{name}.mp4"), duration_s=seconds, size=96)
    (videos / "huge.bin").write_bytes(np.random.default_rng(0).bytes(3_500_000))
    bad = write_bad_inputs(root, str(videos / "short.mp4"))
    # small decode windows so a 10 s clip streams in several pieces; 2 s generation windows so it is written
    # in seven of them (the 3 s clip in two) and every request here crosses window boundaries
    overrides = ["vae.chunk_latents=32", "window.window_s=2.0", "window.context_s=0.64"]
    save_bundle(build_bundle(load_config("tiny", overrides)), str(root / "ckpt"))
    t = np.arange(int(2.5 * 44100)) / 44100  # an audio prompt at another sample rate: resampled
    sf.write(str(root / "prompt.wav"), 0.4 * np.sin(2 * np.pi * 220 * t), 44100)
    t = np.arange(6 * 48000) / 48000
    sf.write(str(root / "six_s.wav"), 0.2 * np.sin(2 * np.pi * 330 * t), 48000)
    return root, videos, bad


def _config(root, videos, limits: dict | None = None, **extra) -> ServeConfig:
    return ServeConfig(
        checkpoint=str(root / "ckpt"),
        auth_token=TOKEN,
        allowed_uri_prefixes=[f"file://{videos}/", "http://127.0.0.1/", "http://169.254.169.254/"],
        batch_wait_s=0.02,
        refine_retry_s=60.0,
        decode_dtype=EXACT,
        deployments={
            name: {"health_check_period_s": 1.0, "ray_actor_options": {"num_cpus": 0.25}}
            for name in ("refiner", "planner", "encoder", "decoder")
        },
        limits={
            "max_upload_bytes": 3_000_000,
            "max_video_s": 12.0,
            "max_audio_s": 5.0,
            "request_timeout_s": 90.0,
            **(limits or {}),
        },
        **extra,
    )


@pytest.fixture(scope="module")
def server(media, ray_address):
    """Two applications on one Serve instance: disaggregated at /, fused at /fused (one request at a time)."""
    root, videos, _ = media
    ray.init(address=ray_address, configure_logging=False, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(_config(root, videos)), name="videorobin", route_prefix="/")
    fused = _config(root, videos, mode="fused", limits={"max_in_flight": 1, "retry_after_s": 3})
    serve.run(build_app(fused), name="fused", route_prefix="/fused")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=180) as client:
        deadline = time.time() + 120
        while client.get("/readyz").status_code != 200 or client.get("/fused/readyz").status_code != 200:
            assert time.time() < deadline, "the application never became ready"
            time.sleep(1)
        yield client
    serve.shutdown()
    ray.shutdown()


def _post(client, video, route="/v1/soundtracks", headers=AUTH, audio=None, **fields):
    with open(video, "rb") as f:
        files = {"video": (str(video).rsplit("/", 1)[-1], f, "video/mp4")}
        if audio is not None:
            files["audio"] = (str(audio).rsplit("/", 1)[-1], open(audio, "rb"), "audio/wav")  # noqa: SIM115
        return client.post(route, files=files, data={k: str(v) for k, v in fields.items()}, headers=headers)


def _wav(body: bytes) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(io.BytesIO(body), always_2d=True, dtype="float32")
    return audio.T, rate


def test_an_upload_gets_a_48khz_stereo_wav_of_the_videos_length(server, media):
    _, videos, _ = media
    response = _post(server, videos / "short.mp4", prompt="lo-fi piano, 90 BPM", seed=1)
    assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
    audio, rate = _wav(response.content)
    assert rate == 48000 and audio.shape == (2, 3 * 48000)


def test_format_mp4_returns_the_video_with_the_music_muxed_in(server, media):
    _, videos, _ = media
    response = _post(server, videos / "short.mp4", format="mp4")
    assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(response.content)) as container:
        assert container.streams.video and container.streams.audio
        assert container.streams.audio[0].sample_rate == 48000


def test_a_json_video_uri_under_an_allowed_prefix_works(server, media):
    _, videos, _ = media
    body = {"video_uri": f"file://{videos}/short.mp4", "seed": 1, "prompt": "lo-fi piano, 90 BPM"}
    response = server.post("/v1/soundtracks", json=body, headers=AUTH)
    assert response.status_code == 200
    upload = _post(server, videos / "short.mp4", prompt="lo-fi piano, 90 BPM", seed=1)
    assert response.content == upload.content  # same video, same seed: same bytes either way in


def test_streamed_audio_starts_before_generation_ends_and_equals_the_file(server, media):
    """Order, not a time budget: the stream's first audio comes before the answer to a whole-file request for
    the same clip, sent to the fused application (its own engine: no batch shared with the stream) once the
    stream's headers are in. That answer needs the whole generation; the first audio needs one decode window."""
    _, videos, _ = media
    fields = {"prompt": "ambient synths, slow build", "seed": 7}
    events: list[str] = []
    chunks: list[bytes] = []

    def whole_file() -> None:
        response = _post(server, videos / "long.mp4", route="/fused/v1/soundtracks", **fields)
        events.append(f"whole file {response.status_code}")

    other = threading.Thread(target=whole_file)
    with open(videos / "long.mp4", "rb") as f:
        files = {"video": ("long.mp4", f, "video/mp4")}
        with server.stream("POST", "/v1/soundtracks:stream", files=files, data=fields, headers=AUTH) as response:
            assert response.status_code == 200
            other.start()
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                if "first audio" not in events and sum(map(len, chunks)) > 44:  # past the WAV header
                    events.append("first audio")
    other.join(timeout=300)
    print(f"\n{events}")
    assert len(events) == 2 and events[0] == "first audio", events
    whole = _post(server, videos / "long.mp4", **fields)
    assert b"".join(chunks) == whole.content


def test_the_same_seed_gives_the_engines_audio_in_both_modes(server, media):
    """Also the request's sampler: midpoint steps asked per request run as the engine runs them."""
    root, videos, _ = media
    fields = {"prompt": "lo-fi piano, 90 BPM, A minor", "seed": 11, "steps": 4, "solver": "midpoint"}
    served, _ = _wav(_post(server, videos / "short.mp4", **fields).content)
    fused = _post(server, videos / "short.mp4", route="/fused/v1/soundtracks", **fields)
    assert fused.status_code == 200
    engine = Engine(load_bundle(str(root / "ckpt")), max_batch=1, decode_dtype=EXACT)
    params = GenerationParams(seed=11, steps=4, solver="midpoint")
    (result,) = engine.generate([engine.make_request(str(videos / "short.mp4"), fields["prompt"], params)])
    expected = np.clip(result.audio, -1, 1)
    assert served.shape == expected.shape
    assert np.abs(served - expected).max() <= PCM16_TOLERANCE  # 16-bit rounding only
    assert np.abs(_wav(fused.content)[0] - expected).max() <= PCM16_TOLERANCE


def test_an_audio_prompt_is_continued_as_the_engine_continues_it(server, media):
    """`audio` + include_prompt: the prompt (resampled from 44.1 kHz), then the new music for the whole video,
    equal to the engine's continuation with the same seed; `from` rewrites a track after the kept part."""
    from model.engine.request import AudioPrompt
    from model.media import read_audio

    root, videos, _ = media
    fields = {"prompt": "lo-fi piano", "seed": 5, "steps": 4}
    response = _post(server, videos / "short.mp4", audio=root / "prompt.wav", include_prompt="true", **fields)
    assert response.status_code == 200, response.text
    served, _ = _wav(response.content)
    assert served.shape == (2, round(2.5 * 48000) + 3 * 48000)
    engine = Engine(load_bundle(str(root / "ckpt")), max_batch=1, decode_dtype=EXACT)
    prompt = AudioPrompt(read_audio(str(root / "prompt.wav"), 48000), 48000)
    request = engine.make_request(
        str(videos / "short.mp4"), "lo-fi piano", GenerationParams(seed=5, steps=4), audio_prompt=prompt
    )
    (result,) = engine.generate([request])
    expected = np.clip(np.concatenate([prompt.audio, result.audio], axis=1), -1, 1)
    assert np.abs(served - expected).max() <= PCM16_TOLERANCE
    track = root / "served_track.wav"
    sf.write(str(track), served[:, : round(4.5 * 48000)].T, 48000)  # under the server's 5 s audio limit
    rewritten = _post(server, videos / "short.mp4", audio=track, **{"from": 1.5}, **fields)
    assert rewritten.status_code == 200, rewritten.text
    audio, _ = _wav(rewritten.content)
    kept = 9 * 7680  # 1.5 s -> 9 whole patches of 0.16 s
    assert audio.shape == (2, 3 * 48000)  # as long as the video
    assert np.abs(audio[:, :kept] - served[:, :kept]).max() <= PCM16_TOLERANCE


def test_align_cuts_serves_the_engines_best_of_n(server, media):
    from jobs.evaluation.cuts import cut_chooser, detect_cuts
    from model.engine.align import stream_aligned

    root, videos, _ = media
    response = _post(server, videos / "short.mp4", seed=4, steps=4, align_cuts=2)
    assert response.status_code == 200, response.text
    served, _ = _wav(response.content)
    engine = Engine(load_bundle(str(root / "ckpt")), max_batch=2, decode_dtype=EXACT)
    video = str(videos / "short.mp4")
    request = engine.make_request(video, None, GenerationParams(seed=4, steps=4))
    patches = stream_aligned(engine, request, 2, cut_chooser(detect_cuts(video)))
    expected = np.concatenate([a for _, a in engine.stream_audio([request], patches=patches)], axis=1)
    assert served.shape == expected.shape
    assert np.abs(served - np.clip(expected, -1, 1)).max() <= PCM16_TOLERANCE


BAD_AUDIO = [
    ("notes.txt", {}, 415, "unsupported_media_type"),
    ("six_s.wav", {}, 422, "audio_too_long"),
    ("prompt.wav", {"from": 9.0}, 422, "invalid_parameter"),
    (None, {"include_prompt": "true"}, 422, "invalid_parameter"),
]


@pytest.mark.parametrize(("audio", "fields", "status", "code"), BAD_AUDIO)
def test_bad_audio_prompts_are_refused_with_their_code(server, media, audio, fields, status, code):
    root, videos, _ = media
    response = _post(server, videos / "short.mp4", audio=root / audio if audio else None, **fields)
    assert (response.status_code, response.json()["code"]) == (status, code), response.text


def _scrape(metrics_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        return response.read().decode()


def _max_batch(text: str, stage: str) -> int:
    """The largest batch size observed: the smallest bucket bound holding every observation."""
    buckets = {}
    for line in text.splitlines():
        if line.startswith("ray_videorobin_batch_size_bucket{") and f'stage="{stage}"' in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float(le)] = buckets.get(float(le), 0) + float(line.rsplit(" ", 1)[1])
    if not buckets:
        return 0
    total = buckets[max(buckets)]
    return int(min(le for le, count in buckets.items() if count >= total))


def test_eight_concurrent_requests_succeed_and_are_batched(server, media, metrics_port):
    _, videos, _ = media
    results: list[httpx.Response] = []

    def one(seed: int) -> None:
        results.append(_post(server, videos / "short.mp4", seed=seed, steps=4))

    threads = [threading.Thread(target=one, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert [r.status_code for r in results] == [200] * 8
    deadline, text = time.time() + 60, ""
    while time.time() < deadline:
        text = _scrape(metrics_port)
        if _max_batch(text, "planner") > 1 and _max_batch(text, "refiner") > 1:
            break
        time.sleep(2)
    assert _max_batch(text, "planner") > 1 and _max_batch(text, "refiner") > 1


BAD_FIELDS = [
    ({"steps": 0}, 422, "invalid_parameter"),
    ({"steps": 1000}, 422, "invalid_parameter"),
    ({"guidance": -1}, 422, "invalid_parameter"),
    ({"guidance": 99}, 422, "invalid_parameter"),
    ({"solver": "rk4"}, 422, "invalid_parameter"),
    ({"format": "ogg"}, 422, "invalid_parameter"),
    ({"duration": 0}, 422, "invalid_parameter"),
    ({"prompt": "x" * 400}, 422, "prompt_too_long"),
    ({"align_cuts": 5}, 422, "invalid_parameter"),
]


@pytest.mark.parametrize(("fields", "status", "code"), BAD_FIELDS)
def test_out_of_range_fields_are_refused(server, media, fields, status, code):
    _, videos, _ = media
    response = _post(server, videos / "short.mp4", **fields)
    assert (response.status_code, response.json()["code"]) == (status, code)


BAD_FILES = [
    ("truncated.mp4", 415, "unsupported_media_type"),
    ("notes.txt", 415, "unsupported_media_type"),
    ("audio_only.m4a", 415, "unsupported_media_type"),
    ("empty.mp4", 400, "empty_video"),
    ("no_frames.mp4", 400, "empty_video"),
    ("still.png", 415, "unsupported_media_type"),  # a picture is not a video: refused, never silently scored
    ("still.gif", 415, "unsupported_media_type"),
]


@pytest.mark.parametrize(("name", "status", "code"), BAD_FILES)
def test_bad_videos_are_refused_with_their_code(server, media, name, status, code):
    _, _, bad = media
    response = _post(server, bad[name])
    assert (response.status_code, response.json()["code"]) == (status, code)
    assert name in response.json()["message"] and "/tmp" not in response.json()["message"]


def test_size_and_length_limits(server, media):
    _, videos, _ = media
    too_big = _post(server, videos / "huge.bin")
    assert (too_big.status_code, too_big.json()["code"]) == (413, "payload_too_large")
    too_long = _post(server, videos / "too_long.mp4")
    assert (too_long.status_code, too_long.json()["code"]) == (422, "video_too_long")


@pytest.mark.parametrize(
    "uri",
    [
        "file:///etc/passwd",
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1/videos/a.mp4",
        "ftp://x/a.mp4",
    ],
)
def test_disallowed_uris_are_refused_before_any_read(server, uri):
    response = server.post("/v1/soundtracks", json={"video_uri": uri}, headers=AUTH)
    assert (response.status_code, response.json()["code"]) == (400, "uri_not_allowed")


def test_a_path_escaping_an_allowed_prefix_is_refused(server, media):
    _, videos, _ = media
    response = server.post("/v1/soundtracks", json={"video_uri": f"file://{videos}/../ckpt/config.json"}, headers=AUTH)
    assert (response.status_code, response.json()["code"]) == (400, "uri_not_allowed")


def test_auth_and_request_shape(server, media):
    _, videos, _ = media
    assert _post(server, videos / "short.mp4", headers={}).json()["code"] == "unauthorized"
    wrong = _post(server, videos / "short.mp4", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert server.post("/v1/soundtracks", content=b"x", headers=AUTH).status_code == 415
    bad_json = server.post("/v1/soundtracks", content=b"{", headers={**AUTH, "content-type": "application/json"})
    assert (bad_json.status_code, bad_json.json()["code"]) == (400, "invalid_request")
    assert server.get("/v1/nothing").json()["code"] == "not_found"
    assert server.get("/healthz").status_code == 200  # health checks need no token


def test_a_full_queue_answers_503_with_retry_after(server, media):
    _, videos, _ = media
    results: list[httpx.Response] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(_post(server, videos / "long.mp4", route="/fused/v1/soundtracks"))
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    refused = [r for r in results if r.status_code == 503]
    assert refused and all(r.json()["code"] == "overloaded" and r.headers["Retry-After"] == "3" for r in refused)
    assert any(r.status_code == 200 for r in results)


def test_openapi_documents_both_request_bodies(server):
    spec = server.get("/openapi.json").json()
    body = spec["paths"]["/v1/soundtracks"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert "video_uri" in body["application/json"]["schema"]["properties"]
    assert "/v1/soundtracks:stream" in spec["paths"]


@pytest.mark.faults
@pytest.mark.parametrize("deployment", ["Refiner", "Planner", "FrameEncoder", "AudioDecoder"])
def test_a_killed_replica_is_replaced_and_requests_recover(server, media, deployment):
    """Under load, one replica of each deployment in turn is killed: every request ends (none hangs past its
    deadline) with its soundtrack or a JSON 503, and the service serves again once Serve has replaced it."""
    _, videos, _ = media
    results: list[int] = []

    def one(seed: int) -> None:
        response = _post(server, videos / "long.mp4", seed=seed, steps=60)
        if response.status_code != 200:
            assert response.json()["code"] == "unavailable", response.text
        results.append(response.status_code)

    threads = [threading.Thread(target=one, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # traffic is flowing
    actors = ray.util.list_named_actors(all_namespaces=True)
    (name,) = [a["name"] for a in actors if f"videorobin#{deployment}#" in a["name"]]
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    for t in threads:
        t.join(timeout=200)
    print(f"\nafter the kill: {results}")
    # nobody hung: a request still open at the join, or one that timed out on the client, leaves no status
    assert not any(t.is_alive() for t in threads)
    assert len(results) == 3 and all(status in (200, 503) for status in results), results
    deadline = time.time() + 120  # Serve starts the replacement; until it is up, requests may be refused
    while (later := _post(server, videos / "short.mp4", seed=99)).status_code != 200:
        assert later.json()["code"] == "unavailable" and time.time() < deadline, later.text
        time.sleep(2)
    assert server.get("/healthz").status_code == 200
    assert server.get("/readyz").status_code == 200


def test_a_client_that_leaves_mid_stream_is_counted_and_frees_its_row(server, media):
    _, videos, _ = media
    with open(videos / "long.mp4", "rb") as f:
        files = {"video": ("long.mp4", f, "video/mp4")}
        with server.stream("POST", "/v1/soundtracks:stream", files=files, data={"seed": 5}, headers=AUTH) as response:
            assert response.status_code == 200
            next(response.iter_bytes())  # the header; then the client hangs up
    assert _post(server, videos / "short.mp4", seed=6).status_code == 200  # the replica still serves


def test_a_chunked_upload_is_refused_once_past_the_limit(server):
    boundary = "vr-boundary"
    sent = [0]

    def body():
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="video"; filename="big.mp4"\r\n\r\n'.encode()
        for _ in range(64):  # 4 MiB in all, over the 3 MB limit, and no Content-Length to say so up front
            sent[0] += 1
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {**AUTH, "content-type": f"multipart/form-data; boundary={boundary}"}
    response = server.post("/v1/soundtracks", content=body(), headers=headers)
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert (response.status_code, response.json()["code"]) == (413, "payload_too_large")


def test_readyz_states_how_the_api_is_protected(server):
    assert server.get("/readyz").json() == {"status": "ready", "mode": "disaggregated", "auth": "bearer token required"}


def test_the_services_metrics_reach_prometheus(server, metrics_port):
    wanted = [
        "ray_videorobin_http_requests_total",
        "ray_videorobin_errors_total",
        "ray_videorobin_request_latency_s_bucket",
        "ray_videorobin_time_to_first_audio_s_bucket",
        "ray_videorobin_real_time_factor_bucket",
        "ray_videorobin_patches_total",
        "ray_videorobin_batch_size_bucket",
        "ray_videorobin_queue_length",
    ]
    wanted += [
        'code="uri_not_allowed"',
        'stage="encoder"',
        'status="499"',  # the client that left mid-stream, counted as such, not as a 200
    ]
    deadline, text = time.time() + 90, ""  # Ray exports metrics every few seconds: wait for the last ones
    while time.time() < deadline:
        text = _scrape(metrics_port)
        if all(name in text for name in wanted):
            break
        time.sleep(2)
    counted = [line for line in text.splitlines() if line.startswith("ray_videorobin_http_requests_total{")]
    assert [name for name in wanted if name not in text] == [], "\n".join(counted)


def _gauge(text: str, stage: str) -> list[float]:
    """The queue gauge of the live replicas (a killed replica's last value can linger in the export)."""
    live = {a["name"].rsplit("#", 1)[1] for a in ray.util.list_named_actors(all_namespaces=True) if "#" in a["name"]}
    prefix = "ray_videorobin_queue_length{"
    return [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix) and f'stage="{stage}"' in line and any(f'replica="{r}"' in line for r in live)
    ]


def test_in_flight_gauges_return_to_zero_after_every_kind_of_request(server, metrics_port):
    """After finished, refused, failed, abandoned and killed requests (every test above), nothing is left
    counted as in flight on any Ingress or Planner replica."""
    deadline = time.time() + 60
    while time.time() < deadline:
        text = _scrape(metrics_port)
        ingress, planner = _gauge(text, "ingress"), _gauge(text, "planner")
        if ingress and planner and not any(ingress) and not any(planner):
            break
        time.sleep(2)
    assert ingress and not any(ingress), ingress
    assert planner and not any(planner), planner
