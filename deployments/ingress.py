"""Ingress: the HTTP API (FastAPI). Validates and reads the video, then runs FrameEncoder -> Planner ->
AudioDecoder (or the fused deployment) and returns or streams the soundtrack.

    POST /v1/soundtracks          multipart (`video` file) or JSON (`video_uri`) -> wav | flac | mp4
    POST /v1/soundtracks:stream   the same, audio streamed as a WAV while it is generated
    GET  /healthz, GET /readyz

Every refusal is `{"code", "message"}` with a stable code and the right status (deployments/errors.py).
"""

import asyncio
import hmac
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from typing import Literal

import fsspec
import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.config import ServeConfig
from deployments.errors import ApiError, media_error
from deployments.metrics import serving_metrics
from deployments.planner import RefinerUnavailable
from deployments.uris import check_video_uri
from model.checkpoint import load_bundle_tokenizer, read_config
from model.engine import GenerationParams, GenerationRequest
from model.engine.engine import build_request, check_frames, resolve_duration, tokenize_prompt
from model.media import MediaError, encode_audio, mux, pcm16, probe_video, sample_frames, wav_header
from model.vae import StreamingLatents

log = logging.getLogger("ray.serve")

MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp4": "video/mp4"}
COPY_BYTES = 1 << 20


class SoundtrackOptions(BaseModel):
    """The request's fields (multipart form fields or JSON keys)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None  # creator intent; default: the static video-only prompt
    seed: int = 0
    duration: float | None = None  # seconds of music; default: the video's length
    steps: int | None = None  # Euler steps per patch; default: the model's
    guidance: float | None = None  # classifier-free guidance scale; default: the model's
    format: Literal["wav", "flac", "mp4"] = "wav"  # mp4 = the input video with the music muxed in
    stream: bool = False  # stream the audio as a WAV while it is generated (format must be wav)


class SoundtrackJSON(SoundtrackOptions):
    video_uri: str  # fsspec URI under one of the server's allowed prefixes


class SoundtrackForm(SoundtrackOptions):
    video: bytes  # the video file


def _body_schema() -> dict:
    form = SoundtrackForm.model_json_schema()
    form["properties"]["video"] = {"type": "string", "format": "binary"}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": form},
                "application/json": {"schema": SoundtrackJSON.model_json_schema()},
            },
        }
    }


ERROR_RESPONSES = {
    status: {"description": text, "content": {"application/json": {"example": {"code": code, "message": "..."}}}}
    for status, code, text in [
        (400, "invalid_video", "bad input: uri_not_allowed, video_not_found, empty_video, invalid_video, ..."),
        (401, "unauthorized", "missing or wrong bearer token"),
        (413, "payload_too_large", "upload over the size limit"),
        (415, "unsupported_media_type", "not a video the server can read"),
        (422, "invalid_parameter", "out-of-range field, prompt_too_long, video_too_long, frame_too_large"),
        (503, "overloaded", "queues full or a model deployment down: retry after Retry-After seconds"),
        (504, "timeout", "the request ran past its time limit"),
    ]
}

api = FastAPI(
    title="Video-Robin",
    version="1",
    description="Music for video: upload a video (or name one by URI) and an optional prompt; get a soundtrack.",
)


@api.exception_handler(StarletteHTTPException)
async def _http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "invalid_request")
    return JSONResponse({"code": code, "message": str(err.detail)}, status_code=err.status_code)


async def _before(deadline: float, awaitable):
    try:
        return await asyncio.wait_for(awaitable, timeout=max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        raise ApiError("timeout", "the request ran past its time limit") from None


def _options(model: type[SoundtrackOptions], fields: dict) -> SoundtrackOptions:
    try:
        return model.model_validate(fields)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        code = "invalid_request" if first["type"] in ("missing", "extra_forbidden") else "invalid_parameter"
        raise ApiError(code, f"{where}: {first['msg']}") from None


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError("payload_too_large", f"{size} bytes; the limit is {limit}")


def _copy_capped(src, path: str, limit: int) -> None:
    written = 0
    with open(path, "wb") as out:
        while chunk := src.read(COPY_BYTES):
            written += len(chunk)
            if written > limit:
                raise _too_large(written, limit)
            out.write(chunk)


def _download(uri: str, path: str, limit: int) -> None:
    """Copy an allowed URI to `path`, refusing redirects (they could lead to a private address)."""
    options = {"allow_redirects": False} if uri.startswith(("http://", "https://")) else {}
    fs, remote = fsspec.core.url_to_fs(uri, **options)
    try:
        size = fs.size(remote)
        if size is not None and size > limit:
            raise _too_large(size, limit)
        with fs.open(remote, "rb") as src:
            _copy_capped(src, path, limit)
    except (FileNotFoundError, IsADirectoryError):
        raise ApiError("video_not_found", f"{uri}: no such file") from None
    except OSError as err:
        raise ApiError("video_not_found", f"{uri}: cannot be read ({err})") from None


@serve.deployment
@serve.ingress(api)
class Ingress:
    def __init__(self, config: dict, encoder, planner, decoder):
        self.cfg = ServeConfig(**config)
        self.model_cfg = read_config(self.cfg.checkpoint)
        self.tokenizer = load_bundle_tokenizer(self.cfg.checkpoint, self.model_cfg)
        self.encoder, self.decoder = encoder, decoder
        self.planner = planner.options(stream=True)
        self.handles = [h for h in (encoder, planner, decoder) if h is not None]
        self.in_flight = 0
        self.metrics = serving_metrics()

    # ---- routes ---------------------------------------------------------------------------------------

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz", responses={503: ERROR_RESPONSES[503]})
    async def readyz(self) -> JSONResponse:
        try:
            await asyncio.wait_for(asyncio.gather(*(h.ready.remote() for h in self.handles)), timeout=5.0)
        except Exception as err:  # noqa: BLE001 - any failure means not ready
            error = ApiError("not_ready", f"model deployments are not ready ({type(err).__name__})", 1)
            return JSONResponse(error.body(), status_code=error.status, headers=error.headers())
        return JSONResponse({"status": "ready", "mode": self.cfg.mode})

    @api.post(
        "/v1/soundtracks",
        openapi_extra=_body_schema(),
        responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}}, **ERROR_RESPONSES},
        summary="Write a soundtrack for a video",
    )
    async def soundtracks(self, request: Request) -> Response:
        return await self._serve(request, "/v1/soundtracks", force_stream=False)

    @api.post(
        "/v1/soundtracks:stream",
        openapi_extra=_body_schema(),
        responses={200: {"content": {"audio/wav": {}}}, **ERROR_RESPONSES},
        summary="Write a soundtrack, streamed as a WAV while it is generated",
    )
    async def soundtracks_stream(self, request: Request) -> Response:
        return await self._serve(request, "/v1/soundtracks:stream", force_stream=True)

    # ---- one request ----------------------------------------------------------------------------------

    async def _serve(self, request: Request, route: str, force_stream: bool) -> Response:
        started = time.monotonic()
        try:
            self._authorize(request)
            self._admit()
        except ApiError as err:
            return self._refuse(route, err, started)
        streaming = False
        try:
            with tempfile.TemporaryDirectory(prefix="videorobin-") as tmp:
                options, video, name = await self._read_input(request, tmp)
                stream = options.stream or force_stream
                if stream and options.format != "wav":
                    raise ApiError("invalid_parameter", "a streamed soundtrack is a WAV: format must be wav")
                job = await self._prepare(options, video, name)
                deadline = started + self.cfg.limits.request_timeout_s
                if stream:
                    streaming = True
                    body = self._stream_wav(job, route, started, deadline)
                    return StreamingResponse(body, media_type="audio/wav")
                audio = await self._whole_clip(job, deadline)
                self._observe_generation(job, started)
                data = await asyncio.to_thread(self._encode, audio, options.format, video, tmp)
            self._count(route, 200, started)
            return Response(data, media_type=MEDIA_TYPES[options.format])
        except ApiError as err:
            return self._refuse(route, err, started)
        except Exception as err:  # noqa: BLE001 - a JSON 500, never a traceback on the wire
            log.exception("request failed")
            return self._refuse(route, ApiError("internal_error", f"internal error ({type(err).__name__})"), started)
        finally:
            if not streaming:
                self.in_flight -= 1

    def _authorize(self, request: Request) -> None:
        token = self.cfg.auth_token
        if not token:
            return
        given = request.headers.get("authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())):
            raise ApiError("unauthorized", "send `Authorization: Bearer <token>`")

    def _admit(self) -> None:
        limits = self.cfg.limits
        if self.in_flight >= limits.max_in_flight:
            raise ApiError("overloaded", f"{self.in_flight} requests in flight on this replica", limits.retry_after_s)
        self.in_flight += 1
        self.metrics["queue"].set(self.in_flight, tags={"stage": "ingress"})

    def _refuse(self, route: str, err: ApiError, started: float) -> JSONResponse:
        self.metrics["errors"].inc(tags={"code": err.code})
        self._count(route, err.status, started)
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers())

    def _count(self, route: str, status: int, started: float) -> None:
        self.metrics["requests"].inc(tags={"route": route, "status": str(status)})
        self.metrics["latency"].observe(time.monotonic() - started, tags={"route": route})

    def _observe_generation(self, job: GenerationRequest, started: float) -> None:
        self.metrics["rtf"].observe((time.monotonic() - started) / job.duration_s)

    # ---- reading and checking the input ---------------------------------------------------------------

    async def _read_input(self, request: Request, tmp: str) -> tuple[SoundtrackOptions, str, str]:
        """(options, local video path, the name to report) from a multipart upload or a JSON body."""
        ctype = request.headers.get("content-type", "")
        length = int(request.headers.get("content-length") or 0)
        limits = self.cfg.limits
        path = os.path.join(tmp, "video")
        if ctype.startswith("multipart/form-data"):
            if length > limits.max_upload_bytes:
                raise _too_large(length, limits.max_upload_bytes)
            try:
                form = await request.form(max_files=1, max_fields=16)
            except Exception as err:  # noqa: BLE001 - starlette raises several kinds for malformed bodies
                raise ApiError("invalid_request", f"malformed multipart body ({err})") from None
            upload = form.get("video")
            if upload is None or isinstance(upload, str):
                raise ApiError("invalid_request", "multipart field `video` (a file) is required")
            fields = {k: v for k, v in form.multi_items() if k != "video"}
            options = _options(SoundtrackOptions, fields)
            await asyncio.to_thread(_copy_capped, upload.file, path, limits.max_upload_bytes)
            return options, path, upload.filename or "video"
        if ctype.startswith("application/json"):
            body = await request.body()
            if len(body) > limits.max_json_bytes:
                raise _too_large(len(body), limits.max_json_bytes)
            try:
                data = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ApiError("invalid_request", f"body is not JSON ({err})") from None
            if not isinstance(data, dict):
                raise ApiError("invalid_request", "the JSON body must be an object")
            options = _options(SoundtrackJSON, data)
            uri = check_video_uri(options.video_uri, self.cfg.allowed_uri_prefixes)
            await asyncio.to_thread(_download, uri, path, limits.max_upload_bytes)
            return options, path, options.video_uri
        raise ApiError(
            "unsupported_media_type",
            "send multipart/form-data with a `video` file, or application/json with `video_uri`",
        )

    def _params(self, options: SoundtrackOptions) -> GenerationParams:
        limits = self.cfg.limits
        checks = [
            ("steps", options.steps, *limits.steps),
            ("guidance", options.guidance, *limits.guidance),
            ("seed", options.seed, 0, 2**63 - 1),
        ]
        for field, value, lo, hi in checks:
            if value is not None and not lo <= value <= hi:
                raise ApiError("invalid_parameter", f"{field} must be in [{lo}, {hi}] (got {value})")
        if options.duration is not None and not 0 < options.duration <= limits.max_video_s:
            raise ApiError("invalid_parameter", f"duration must be in (0, {limits.max_video_s:g}] s")
        return GenerationParams(options.seed, options.duration, options.steps, options.guidance)

    async def _prepare(self, options: SoundtrackOptions, video: str, name: str) -> GenerationRequest:
        """Probe and check the video, encode its frames, tokenise the prompt: a request the Planner can run."""
        params = self._params(options)
        text_ids = self._tokenize(options.prompt)
        limits = self.cfg.limits
        try:
            info = await asyncio.to_thread(probe_video, video)
        except MediaError as err:
            raise media_error(err, name) from None
        if info.width * info.height > limits.max_frame_pixels:
            raise ApiError(
                "frame_too_large", f"{name}: {info.width}x{info.height} frames exceed {limits.max_frame_pixels} pixels"
            )
        if info.duration_s > limits.max_video_s:
            raise ApiError("video_too_long", f"{name}: {info.duration_s:.1f} s; the limit is {limits.max_video_s:g} s")
        vision = self.model_cfg.vision
        try:
            duration = resolve_duration(params, info.duration_s, limits.max_video_s)
            features = None
            if vision is not None:
                check_frames(self.model_cfg, duration)
                frames = await asyncio.to_thread(
                    sample_frames, video, vision.fps, vision.frame_size, duration, vision.max_frames
                )
                features = torch.from_numpy(await self.encoder.encode.remote(frames))
        except MediaError as err:
            raise media_error(err, name) from None
        except ValueError as err:
            raise ApiError("video_too_long", str(err)) from None
        return build_request(self.model_cfg, text_ids, params, duration, features, uuid.uuid4().hex)

    def _tokenize(self, prompt: str | None) -> torch.Tensor:
        """The prompt's token ids, checked against the model's and the server's limits before any frame work."""
        try:
            ids = tokenize_prompt(self.tokenizer, self.model_cfg, prompt)
        except ValueError as err:
            raise ApiError("prompt_too_long", str(err)) from None
        limit = self.cfg.limits.max_prompt_tokens
        if limit is not None and prompt and len(ids) > limit:
            raise ApiError("prompt_too_long", f"prompt has {len(ids)} tokens; this server takes at most {limit}")
        return ids

    # ---- generation and decoding ----------------------------------------------------------------------

    async def _audio_chunks(self, job: GenerationRequest, deadline: float) -> AsyncIterator[np.ndarray]:
        """(C, S) audio as each decode window's latents are complete: the streaming decode, equal to the
        whole-clip decode because the windows are the same ones `AudioAutoencoder.decode` uses."""
        cfg = self.model_cfg
        clip = StreamingLatents(cfg.vae, job.n_patches * cfg.patch_size, round(job.duration_s * cfg.vae.sample_rate))
        patches = self.planner.generate.remote(job)
        try:
            while not clip.done:
                for window, latents in clip.add(await _before(deadline, patches.__anext__())):
                    yield clip.emit(window, await _before(deadline, self.decoder.decode.remote(latents, window)))
        except (RefinerUnavailable, RayActorError, ActorUnavailableError) as err:
            raise ApiError("unavailable", f"a model deployment is unavailable ({err})", 5) from None
        except BackPressureError:
            raise ApiError("overloaded", "the planners' queues are full", self.cfg.limits.retry_after_s) from None
        finally:
            patches.cancel()

    async def _whole_clip(self, job: GenerationRequest, deadline: float) -> np.ndarray:
        return np.concatenate([a async for a in self._audio_chunks(job, deadline)], axis=1)

    async def _stream_wav(self, job: GenerationRequest, route: str, started: float, deadline: float):
        rate, channels = self.model_cfg.vae.sample_rate, self.model_cfg.vae.audio_channels
        status = 200
        try:
            yield wav_header(round(job.duration_s * rate), channels, rate)
            first = True
            async for audio in self._audio_chunks(job, deadline):
                if first:
                    self.metrics["first_audio"].observe(time.monotonic() - started)
                    first = False
                yield pcm16(audio)
            self._observe_generation(job, started)
        except ApiError as err:  # headers are gone: the stream ends short, the error is counted and logged
            status = err.status
            self.metrics["errors"].inc(tags={"code": err.code})
            log.warning("stream %s ended early: %s", job.request_id, err.message)
        finally:
            self.in_flight -= 1
            self._count(route, status, started)

    def _encode(self, audio: np.ndarray, fmt: str, video: str, tmp: str) -> bytes:
        rate = self.model_cfg.vae.sample_rate
        if fmt != "mp4":
            return encode_audio(audio, rate, fmt)
        out = os.path.join(tmp, "out.mp4")
        mux(video, audio, rate, out)
        with open(out, "rb") as f:
            return f.read()
