"""Ingress: the HTTP API (FastAPI). Validates the video and the audio prompt, then runs Planner ->
AudioDecoder (or the fused deployment) and returns or streams the soundtrack.

    POST /v1/soundtracks          multipart (`video`, `audio` files) or JSON (`video_uri`, `audio_uri`)
                                  -> wav | flac | mp4
    POST /v1/soundtracks:stream   the same, audio streamed as a WAV while it is generated
    GET  /                        a page to try it in a browser (deployments/web/index.html)
    GET  /healthz, GET /readyz

Every refusal is `{"code", "message"}` with a stable code and the right status (deployments/errors.py).
"""

import asyncio
import hmac
import logging
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.admission import Admission, CountedStream, Ticket
from deployments.config import ServeConfig
from deployments.docs import add_docs
from deployments.errors import ApiError, media_error
from deployments.inputs import Inputs, SoundtrackOptions, body_schema, read_inputs
from deployments.metrics import serving_metrics
from deployments.page import add_page
from deployments.planner import ModelUnavailable, PlannerBroken
from model.checkpoint import load_bundle_tokenizer, read_config
from model.engine import GenerationParams
from model.engine.prepare import prompt_tail, resolve_duration, samples_per_patch, tokenize_prompt
from model.engine.request import AudioPrompt, GenerationSpec, RequestInfo
from model.media import MediaError, encode_audio, mux, pcm16, probe_video, read_audio, wav_header

log = logging.getLogger("ray.serve")

MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp4": "video/mp4"}


@dataclass
class Job:
    """One request on its way: what the engine resolved, its stream of latents, and the audio that opens it."""

    spec: GenerationSpec
    info: RequestInfo
    latents: object  # the Planner's streaming response, positioned after `info`
    lead: np.ndarray  # (C, S) audio before the new music (the kept track or the prompt), often empty
    rate: int

    @property
    def samples(self) -> int:
        return self.lead.shape[1] + round(self.info.duration_s * self.rate)


ERROR_RESPONSES = {
    status: {"description": text, "content": {"application/json": {"example": {"code": code, "message": "..."}}}}
    for status, code, text in [
        (400, "invalid_video", "bad input: uri_not_allowed, video_not_found, empty_video, invalid_video, ..."),
        (401, "unauthorized", "missing or wrong bearer token"),
        (413, "payload_too_large", "upload over the size limit"),
        (415, "unsupported_media_type", "not a video the server can read"),
        (422, "invalid_parameter", "out-of-range field, prompt_too_long, video_too_long, audio_too_long, ..."),
        (503, "overloaded", "queues full or a model deployment down: retry after Retry-After seconds"),
        (504, "timeout", "the request ran past its time limit"),
    ]
}

api = FastAPI(
    title="Video-Robin",
    version="1",
    description="Music for video: upload a video (or name one by URI) and an optional prompt; get a soundtrack.",
    docs_url=None,  # /docs and /redoc come from deployments.docs: their assets served from the package, no CDN
    redoc_url=None,
)
add_docs(api)
add_page(api)  # GET /: try it in a browser


@api.exception_handler(StarletteHTTPException)
async def _http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "invalid_request")
    return JSONResponse({"code": code, "message": str(err.detail)}, status_code=err.status_code)


async def _before(deadline: float, awaitable, stage: str = "generating"):
    try:
        return await asyncio.wait_for(awaitable, timeout=max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        raise ApiError("timeout", f"the request ran past its time limit while {stage}") from None


def _error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers())


@serve.deployment
@serve.ingress(api)
class Ingress:
    def __init__(self, config: dict, planner, decoder):
        self.cfg = ServeConfig(**config)
        self.model_cfg = read_config(self.cfg.checkpoint)
        self.tokenizer = load_bundle_tokenizer(self.cfg.checkpoint, self.model_cfg)
        self.decoder = decoder
        self.planner = planner.options(stream=True)
        self.handles = [planner, decoder]
        self.metrics = serving_metrics()
        self.admission = Admission(self.cfg.limits.max_in_flight, self.cfg.limits.retry_after_s, self.metrics)
        log.info("API auth: %s", self.cfg.auth_mode())

    # ---- routes ---------------------------------------------------------------------------------------

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz", responses={503: ERROR_RESPONSES[503]})
    async def readyz(self) -> JSONResponse:
        try:
            await asyncio.wait_for(asyncio.gather(*(h.ready.remote() for h in self.handles)), timeout=5.0)
        except Exception as err:  # noqa: BLE001 - any failure means not ready
            return _error_response(ApiError("not_ready", f"model deployments are not ready ({type(err).__name__})", 1))
        return JSONResponse({"status": "ready", "mode": self.cfg.mode, "auth": self.cfg.auth_mode()})

    @api.post(
        "/v1/soundtracks",
        openapi_extra=body_schema(),
        responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}}, **ERROR_RESPONSES},
        summary="Write a soundtrack for a video",
    )
    async def soundtracks(self, request: Request) -> Response:
        return await self._serve(request, "/v1/soundtracks", force_stream=False)

    @api.post(
        "/v1/soundtracks:stream",
        openapi_extra=body_schema(),
        responses={200: {"content": {"audio/wav": {}}}, **ERROR_RESPONSES},
        summary="Write a soundtrack, streamed as a WAV while it is generated",
    )
    async def soundtracks_stream(self, request: Request) -> Response:
        return await self._serve(request, "/v1/soundtracks:stream", force_stream=True)

    # ---- one request ----------------------------------------------------------------------------------

    async def _serve(self, request: Request, route: str, force_stream: bool) -> Response:
        try:
            self._authorize(request)
            ticket = self.admission.admit(route)
        except ApiError as err:
            self.admission.refuse(route, err)
            return _error_response(err)
        streaming = False
        try:
            deadline = ticket.started + self.cfg.limits.request_timeout_s
            with tempfile.TemporaryDirectory(prefix="videorobin-") as tmp:
                inputs = await _before(deadline, read_inputs(request, tmp, self.cfg), "reading the upload")
                options = inputs.options
                stream = options.stream or force_stream
                if stream and options.format != "wav":
                    raise ApiError("invalid_parameter", "a streamed soundtrack is a WAV: format must be wav")
                prepared = await _before(deadline, self._prepare(inputs), "probing the video")
                job = await self._start(prepared, deadline)
                if stream:
                    streaming = True
                    return CountedStream(ticket, self._stream_wav(job, ticket, deadline), media_type="audio/wav")
                audio = await self._whole_clip(job, deadline)
                self._observe_generation(job, ticket.started)
                data = await asyncio.to_thread(self._encode, audio, options.format, inputs.video, tmp)
            ticket.status = 200
            return Response(data, media_type=MEDIA_TYPES[options.format])
        except ApiError as err:
            ticket.fail(err)
            return _error_response(err)
        except Exception as err:  # noqa: BLE001 - a JSON 500, never a traceback on the wire
            log.exception("request failed")
            error = ApiError("internal_error", f"internal error ({type(err).__name__})")
            ticket.fail(error)
            return _error_response(error)
        finally:
            if not streaming:
                ticket.release()

    def _authorize(self, request: Request) -> None:
        token = self.cfg.auth_token
        if not token:
            return
        given = request.headers.get("authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())):
            raise ApiError("unauthorized", "send `Authorization: Bearer <token>`")

    def _observe_generation(self, job: Job, started: float) -> None:
        self.metrics["rtf"].observe((time.monotonic() - started) / job.info.duration_s)

    # ---- reading and checking the input ---------------------------------------------------------------

    def _params(self, options: SoundtrackOptions) -> GenerationParams:
        limits = self.cfg.limits
        checks = [
            ("steps", options.steps, *limits.steps),
            ("guidance", options.guidance, *limits.guidance),
            ("seed", options.seed, 0, 2**63 - 1),
            ("align_cuts", options.align_cuts, 1, limits.max_align_cuts),
        ]
        for field, value, lo, hi in checks:
            if value is not None and not lo <= value <= hi:
                raise ApiError("invalid_parameter", f"{field} must be in [{lo}, {hi}] (got {value})")
        if options.duration is not None and not 0 < options.duration <= limits.max_video_s:
            raise ApiError("invalid_parameter", f"duration must be in (0, {limits.max_video_s:g}] s")
        return GenerationParams(options.seed, options.duration, options.steps, options.guidance, options.solver)

    async def _prepare(self, inputs: Inputs) -> tuple[GenerationSpec, np.ndarray]:
        """Check the video and the audio prompt against the limits: the spec the engine's replica runs, and
        the audio the soundtrack opens with."""
        options, name, limits = inputs.options, inputs.name, self.cfg.limits
        params = self._params(options)
        self._tokenize(options.prompt)
        try:
            info = await asyncio.to_thread(probe_video, inputs.video)
        except MediaError as err:
            raise media_error(err, name) from None
        if info.width * info.height > limits.max_frame_pixels:
            raise ApiError(
                "frame_too_large", f"{name}: {info.width}x{info.height} frames exceed {limits.max_frame_pixels} pixels"
            )
        if info.duration_s > limits.max_video_s:
            raise ApiError("video_too_long", f"{name}: {info.duration_s:.1f} s; the limit is {limits.max_video_s:g} s")
        try:
            resolve_duration(params, info.duration_s, limits.max_video_s)
        except ValueError as err:
            raise ApiError("video_too_long", str(err)) from None
        prompt, lead = await self._audio_prompt(inputs)
        with open(inputs.video, "rb") as f:
            video = await asyncio.to_thread(f.read)
        spec = GenerationSpec(
            uuid.uuid4().hex, options.prompt, params, video, info.duration_s, prompt, options.align_cuts
        )
        return spec, lead

    async def _audio_prompt(self, inputs: Inputs) -> tuple[AudioPrompt | None, np.ndarray]:
        """The audio prompt's tail (what the engine reads) and the audio the soundtrack opens with."""
        options, vae = inputs.options, self.model_cfg.vae
        empty = np.zeros((vae.audio_channels, 0), np.float32)
        if inputs.audio is None:
            if options.include_prompt or options.from_s is not None:
                raise ApiError("invalid_parameter", "include_prompt and from need an `audio` prompt")
            return None, empty
        if options.include_prompt and options.from_s is not None:
            raise ApiError("invalid_parameter", "from already returns the whole track: drop include_prompt")
        limit = self.cfg.limits.max_audio_s
        try:
            audio = await asyncio.to_thread(read_audio, inputs.audio, vae.sample_rate, vae.audio_channels, limit)
            prompt = AudioPrompt(audio, vae.sample_rate, options.from_s)
        except MediaError as err:
            raise media_error(err, inputs.audio_name) from None
        except ValueError as err:
            raise ApiError("invalid_parameter", str(err)) from None
        lead = prompt.output_lead(options.include_prompt, samples_per_patch(self.model_cfg))
        return prompt_tail(self.model_cfg, prompt), lead

    def _tokenize(self, prompt: str | None):
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

    async def _start(self, prepared: tuple[GenerationSpec, np.ndarray], deadline: float) -> Job:
        """Send the spec to the Planner and wait for the request as the engine built it."""
        spec, lead = prepared
        latents = self.planner.generate.remote(spec)
        try:
            info = await _before(deadline, latents.__anext__())
        except BaseException as err:
            latents.cancel()
            if (error := self._deployment_error(err)) is not None:
                raise error from None
            if isinstance(err, ValueError):
                raise ApiError("invalid_parameter", str(getattr(err, "cause", err))) from None
            raise
        return Job(spec, info, latents, lead, self.model_cfg.vae.sample_rate)

    def _deployment_error(self, err: BaseException) -> ApiError | None:
        """What a failure inside a model deployment means to the client, if it is one we know."""
        if isinstance(err, MediaError):
            return media_error(getattr(err, "cause", err), "video")
        if isinstance(err, ModelUnavailable | PlannerBroken | RayActorError | ActorUnavailableError):
            return ApiError("unavailable", f"a model deployment is unavailable ({type(err).__name__})", 5)
        if isinstance(err, BackPressureError):
            return ApiError("overloaded", "the planners' queues are full", self.cfg.limits.retry_after_s)
        return None

    async def _audio_chunks(self, job: Job, deadline: float) -> AsyncIterator[np.ndarray]:
        """(C, S) audio as each decode window's latents are complete: the streaming decode, equal to the
        whole-clip decode because the windows are the same ones `AudioAutoencoder.decode` uses. An audio
        prompt's last patches are decoded first and their audio dropped, so the new music joins it."""
        clip, ready = job.info.decoder(self.model_cfg)
        if job.lead.shape[1]:
            yield job.lead
        try:
            while True:
                for window, latents in ready:
                    yield clip.emit(window, await _before(deadline, self.decoder.decode.remote(latents, window)))
                if clip.done:
                    break
                ready = clip.add(await _before(deadline, job.latents.__anext__()))
        except Exception as err:
            if (error := self._deployment_error(err)) is not None:
                raise error from None
            raise
        finally:
            job.latents.cancel()

    async def _whole_clip(self, job: Job, deadline: float) -> np.ndarray:
        return np.concatenate([a async for a in self._audio_chunks(job, deadline)], axis=1)

    async def _stream_wav(self, job: Job, ticket: Ticket, deadline: float) -> AsyncIterator[bytes]:
        rate, channels = self.model_cfg.vae.sample_rate, self.model_cfg.vae.audio_channels
        yield wav_header(job.samples, channels, rate)
        first = True
        async for audio in self._audio_chunks(job, deadline):
            if first:
                self.metrics["first_audio"].observe(time.monotonic() - ticket.started)
                first = False
            yield pcm16(audio)
        self._observe_generation(job, ticket.started)

    def _encode(self, audio: np.ndarray, fmt: str, video: str, tmp: str) -> bytes:
        rate = self.model_cfg.vae.sample_rate
        if fmt != "mp4":
            return encode_audio(audio, rate, fmt)
        out = os.path.join(tmp, "out.mp4")
        mux(video, audio, rate, out)
        with open(out, "rb") as f:
            return f.read()
