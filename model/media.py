"""Video and audio files: probe, sample frames, write WAV/FLAC, mux music into a video (PyAV, soundfile).

Every failure on user input is a `MediaError` whose message is one line a person can act on. Outputs are
written under a temporary name and moved into place.
"""

from __future__ import annotations

import io
import math
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import soundfile as sf

from model.errors import MediaError
from model.io import local_copy, temp_sibling, write_bytes_atomic


@dataclass(frozen=True)
class VideoInfo:
    duration_s: float
    width: int
    height: int
    fps: float


def _open(path: str, what: str = "video"):
    if not os.path.exists(path):
        raise MediaError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise MediaError(f"{path}: file is empty", "empty")
    try:
        return av.open(path)
    except av.error.FFmpegError as err:
        raise MediaError(f"{path}: not a readable {what} ({err.strerror or type(err).__name__})") from None


# ffmpeg renders text files as "video" (its tty demuxer); such input is a mistake, not a video.
TEXT_AS_VIDEO_CODECS = {"ansi", "bintext", "xbin", "idf", "tty"}


def _video_stream(container, path: str):
    if not container.streams:
        raise MediaError(f"{path}: contains no media (a zero-length video?)", "empty")
    if not container.streams.video:
        raise MediaError(f"{path}: has no video stream")
    stream = container.streams.video[0]
    if stream.codec_context.name in TEXT_AS_VIDEO_CODECS:
        raise MediaError(f"{path}: not a readable video (it is a text file)")
    return stream


def probe_video(path: str) -> VideoInfo:
    """Duration and geometry of the first video stream; decodes frames only if the header has no duration."""
    with _open(path) as container:
        stream = _video_stream(container, path)
        if _is_image_demuxer(container.format.name):
            raise MediaError(f"{path}: a still image ({container.format.name}), not a video", "unreadable")
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        if not duration or duration <= 0:
            duration = _decoded_duration(container, stream, path, fps)
        if duration <= 0:
            raise MediaError(f"{path}: video has zero length", "empty")
        return VideoInfo(
            duration_s=duration, width=stream.codec_context.width, height=stream.codec_context.height, fps=fps
        )


def _decoded_duration(container, stream, path: str, fps: float) -> float:
    last, count = None, 0
    try:
        for frame in container.decode(stream):
            last, count = frame.time, count + 1
    except av.error.FFmpegError as err:
        raise MediaError(
            f"{path}: video cannot be decoded ({err.strerror or type(err).__name__})", "undecodable"
        ) from None
    if count == 0:
        raise MediaError(f"{path}: video has no frames", "empty")
    if count == 1:  # e.g. a one-frame GIF: a picture, with no length of its own to score
        raise MediaError(f"{path}: a still image (one frame, no duration), not a video", "unreadable")
    return (last or 0.0) + 1.0 / fps


def _is_image_demuxer(name: str) -> bool:
    """ffmpeg's demuxers for single pictures (png_pipe, jpeg_pipe, webp_pipe, image2, ...)."""
    return any(n.endswith("_pipe") or n in ("image2", "image2pipe") for n in name.split(","))


def sample_frames(
    path: str, fps: float, size: int, duration_s: float, max_frames: int, start_s: float = 0.0
) -> np.ndarray:
    """The frames on screen at t = start + k / fps for k < ceil(duration x fps), CLIP-style resized and
    centre-cropped.

    Frames are decoded in order (from the keyframe before `start_s`) and only the sampled ones are
    converted, so memory holds one window's samples, never the whole video.

    Returns:
        (F, size, size, 3) uint8 RGB.
    """
    count = min(max_frames, max(1, math.ceil(round(duration_s * fps, 6))))
    targets = [start_s + k / fps for k in range(count)]
    picked: list[np.ndarray] = []
    with _open(path) as container:
        stream = _video_stream(container, path)
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        previous = None
        try:
            if start_s > 0:  # a later window of a long video: from the keyframe before it, not from the top
                container.seek(int((start + start_s) / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                t = (frame.time or 0.0) - start
                while len(picked) < count and t > targets[len(picked)] + 1e-6 and previous is not None:
                    picked.append(_crop(previous, size))
                previous = frame
                if len(picked) == count:
                    break
        except av.error.FFmpegError as err:
            raise MediaError(
                f"{path}: video cannot be decoded ({err.strerror or type(err).__name__})", "undecodable"
            ) from None
    if previous is None:
        raise MediaError(f"{path}: video has no frames", "empty")
    while len(picked) < count:  # the last frame stays on screen until the end
        picked.append(_crop(previous, size))
    return np.stack(picked)


def _crop(frame, size: int) -> np.ndarray:
    scale = size / min(frame.width, frame.height)
    w, h = max(size, round(frame.width * scale)), max(size, round(frame.height * scale))
    rgb = frame.to_ndarray(format="rgb24", width=w, height=h, interpolation="BICUBIC")
    top, left = (h - size) // 2, (w - size) // 2
    return rgb[top : top + size, left : left + size]


def wav_header(frames: int, channels: int, sample_rate: int) -> bytes:
    """The 44-byte header of a 16-bit PCM WAV holding `frames` samples per channel.

    Known up front from the requested duration, so a streamed WAV is byte-identical to the whole file."""
    data = frames * channels * 2
    fmt = struct.pack("<HHIIHH", 1, channels, sample_rate, sample_rate * channels * 2, channels * 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data)
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", data)
    )


def pcm16(audio: np.ndarray) -> bytes:
    """(C, S) float audio in [-1, 1] -> interleaved little-endian 16-bit samples."""
    return np.round(np.clip(audio, -1, 1).T * 32767).astype("<i2").tobytes()


def encode_audio(audio: np.ndarray, sample_rate: int, fmt: str = "wav") -> bytes:
    """(C, S) float audio in [-1, 1] -> WAV (16-bit PCM) or FLAC bytes."""
    if fmt not in ("wav", "flac"):
        raise MediaError(f"unsupported audio format {fmt!r} (wav or flac)")
    if fmt == "wav":
        return wav_header(audio.shape[1], audio.shape[0], sample_rate) + pcm16(audio)
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1, 1).T, sample_rate, format=fmt.upper(), subtype="PCM_16")
    return buf.getvalue()


def write_audio(uri: str, audio: np.ndarray, sample_rate: int, fmt: str = "wav") -> None:
    write_bytes_atomic(uri, encode_audio(audio, sample_rate, fmt))


def write_audio_stream(
    path: str, chunks: Iterable[np.ndarray], frames: int, channels: int, sample_rate: int, fmt: str = "wav"
) -> None:
    """Write (C, S) chunks as they come to a local file of `frames` samples per channel, under a temporary
    name moved into place at the end: memory holds one chunk, and a failure leaves nothing under `path`.
    A WAV is byte-identical to `encode_audio` of the whole clip (and to the server's streamed WAV)."""
    if fmt not in ("wav", "flac"):
        raise MediaError(f"unsupported audio format {fmt!r} (wav or flac)")
    tmp = _temp_beside(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        if fmt == "wav":
            with open(tmp, "wb") as out:
                out.write(wav_header(frames, channels, sample_rate))
                for chunk in chunks:
                    out.write(pcm16(chunk))
        else:
            with sf.SoundFile(tmp, "w", sample_rate, channels, format="FLAC", subtype="PCM_16") as out:
                for chunk in chunks:
                    out.write(np.clip(chunk, -1, 1).T)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _temp_beside(path: str) -> str:
    """A temporary sibling of `path` with the same container suffix (PyAV picks the format by it)."""
    return temp_sibling(os.path.abspath(path), os.path.splitext(path)[1])


def mux(video_path: str, audio: np.ndarray, sample_rate: int, out_path: str) -> None:
    """Write `out_path`: the video's picture stream copied as is, plus `audio` encoded as AAC."""
    tmp = _temp_beside(out_path)
    try:
        with _open(video_path) as src, av.open(tmp, "w", format="mp4") as dst:
            vin = _video_stream(src, video_path)
            vout = dst.add_stream_from_template(vin)
            aout = dst.add_stream("aac", rate=sample_rate, layout="stereo" if audio.shape[0] == 2 else "mono")
            for packet in src.demux(vin):
                if packet.dts is None:
                    continue
                packet.stream = vout
                dst.mux(packet)
            pcm = np.ascontiguousarray(np.clip(audio, -1, 1).astype(np.float32))
            frame = av.AudioFrame.from_ndarray(pcm, format="fltp", layout=aout.layout.name)
            frame.sample_rate = sample_rate
            frame.pts, frame.time_base = 0, Fraction(1, sample_rate)
            for packet in aout.encode(frame):
                dst.mux(packet)
            for packet in aout.encode(None):
                dst.mux(packet)
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_audio(uri: str, sample_rate: int, channels: int = 2, max_s: float | None = None) -> np.ndarray:
    """Decode any audio file PyAV reads, resampled to `sample_rate`, mono duplicated to stereo. (C, S) float32.
    Refused, before it is all decoded, when longer than `max_s`."""
    with local_copy(uri) as path:
        with _open(path, "audio file") as container:
            if not container.streams.audio:
                raise MediaError(f"{uri}: has no audio stream (not an audio file?)")
            layout = "stereo" if channels == 2 else "mono"
            resampler = av.AudioResampler(format="fltp", layout=layout, rate=sample_rate)
            chunks, samples, limit = [], 0, math.inf if max_s is None else max_s * sample_rate
            try:
                for frame in container.decode(container.streams.audio[0]):
                    for piece in resampler.resample(frame):
                        chunks.append(piece.to_ndarray())
                        samples += chunks[-1].shape[1]
                    if samples > limit:
                        raise MediaError(f"{uri}: audio longer than the limit of {max_s:g} s", "too_long")
            except av.error.FFmpegError as err:
                raise MediaError(f"{uri}: audio cannot be decoded ({err.strerror or type(err).__name__})") from None
            chunks.extend(f.to_ndarray() for f in resampler.resample(None))
    if not chunks:
        raise MediaError(f"{uri}: audio stream has no samples")
    return np.concatenate(chunks, axis=1).astype(np.float32)


def write_sample_video(path: str, duration_s: float, fps: int = 25, size: int = 96, cut_every_s: float = 1.0) -> None:
    """A synthetic H.264 video: a square moving across a background whose colour changes at each cut.

    Used by `videorobin demo` and by the tests; the cuts give the video a visual pace.
    """
    rng = np.random.default_rng(int(duration_s * 1000) + size)
    palette = rng.integers(0, 256, size=(64, 3), dtype=np.uint8)

    def frame(t: float) -> np.ndarray:
        img = np.empty((size, size, 3), dtype=np.uint8)
        img[:] = palette[int(t / cut_every_s) % len(palette)]
        x = int((t % cut_every_s) / cut_every_s * (size - size // 4))
        img[size // 3 : size // 3 + size // 4, x : x + size // 4] = 255 - img[0, 0]
        return img

    _write_h264(path, (frame(i / fps) for i in range(max(1, round(duration_s * fps)))), fps, size)


# Bar colours take one of these levels per channel, each in the middle of a different 16-level histogram bin,
# so two bars never share a bin in any channel, whatever the encoder's rounding.
_BAR_LEVELS = np.array([40, 104, 168, 232], dtype=np.uint8)


def write_beat_video(
    path: str, duration_s: float, beat_s: float, beats_per_bar: int, fps: int = 25, size: int = 64, seed: int = 0
) -> None:
    """A synthetic H.264 video that shows a musical pulse: the background changes colour (a hard cut) on every
    bar line, and a square jumps to a new place on every beat, so the frames alone give the tempo and where
    the downbeats fall. Frames sit at t = i / fps; a change shows on the first frame at or after its time.

    The square keeps its area, so a beat moves no colour-histogram mass and only bar lines read as cuts.
    """
    rng = np.random.default_rng(seed)
    bar_s = beat_s * beats_per_bar
    bars = math.ceil(duration_s / bar_s) + 1
    levels = [rng.integers(0, len(_BAR_LEVELS), 3)]
    for _ in range(bars - 1):  # each channel moves to another level at every bar line
        levels.append((levels[-1] + rng.integers(1, len(_BAR_LEVELS), 3)) % len(_BAR_LEVELS))
    colours = _BAR_LEVELS[np.array(levels)]
    side = size // 4
    cells = [(y, x) for y in range(0, size - side + 1, side) for x in range(0, size - side + 1, side)]
    spots = [cells[0]]
    for _ in range(bars * beats_per_bar):  # a new cell on every beat
        spots.append(cells[(cells.index(spots[-1]) + int(rng.integers(1, len(cells)))) % len(cells)])

    def frame(t: float) -> np.ndarray:
        bar, beat = int(t / bar_s + 1e-9), int(t / beat_s + 1e-9)
        img = np.empty((size, size, 3), dtype=np.uint8)
        img[:] = colours[bar]
        y, x = spots[beat]
        img[y : y + side, x : x + side] = 255 - colours[bar]
        return img

    _write_h264(path, (frame(i / fps) for i in range(max(1, round(duration_s * fps)))), fps, size)


def _write_h264(path: str, frames, fps: int, size: int) -> None:
    """Encode (size, size, 3) uint8 RGB frames at `fps` to an H.264 mp4, under a temporary name then moved."""
    tmp = _temp_beside(path)
    try:
        with av.open(tmp, "w") as out:
            stream = out.add_stream("libx264", rate=fps)
            stream.width = stream.height = size
            stream.pix_fmt = "yuv420p"
            for img in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
