"""Bad inputs made for real: an empty file, a text file, a truncated mp4, audio only, a video with no frames."""

from __future__ import annotations

import av
import numpy as np


def write_no_frames_video(path: str) -> None:
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        out.start_encoding()  # header and trailer, no frames


def write_audio_only(path: str, seconds: float = 1.0) -> None:
    with av.open(path, "w") as out:
        stream = out.add_stream("aac", rate=48000, layout="stereo")
        pcm = np.zeros((2, int(48000 * seconds)), dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(pcm, format="fltp", layout="stereo")
        frame.sample_rate = 48000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)


def write_bad_inputs(root, good_video: str) -> dict[str, str]:
    paths = {
        name: str(root / name)
        for name in ("empty.mp4", "notes.txt", "truncated.mp4", "audio_only.m4a", "no_frames.mp4")
    }
    open(paths["empty.mp4"], "wb").close()
    with open(paths["notes.txt"], "w") as f:
        f.write("this is not a video\n" * 50)
    with open(good_video, "rb") as f:
        data = f.read()
    with open(paths["truncated.mp4"], "wb") as f:
        f.write(data[: len(data) // 5])
    write_audio_only(paths["audio_only.m4a"])
    write_no_frames_video(paths["no_frames.mp4"])
    return paths
