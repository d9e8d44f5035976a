"""The compiled patch step (model/engine/refine.py, runner.py): the same music as eager, batch buckets and all,
and a patch loop that never waits for the GPU."""

import pytest
import torch

from model.build import build_bundle
from model.engine import Engine
from model.engine.refine import BUCKETS, bucket
from tests.unit.test_engine import _requests
from tests.unit.test_windows import _request, windowed  # noqa: F401 (a fixture)


def test_batches_pad_up_to_the_next_bucket():
    assert [bucket(n) for n in (1, 2, 3, 5, 8, 9, 128)] == [1, 2, 4, 8, 8, 16, 128]
    assert bucket(BUCKETS[-1] + 1) == BUCKETS[-1] + 1  # past the largest: unpadded


def test_the_compiled_engine_writes_what_the_eager_one_writes(tiny_bundle, tiny_cfg):
    """Three requests of different lengths and solvers: the batch shrinks from 3 rows (bucket 4) to 2 and 1, so
    three graphs of each step are compiled and the padded rows must not leak into the real ones."""
    eager = Engine(tiny_bundle, max_batch=3)
    compiled = Engine(tiny_bundle, max_batch=3, compiled=True)
    want = eager.generate_latents(_requests(eager, tiny_cfg.vision.feature_dim))
    got = compiled.generate_latents(_requests(compiled, tiny_cfg.vision.feature_dim))
    for rid, latents in want.items():
        assert torch.allclose(got[rid], latents, atol=1e-4), (got[rid] - latents).abs().max()


def test_compiled_planning_survives_new_windows_and_reused_rows(windowed):  # noqa: F811
    """Five requests through three rows (bucket 4, so a padded row): rows are freed and taken again mid-run, long
    clips open new windows (a prefill between compiled steps), and every step attends over the whole cache."""
    seconds = [2.5, 0.5, 1.3, 0.3, 1.9]
    eager, compiled = Engine(windowed, max_batch=3), Engine(windowed, max_batch=3, compiled=True)
    make = lambda engine: [_request(engine, s, 20 + i, f"r{i}") for i, s in enumerate(seconds)]  # noqa: E731
    want, got = eager.generate_latents(make(eager)), compiled.generate_latents(make(compiled))
    for rid, latents in want.items():
        assert torch.allclose(got[rid], latents, atol=1e-4), (rid, (got[rid] - latents).abs().max())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_patch_loop_never_waits_for_the_gpu(tiny_cfg):
    """Between the reads of each step's patches, nothing synchronises with the device: CUDA's sync debug mode
    raises on any wait (a blocking copy, an .item(), a stream synchronisation)."""
    engine = Engine(build_bundle(tiny_cfg, seed=0), device="cuda", max_batch=3)
    for request in _requests(engine, tiny_cfg.vision.feature_dim):
        engine.add(request)
    steps = 0
    while engine.scheduler.has_work():
        torch.cuda.set_sync_debug_mode("error")
        try:
            batch = engine.begin_step()
            patches = engine.refine(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        host = patches.cpu()  # the step's one read-back
        torch.cuda.set_sync_debug_mode("error")
        try:
            engine.end_step(batch, host)  # records them, plans the next patches, prefills new windows
        finally:
            torch.cuda.set_sync_debug_mode("default")
        steps += 1
    assert steps == max(r.n_patches for r in _requests(engine, tiny_cfg.vision.feature_dim))
