"""A soundtrack request's input: its fields, the video and the optional audio prompt, from a multipart
upload or a JSON body naming URIs; each refusal is an `ApiError` with a stable code."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from typing import Literal

import fsspec
from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deployments.config import ServeConfig
from deployments.errors import ApiError
from deployments.uris import check_video_uri

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


def _download(uri: str, path: str, limit: int, what: str = "video") -> None:
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
        raise ApiError(f"{what}_not_found", f"{uri}: no such file") from None
    except OSError as err:
        raise ApiError(f"{what}_not_found", f"{uri}: cannot be read ({err})") from None


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
            raise _too_large(length, limits.max_upload_bytes)
        try:
            form = await request.form(max_files=2, max_fields=16)
        except Exception as err:  # noqa: BLE001 - starlette raises several kinds for malformed bodies
            raise ApiError("invalid_request", f"malformed multipart body ({err})") from None
        upload, audio_upload = form.get("video"), form.get("audio")
        if upload is None or isinstance(upload, str):
            raise ApiError("invalid_request", "multipart field `video` (a file) is required")
        if isinstance(audio_upload, str):
            raise ApiError("invalid_request", "multipart field `audio` must be a file")
        fields = {k: v for k, v in form.multi_items() if k not in ("video", "audio")}
        options = _options(SoundtrackOptions, fields)
        await asyncio.to_thread(_copy_capped, upload.file, video, limits.max_upload_bytes)
        inputs = Inputs(options, video, upload.filename or "video")
        if audio_upload is not None:
            await asyncio.to_thread(_copy_capped, audio_upload.file, audio, limits.max_upload_bytes)
            inputs.audio, inputs.audio_name = audio, audio_upload.filename or "audio"
        return inputs
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
        uri = check_video_uri(options.video_uri, cfg.allowed_uri_prefixes)
        await asyncio.to_thread(_download, uri, video, limits.max_upload_bytes)
        inputs = Inputs(options, video, options.video_uri)
        if options.audio_uri is not None:
            uri = check_video_uri(options.audio_uri, cfg.allowed_uri_prefixes, "audio_uri")
            await asyncio.to_thread(_download, uri, audio, limits.max_upload_bytes, "audio")
            inputs.audio, inputs.audio_name = audio, options.audio_uri
        return inputs
    raise ApiError(
        "unsupported_media_type",
        "send multipart/form-data with a `video` file, or application/json with `video_uri`",
    )
