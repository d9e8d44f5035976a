import numpy as np
import pytest
import torch

from model.engine import Engine, GenerationParams
from model.engine.reference import generate_by_recompute
from model.engine.windows import window_frames


def _requests(engine, feature_dim):
    """Three requests of different lengths; the second takes midpoint steps, the others the model's Euler."""
    spec = [
        ("lo-fi piano, 90 BPM", 3, 0.5, 11, None),
        ("", 8, 1.3, 12, "midpoint"),
        ("strings build at the end", 5, 0.9, 13, None),
    ]
    return [
        engine.make_request(
            prompt=p,
            frames=torch.randn(f, feature_dim, generator=torch.Generator().manual_seed(s)),
            params=GenerationParams(seed=s, duration_s=d, solver=solver),
            request_id=f"r{i}",
        )
        for i, (p, f, d, s, solver) in enumerate(spec)
    ]


def test_cached_batched_generation_equals_naive_recompute(tiny_bundle, tiny_cfg):
    engine = Engine(tiny_bundle, max_batch=3)
    requests = _requests(engine, tiny_cfg.vision.feature_dim)
    assert len({r.n_patches for r in requests}) == 3
    out = engine.generate_latents(requests)
    for r in requests:
        reference = generate_by_recompute(tiny_bundle.model, r)
        assert out[r.request_id].shape == (r.n_patches * tiny_cfg.patch_size, tiny_cfg.latent_dim)
        assert torch.allclose(out[r.request_id], reference, atol=1e-4), (out[r.request_id] - reference).abs().max()


def test_with_a_shared_time_coordinate_the_cache_still_equals_recompute_and_time_matters():
    """`time_embedding` (model/timing.py): frames and audio positions carry their time; the cached step must
    add the same times the whole-sequence path adds, and a fresh embedding must leave the model as it was."""
    from model.build import build_bundle
    from model.config import load_config

    bundle = build_bundle(load_config("tiny", ["time_embedding=true"]), seed=0)
    torch.nn.init.normal_(bundle.model.timing.proj.weight, std=0.5)  # starts at zero: give it a say
    engine = Engine(bundle, max_batch=3)
    requests = _requests(engine, bundle.config.vision.feature_dim)
    out = engine.generate_latents(requests)
    for r in requests:
        reference = generate_by_recompute(bundle.model, r)
        assert torch.allclose(out[r.request_id], reference, atol=1e-4), (out[r.request_id] - reference).abs().max()
    fresh = build_bundle(load_config("tiny", ["time_embedding=true"]), seed=0)  # its time map starts at zero
    out_fresh = Engine(fresh, max_batch=3).generate_latents(_requests(engine, bundle.config.vision.feature_dim))
    out_plain = Engine(build_bundle(load_config("tiny"), seed=0), max_batch=3).generate_latents(
        _requests(engine, bundle.config.vision.feature_dim)
    )
    for rid, latents in out_plain.items():  # a new time embedding changes nothing until it is trained
        assert torch.equal(out_fresh[rid], latents)
        assert not torch.allclose(out[rid], latents, atol=1e-3)


def test_same_seed_same_output_alone_or_in_a_batch(tiny_bundle, tiny_cfg):
    batched = Engine(tiny_bundle, max_batch=3)
    requests = _requests(batched, tiny_cfg.vision.feature_dim)
    together = batched.generate_latents(requests)
    for r in requests:
        alone = Engine(tiny_bundle, max_batch=1).generate_latents([r])[r.request_id]
        assert torch.allclose(alone, together[r.request_id], atol=1e-5)
    again = Engine(tiny_bundle, max_batch=3).generate_latents(requests)
    assert all(torch.equal(again[k], together[k]) for k in together)


def test_a_different_seed_gives_different_music(tiny_bundle):
    engine = Engine(tiny_bundle, max_batch=2)
    a = engine.make_request(params=GenerationParams(seed=1, duration_s=0.5), request_id="a")
    b = engine.make_request(params=GenerationParams(seed=2, duration_s=0.5), request_id="b")
    out = engine.generate_latents([a, b])
    assert not torch.allclose(out["a"], out["b"], atol=1e-3)


def test_requests_join_and_leave_between_steps(tiny_bundle, tiny_cfg):
    """More requests than rows, and one arriving mid-flight: all equal their solo runs."""
    engine = Engine(tiny_bundle, max_batch=2)
    requests = _requests(engine, tiny_cfg.vision.feature_dim)
    engine.add(requests[0])
    engine.add(requests[1])
    patches = {r.request_id: [] for r in requests}
    steps = 0
    while engine.scheduler.has_work():
        if steps == 2:
            engine.add(requests[2])  # waits for a free row
        for out in engine.step():
            patches[out.request_id].append(out.patch)
        assert len(engine.scheduler.running) <= 2
        steps += 1
    for r in requests:
        assert len(patches[r.request_id]) == r.n_patches
        alone = Engine(tiny_bundle, max_batch=1).generate_latents([r])[r.request_id]
        assert torch.allclose(torch.cat(patches[r.request_id]), alone, atol=1e-5)


def test_finished_rows_stop_costing_compute(tiny_bundle, tiny_cfg):
    engine = Engine(tiny_bundle, max_batch=3)
    requests = _requests(engine, tiny_cfg.vision.feature_dim)
    for r in requests:
        engine.add(r)
    sizes = []
    while engine.scheduler.has_work():
        sizes.append(len(engine.step()))
    shortest, longest = sorted(r.n_patches for r in requests)[0], max(r.n_patches for r in requests)
    assert sizes[:shortest] == [3] * shortest and sizes[-1] == 1 and len(sizes) == longest


def test_abort_frees_the_row(tiny_bundle):
    engine = Engine(tiny_bundle, max_batch=1)
    a = engine.make_request(params=GenerationParams(duration_s=1.0), request_id="a")
    b = engine.make_request(params=GenerationParams(duration_s=0.2), request_id="b")
    engine.add(a)
    engine.step()
    engine.abort("a")
    engine.add(b)
    outs = [o for _ in range(3) for o in engine.step()]
    assert [o.request_id for o in outs] == ["b", "b"] and outs[-1].finished


def test_stream_yields_patches_in_order_and_matches_generate(tiny_bundle):
    engine = Engine(tiny_bundle, max_batch=2)
    r = engine.make_request(params=GenerationParams(seed=5, duration_s=0.8), request_id="s")
    seen = []
    streamed = [o for o in engine.stream([r], progress=lambda done, total: seen.append((done, total)))]
    assert [o.index for o in streamed] == list(range(r.n_patches)) and streamed[-1].finished
    assert seen[-1] == (r.n_patches, r.n_patches)
    whole = engine.generate_latents([r])["s"]
    assert torch.equal(torch.cat([o.patch for o in streamed]), whole)


def test_overlapped_decode_streams_the_same_audio_in_the_same_order(tiny_bundle):
    def chunks(overlap: bool) -> list[tuple[str, np.ndarray]]:
        engine = Engine(tiny_bundle, max_batch=2, decode_dtype="float32", overlap_decode=overlap)
        requests = [
            engine.make_request(params=GenerationParams(seed=s, duration_s=d, steps=2), request_id=f"r{s}")
            for s, d in ((1, 11.0), (2, 3.0))  # three decode windows and one
        ]
        return list(engine.stream_audio(requests))

    inline, overlapped = chunks(False), chunks(True)
    assert [rid for rid, _ in overlapped] == [rid for rid, _ in inline] == ["r2", "r1", "r1", "r1"]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(inline, overlapped, strict=True))


@pytest.mark.parametrize("duration, patches", [(0.04, 1), (0.16, 1), (0.17, 2), (10.0, 63), (2.0, 13)])
def test_patch_count_follows_duration(tiny_bundle, duration, patches):
    engine = Engine(tiny_bundle)
    assert engine.make_request(params=GenerationParams(duration_s=duration)).n_patches == patches


def test_generate_returns_stereo_48k_trimmed_to_duration(tiny_bundle, videos):
    engine = Engine(tiny_bundle)
    request = engine.make_request(video=videos["mid"], prompt="calm", params=GenerationParams(steps=4))
    (result,) = engine.generate([request])
    assert result.sample_rate == 48000
    assert result.audio.shape == (2, round(request.duration_s * 48000))
    assert abs(request.duration_s - 2.2) < 0.05
    (window,) = engine.plan_windows(request)
    frames, offset = window_frames(engine.cfg, request.frames, window, request.duration_s)
    assert frames.shape == (11, engine.cfg.vision.feature_dim) and offset == 0  # ceil(2.2 s x 5 fps)


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(steps=0), "steps"),
        (dict(guidance=-1.0), "guidance"),
        (dict(solver="rk4"), "solver must be one of euler, midpoint"),
        (dict(duration_s=0.0), "duration"),
    ],
)
def test_bad_parameters_are_refused(params, message):
    with pytest.raises(ValueError, match=message):
        GenerationParams(**params)


def test_overlong_prompt_and_duration_are_refused(tiny_bundle, tiny_cfg):
    engine = Engine(tiny_bundle, max_duration_s=5.0)
    with pytest.raises(ValueError, match="tokens"):
        engine.make_request(prompt="x" * (tiny_cfg.text.max_tokens + 1), params=GenerationParams(duration_s=1.0))
    with pytest.raises(ValueError, match="exceeds"):
        engine.make_request(params=GenerationParams(duration_s=6.0))


def test_a_model_whose_window_holds_more_frames_than_it_takes_is_refused():
    from model.build import build_bundle
    from model.config import load_config

    with pytest.raises(ValueError, match="max_frames"):  # a 10 s window at 5 fps is 51 frames
        Engine(build_bundle(load_config("tiny", ["vision.max_frames=4"])))
