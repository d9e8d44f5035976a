"""Why the default model's vision tower can stay frozen at random: its features already see the video's
rhythm. On a beat video (a cut on every bar, a jump on every beat) sampled at the small preset's 10 fps,
the features move on every beat and only then, and a bar's cut moves them more than a beat's jump."""

import numpy as np
import torch

from model.config import load_config
from model.media import sample_frames, write_beat_video
from model.vision import ClipEncoder


def test_a_frozen_random_tower_sees_every_beat_and_tells_bars_from_beats(tmp_path):
    vision = load_config("small").vision
    torch.manual_seed(0)
    tower = ClipEncoder(vision)
    beat_s, beats_per_bar, seconds = 0.5, 4, 8.0  # 120 BPM in 4/4
    path = str(tmp_path / "beats.mp4")
    write_beat_video(path, seconds, beat_s=beat_s, beats_per_bar=beats_per_bar, seed=3)
    frames = sample_frames(path, vision.fps, vision.frame_size, seconds, vision.max_frames)
    features = tower(frames).numpy()  # (80, feature_dim)
    change = np.linalg.norm(np.diff(features, axis=0), axis=1)  # between frame k and k + 1
    video_fps = 25  # write_beat_video's rate: an event shows on the first video frame at or after it

    def shown(events: np.ndarray) -> np.ndarray:
        """Which sample-to-sample steps (k-1 -> k) include an event's first displayed frame."""
        shown_at = np.ceil(np.round(events * video_fps, 6)) / video_fps
        k = np.arange(1, len(features))
        return np.array(
            [np.any((shown_at > (i - 1) / vision.fps + 1e-9) & (shown_at <= i / vision.fps + 1e-9)) for i in k]
        )

    beats = shown(np.arange(1, seconds / beat_s) * beat_s)
    bars = shown(np.arange(1, seconds / (beat_s * beats_per_bar)) * beat_s * beats_per_bar)
    assert beats.sum() == 15 and bars.sum() == 3
    assert change[~beats].max() < 0.3 * change[beats].min()  # between beats only codec noise moves them
    assert change[bars].mean() > 1.5 * change[beats & ~bars].mean()
