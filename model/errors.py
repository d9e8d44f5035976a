"""The one exception for input a user can fix, as opposed to a bug.

`InputError` says "what you gave me cannot work": a flag, a file, a config value, a prompt too long, a
checkpoint that does not fit. `videorobin` prints it as one line and exits 2; every other exception is a
bug and exits 70 with its traceback saved (see jobs/cli.py). It is a ValueError, so code that catches
ValueError (the Serve ingress, Ray Data workers skipping a clip) keeps catching it.

Internal invariants (a cache overflow the engine should have prevented, a caller passing the wrong shape)
stay plain ValueError / RuntimeError: they are our bugs, not the user's input.
"""

from __future__ import annotations


class InputError(ValueError):
    """Input a user can fix (a flag, a file, a config value), with a one-line reason."""


class MediaError(InputError):
    """A video or audio input that cannot be used, with a one-line reason.

    `kind` says which way it fails, for callers that map it to an error code: "unreadable" (not a media
    file we can open, or no video in it), "empty" (no bytes, no duration or no frames), "undecodable"
    (opens, but its frames cannot be decoded), "too_long" (over a length limit)."""

    def __init__(self, message: str, kind: str = "unreadable") -> None:
        super().__init__(message)
        self.kind = kind
