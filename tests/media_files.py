"""Inputs made for real: bad videos (empty, text, truncated, audio only, no frames, still images), a dataset with a
corrupt row."""

from __future__ import annotations

import json

import av
import numpy as np
from PIL import Image

from jobs.dataset import make_dataset


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
        for name in (
            "empty.mp4",
            "notes.txt",
            "truncated.mp4",
            "audio_only.m4a",
            "no_frames.mp4",
            "still.png",
            "still.gif",
        )
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
    picture = Image.fromarray(np.full((48, 64, 3), 180, np.uint8))
    picture.save(paths["still.png"])
    picture.save(paths["still.gif"])  # a one-frame GIF: a picture in a container that can also hold a video
    return paths


def dataset_with_corrupt_row(root, clips: int, seconds: float) -> list[dict]:
    """`make-dataset` rows plus one whose audio file ("broken.wav") is not audio."""
    rows = [json.loads(line) for line in open(make_dataset(str(root / "data"), clips=clips, seconds=seconds))]
    (root / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    return [*rows, {"id": "broken", "audio": str(root / "broken.wav"), "caption": "nothing", "video": None}]


def write_jsonl(path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
