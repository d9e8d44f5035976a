"""A soundtrack request's input: its fields, the video and the optional audio prompt, from a multipart
upload or a JSON body naming URIs; each refusal is an `ApiError` with a stable code."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser

from deployments.config import ServeConfig
from deployments.errors import ApiError
from deployments.uris import check_uri, copy_capped, download, too_large
from model.config import Solver


class SoundtrackOptions(BaseModel):
    """The request's fields (multipart form fields or JSON keys)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None  # creator intent; default: the static video-only prompt
    seed: int = 0
    duration: float | None = None  # seconds of music; default: the video's length
    steps: int | None = None  # LocDiT solver steps per patch; default: the model's
    guidance: float | None = None  # classifier-free guidance scale; default: the model's
    solver: Solver | None = None  # LocDiT ODE solver, euler or midpoint (two evaluations a step); default: the model's
    format: Literal["wav", "flac", "mp4"] = "wav"  # mp4 = the input video with the music muxed in
    stream: bool = False  # stream the audio as a WAV while it is generated (format must be wav)
    include_prompt: bool = False  # start the soundtrack with the audio prompt itself
    from_s: float | None = Field(default=None, alias="from")  # keep the audio (a track) up to here, redo the rest
    align_cuts: int = 1  # candidates per window; the one whose beats fall best on the video's cuts is kept


class SoundtrackJSON(SoundtrackOptions):
    video_uri: str  # fsspec URI under one of the server's allowed prefixes
    audio_uri: str | None = None  # music to continue, under the same prefixes


class SoundtrackForm(SoundtrackOptions):
    video: bytes  # the video file
    audio: bytes | None = None  # music to continue (any format ffmpeg reads; resampled)


def body_schema() -> dict:
    form = SoundtrackForm.model_json_schema()
    for name in ("video", "audio"):
        form["properties"][name] = {"type": "string", "format": "binary"}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": form},
                "application/json": {"schema": SoundtrackJSON.model_json_schema()},
            },
        }
    }


def _options(model: type[SoundtrackOptions], fields: dict) -> SoundtrackOptions:
    try:
        return model.model_validate(fields)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        code = "invalid_request" if first["type"] in ("missing", "extra_forbidden") else "invalid_parameter"
        raise ApiError(code, f"{where}: {first['msg']}") from None


async def _capped_body(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body as it arrives, refused as soon as it passes `limit` bytes (chunked uploads too)."""
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise too_large(received, limit)
        yield chunk


async def _multipart(request: Request, limit: int) -> FormData:
    parser = MultiPartParser(request.headers, _capped_body(request, limit), max_files=2, max_fields=16)
    try:
        return await parser.parse()
    except MultiPartException as err:
        raise ApiError("invalid_request", f"malformed multipart body ({err})") from None


@dataclass
class Inputs:
    options: SoundtrackOptions
    video: str  # local path
    name: str  # how the video is named in messages
    audio: str | None = None  # local path of the audio prompt
    audio_name: str = "audio"


async def read_inputs(request: Request, tmp: str, cfg: ServeConfig) -> Inputs:
    """The request's fields and files, copied under `tmp`, from a multipart upload or a JSON body."""
    ctype = request.headers.get("content-type", "")
    length = int(request.headers.get("content-length") or 0)
    limits = cfg.limits
    video, audio = os.path.join(tmp, "video"), os.path.join(tmp, "audio")
    if ctype.startswith("multipart/form-data"):
        if length > limits.max_upload_bytes:
            raise too_large(length, limits.max_upload_bytes)
        form = await _multipart(request, limits.max_upload_bytes)
        try:
            return await _form_inputs(form, video, audio, limits.max_upload_bytes)
        finally:
            await form.close()
    if ctype.startswith("application/json"):
        return await _json_inputs(request, video, audio, cfg)
    raise ApiError(
        "unsupported_media_type",
        "send multipart/form-data with a `video` file, or application/json with `video_uri`",
    )


async def _form_inputs(form: FormData, video: str, audio: str, limit: int) -> Inputs:
    upload, audio_upload = form.get("video"), form.get("audio")
    if upload is None or isinstance(upload, str):
        raise ApiError("invalid_request", "multipart field `video` (a file) is required")
    if isinstance(audio_upload, str):
        raise ApiError("invalid_request", "multipart field `audio` must be a file")
    fields = {k: v for k, v in form.multi_items() if k not in ("video", "audio")}
    options = _options(SoundtrackOptions, fields)
    await asyncio.to_thread(copy_capped, upload.file, video, limit)
    inputs = Inputs(options, video, upload.filename or "video")
    if audio_upload is not None:
        await asyncio.to_thread(copy_capped, audio_upload.file, audio, limit)
        inputs.audio, inputs.audio_name = audio, audio_upload.filename or "audio"
    return inputs


async def _json_inputs(request: Request, video: str, audio: str, cfg: ServeConfig) -> Inputs:
    limits = cfg.limits
    body = b"".join([chunk async for chunk in _capped_body(request, limits.max_json_bytes)])
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError("invalid_request", f"body is not JSON ({err})") from None
    if not isinstance(data, dict):
        raise ApiError("invalid_request", "the JSON body must be an object")
    options = _options(SoundtrackJSON, data)
    inputs = Inputs(options, video, options.video_uri)
    await asyncio.to_thread(_fetch, options.video_uri, "video_uri", video, cfg)
    if options.audio_uri is not None:
        await asyncio.to_thread(_fetch, options.audio_uri, "audio_uri", audio, cfg)
        inputs.audio, inputs.audio_name = audio, options.audio_uri
    return inputs


def _fetch(uri: str, field: str, path: str, cfg: ServeConfig) -> None:
    """Check (DNS included) and download one URI: blocking, so the handler runs it in a thread."""
    checked = check_uri(uri, cfg.allowed_uri_prefixes, field)
    download(checked, path, cfg.limits.max_upload_bytes, field.removesuffix("_uri"), cfg.limits.request_timeout_s)
