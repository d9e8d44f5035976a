"""The API's errors: a stable `code`, a human message and an HTTP status; never a traceback."""

from __future__ import annotations

from model.media import MediaError

CODES = {
    "unauthorized": 401,  # missing or wrong bearer token
    "invalid_request": 400,  # a body that is not the documented multipart form or JSON
    "invalid_parameter": 422,  # a field out of range or of the wrong type
    "prompt_too_long": 422,
    "video_too_long": 422,
    "audio_too_long": 422,  # an audio prompt over limits.max_audio_s
    "frame_too_large": 422,
    "uri_not_allowed": 400,  # video_uri outside the allowed prefixes, or a private/loopback address
    "video_not_found": 400,
    "audio_not_found": 400,
    "payload_too_large": 413,
    "unsupported_media_type": 415,  # not a video we can read (text, audio-only, corrupt container)
    "empty_video": 400,  # no bytes, no duration or no frames
    "invalid_video": 400,  # opens, but its frames cannot be decoded
    "not_found": 404,
    "method_not_allowed": 405,
    "overloaded": 503,  # queues full: retry after Retry-After seconds
    "unavailable": 503,  # a model deployment is down and did not come back in time
    "timeout": 504,
    "not_ready": 503,
    "internal_error": 500,
}


class ApiError(Exception):
    def __init__(self, code: str, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, " ".join(message.split()), CODES[code]
        self.retry_after_s = retry_after_s

    def body(self) -> dict:
        return {"code": self.code, "message": self.message}

    def headers(self) -> dict:
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s else {}


MEDIA_CODES = {
    "unreadable": "unsupported_media_type",
    "empty": "empty_video",
    "undecodable": "invalid_video",
    "too_long": "audio_too_long",
}


def media_error(err: MediaError, name: str) -> ApiError:
    """A MediaError as the API reports it, naming the upload rather than a server-side temp path."""
    reason = str(err).split(": ", 1)[-1]
    return ApiError(MEDIA_CODES.get(err.kind, "unsupported_media_type"), f"{name}: {reason}")
