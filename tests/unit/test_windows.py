"""Windowed generation (model/engine/windows.py): clips longer than a training window, audio prompts."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from model.build import build_bundle
from model.config import load_config
from model.engine import Engine, GenerationParams
from model.engine.reference import generate_by_recompute
from model.engine.request import AudioPrompt
from model.engine.windows import FeatureFrames, VideoFrames, window_frames, windows_of

# 0.8 s windows (5 patches) opening with 0.32 s (2 patches) of context: many windows in little time.
SHORT_WINDOWS = ["window.window_s=0.8", "window.context_s=0.32"]


@pytest.fixture(scope="module")
def windowed():
    bundle = build_bundle(load_config("tiny", SHORT_WINDOWS), seed=0)
    torch.nn.init.normal_(bundle.model.audio_start, std=1.0)  # a plan that depends on the prefix
    return bundle


def _request(engine, seconds, seed, rid, frames=True):
    feats = torch.randn(
        int(seconds * 5) + 1, engine.cfg.vision.feature_dim, generator=torch.Generator().manual_seed(seed)
    )
    return engine.make_request(
        prompt="slow strings",
        frames=feats if frames else None,
        params=GenerationParams(seed=seed, duration_s=seconds, steps=3),
        request_id=rid,
    )


def test_windows_cover_every_patch_once_and_open_with_context(windowed):
    cfg = windowed.config
    assert (cfg.window_patches, cfg.context_patches) == (5, 2)
    ws = windows_of(cfg, first_patch=0, n_patches=12, prompt_patches=0)
    assert [(w.start, w.context, w.new) for w in ws] == [(0, 0, 5), (3, 2, 3), (6, 2, 3), (9, 2, 1)]
    assert sum(w.new for w in ws) == 12
    after_prompt = windows_of(cfg, first_patch=7, n_patches=4, prompt_patches=9)
    assert [(w.start, w.context, w.new) for w in after_prompt] == [(5, 2, 3), (8, 2, 1)]


def test_frames_of_a_window_are_the_ones_on_screen_with_times_from_its_start(windowed):
    cfg = windowed.config  # 5 fps, 0.16 s patches
    features = torch.arange(20.0)[:, None].expand(20, cfg.vision.feature_dim)
    frames, offset = window_frames(cfg, FeatureFrames(features), windows_of(cfg, 0, 12, 0)[1], duration_s=4.0)
    # window 1 spans patches 3..7 = [0.48 s, 1.28 s): frames 3..6 (0.6 .. 1.2 s), the first 0.12 s in
    assert frames[:, 0].tolist() == [3.0, 4.0, 5.0, 6.0] and offset == pytest.approx(0.12)


def test_cached_windowed_generation_equals_recompute_for_long_and_short_batched_together(windowed):
    engine = Engine(windowed, max_batch=3)
    requests = [_request(engine, 2.5, 1, "long"), _request(engine, 0.5, 2, "short"), _request(engine, 1.3, 3, "mid")]
    assert [len(engine.plan_windows(r)) for r in requests] == [5, 1, 3]
    together = engine.generate_latents(requests)
    for r in requests:
        reference = generate_by_recompute(windowed.model, r)
        assert torch.allclose(together[r.request_id], reference, atol=1e-4), r.request_id
        alone = Engine(windowed, max_batch=1).generate_latents([r])[r.request_id]
        assert torch.allclose(together[r.request_id], alone, atol=1e-5), r.request_id


def test_windowing_is_not_engaged_where_one_window_fits():
    """A clip no longer than a window is written exactly as an engine with long windows writes it."""
    short = Engine(build_bundle(load_config("tiny", SHORT_WINDOWS), seed=0))
    long = Engine(build_bundle(load_config("tiny"), seed=0))
    a = short.generate_latents([_request(short, 0.8, 4, "x")])["x"]
    b = long.generate_latents([_request(long, 0.8, 4, "x")])["x"]
    assert torch.equal(a, b)


def test_cache_memory_does_not_grow_with_the_longest_allowed_clip(windowed):
    small, huge = Engine(windowed, max_duration_s=60), Engine(windowed, max_duration_s=4 * 3600)
    assert small.runner.caches.semantic_lm.k.shape == huge.runner.caches.semantic_lm.k.shape
    assert huge.make_request(params=GenerationParams(duration_s=3 * 3600)).n_patches == 67500


def test_a_video_is_read_window_by_window(windowed, videos):
    engine = Engine(windowed)
    request = engine.make_request(video=videos["long"], params=GenerationParams(steps=2, seed=3))
    assert isinstance(request.frames, VideoFrames)
    reads = []
    original = request.frames.features
    request.frames.features = lambda first, count: reads.append((first, count)) or original(first, count)
    (result,) = engine.generate([request])
    assert result.audio.shape[1] == round(request.duration_s * 48000)
    assert len(reads) == len(engine.plan_windows(request)) > 3 and max(c for _, c in reads) <= 5
    whole = torch.cat([original(0, 18)])  # the same frames read at once: same music
    again = engine.generate_latents([engine.make_request(frames=whole, params=request.params, video_duration_s=3.4)])
    assert torch.allclose(next(iter(again.values())), engine.generate_latents([request])[request.request_id], atol=1e-4)


def _tone(seconds, rate=48000, freq=330.0):
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.3 * np.sin(2 * np.pi * freq * t)] * 2).astype(np.float32)


def test_continuation_opens_with_the_prompts_last_patches_and_equals_recompute(windowed):
    engine = Engine(windowed, max_batch=2)
    prompt = AudioPrompt(_tone(1.0), 48000)
    request = engine.make_request(
        prompt="more", params=GenerationParams(seed=9, duration_s=1.2, steps=3), audio_prompt=prompt
    )
    assert request.first_patch == 0 and request.context.shape == (2, 4, 16)  # 2 context patches
    assert engine.plan_windows(request)[0].context == 2
    out = engine.generate_latents([request])[request.request_id]
    assert torch.allclose(out, generate_by_recompute(windowed.model, request), atol=1e-4)
    plain = engine.make_request(prompt="more", params=request.params, request_id="plain")
    assert not torch.allclose(out, engine.generate_latents([plain])["plain"], atol=1e-3)


def test_from_keeps_the_track_on_the_patch_grid_and_writes_to_its_end(windowed):
    engine = Engine(windowed)
    track = AudioPrompt(_tone(3.0), 48000, from_s=1.0)
    request = engine.make_request(params=GenerationParams(steps=2), audio_prompt=track)
    assert request.first_patch == 6  # 1.0 s -> 6 whole patches of 0.16 s = 0.96 s
    assert request.duration_s == pytest.approx(3.0 - 0.96)
    (result,) = engine.generate([request])
    assert result.audio.shape[1] == round(request.duration_s * 48000)
    assert np.abs(result.audio[:, :480]).max() > 0  # no silent gap where the new music joins


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: AudioPrompt(_tone(2.0), 48000, from_s=2.5), "outside the track"),
        (lambda: AudioPrompt(_tone(0.05), 48000), "shorter than one patch"),
    ],
)
def test_bad_audio_prompts_are_refused(windowed, make, message):
    engine = Engine(windowed)
    with pytest.raises(ValueError, match=message):
        engine.make_request(params=GenerationParams(duration_s=1.0), audio_prompt=make())


def test_align_cuts_keeps_the_chosen_candidate_of_each_window(windowed):
    from model.engine.align import candidate_seed, stream_aligned

    engine = Engine(windowed, max_batch=3)
    request = _request(engine, 2.5, 21, "a")
    plain = engine.generate_latents([request])["a"]
    calls = []

    def pick(k):
        def choose(start_s, audio, rate):
            calls.append((round(start_s, 2), len(audio), audio[0].shape[1]))
            return k

        return choose

    first = torch.cat([o.patch for o in stream_aligned(engine, request, 3, pick(0))])
    assert torch.allclose(first, plain, atol=1e-5)  # candidate 0 is the plain result
    assert [c[0] for c in calls] == [0.0, 0.8, 1.28, 1.76, 2.24] and {c[1] for c in calls} == {3}
    assert calls[0][2] == 5 * 7680 and calls[1][2] == 3 * 7680  # each candidate's new audio only
    second = torch.cat([o.patch for o in stream_aligned(engine, request, 3, pick(2))])
    other = replace(request, params=replace(request.params, seed=candidate_seed(21, 2)), request_id="b")
    assert torch.allclose(second[: 5 * 4], engine.generate_latents([other])["b"][: 5 * 4], atol=1e-5)
    assert not torch.allclose(second, plain, atol=1e-3)
    with pytest.raises(ValueError, match="align_cuts"):
        next(stream_aligned(engine, request, 17, pick(0)))
