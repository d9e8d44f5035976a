import os

import av
import numpy as np
import pytest
import soundfile as sf

from model.media import MediaError, mux, probe_video, read_audio, sample_frames, write_audio
from tests.media_files import write_bad_inputs


def test_probe_reports_the_video_duration(videos):
    assert abs(probe_video(videos["long"]).duration_s - 3.4) < 0.05
    assert probe_video(videos["mid"]).width == 96


def test_frames_are_sampled_at_the_requested_rate_and_follow_the_cuts(videos):
    frames = sample_frames(videos["short"], fps=5.0, size=32, duration_s=1.0, max_frames=100)
    assert frames.shape == (5, 32, 32, 3) and frames.dtype == np.uint8
    # The sample video changes background colour every 0.5 s: frames at 0.0-0.4 s and 0.6-0.8 s differ.
    corner = frames[:, 1, 1].astype(int)
    assert np.abs(corner[0] - corner[2]).max() < 12
    assert np.abs(corner[0] - corner[3]).max() > 12


def test_frames_can_start_inside_the_video(videos):
    whole = sample_frames(videos["short"], fps=5.0, size=16, duration_s=1.0, max_frames=100)
    late = sample_frames(videos["short"], fps=5.0, size=16, duration_s=0.6, max_frames=100, start_s=0.4)
    assert late.shape[0] == 3 and np.array_equal(late, whole[2:5])


def test_frames_past_the_end_repeat_the_last_frame(videos):
    frames = sample_frames(videos["short"], fps=5.0, size=16, duration_s=2.0, max_frames=100)
    assert frames.shape[0] == 10 and np.array_equal(frames[-1], frames[-3])


@pytest.mark.parametrize(
    "name, message",
    [
        ("empty.mp4", "file is empty"),
        ("notes.txt", "not a readable video"),
        ("audio_only.m4a", "no video stream"),
        ("no_frames.mp4", "no frames|zero length|zero-length"),
        ("missing.mp4", "no such file"),
        ("still.png", "a still image"),
        ("still.gif", "a still image"),
    ],
)
def test_bad_videos_give_one_line_errors(tmp_path, videos, name, message):
    paths = write_bad_inputs(tmp_path, videos["short"])
    with pytest.raises(MediaError, match=message) as err:
        probe_video(paths.get(name, str(tmp_path / name)))
        sample_frames(paths[name], 5.0, 16, 1.0, 10)
    assert "\n" not in str(err.value)


def test_truncated_video_fails_cleanly_or_yields_its_readable_part(tmp_path, videos):
    paths = write_bad_inputs(tmp_path, videos["long"])
    try:
        info = probe_video(paths["truncated.mp4"])
        frames = sample_frames(paths["truncated.mp4"], 5.0, 16, info.duration_s, 100)
        assert frames.shape[1:] == (16, 16, 3)
    except MediaError as err:
        assert "\n" not in str(err)


def test_mux_writes_video_and_audio_streams(tmp_path, videos):
    audio = (0.1 * np.sin(np.linspace(0, 2000, 48000 * 2))[None].repeat(2, 0)).astype(np.float32)
    out = str(tmp_path / "muxed.mp4")
    mux(videos["mid"], audio, 48000, out)
    with av.open(out) as c:
        assert {s.type for s in c.streams} == {"video", "audio"}
        assert c.streams.audio[0].sample_rate == 48000 and c.streams.audio[0].channels == 2
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]


def test_written_audio_reads_back(tmp_path):
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 4800)).astype(np.float32)
    for fmt in ("wav", "flac"):
        path = str(tmp_path / f"a.{fmt}")
        write_audio(path, audio, 48000, fmt)
        data, sr = sf.read(path, always_2d=True)
        assert sr == 48000 and data.shape == (4800, 2)
        assert np.abs(data.T - audio).max() < 1e-4
        assert np.abs(read_audio(path, 48000) - audio).max() < 1e-3
