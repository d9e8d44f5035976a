"""The compiled refine step (model/engine/refine.py): the same music as eager, batch buckets and all."""

import torch

from model.engine import Engine
from model.engine.refine import BUCKETS, bucket
from tests.unit.test_engine import _requests


def test_batches_pad_up_to_the_next_bucket():
    assert [bucket(n) for n in (1, 2, 3, 5, 8, 9, 128)] == [1, 2, 4, 8, 8, 16, 128]
    assert bucket(BUCKETS[-1] + 1) == BUCKETS[-1] + 1  # past the largest: unpadded


def test_the_compiled_engine_writes_what_the_eager_one_writes(tiny_bundle, tiny_cfg):
    """Three requests of different lengths and solvers: the batch shrinks from 3 rows (bucket 4) to 2 and 1, so
    three graphs are compiled and the padded rows must not leak into the real ones."""
    eager = Engine(tiny_bundle, max_batch=3)
    compiled = Engine(tiny_bundle, max_batch=3, compiled=True)
    want = eager.generate_latents(_requests(eager, tiny_cfg.vision.feature_dim))
    got = compiled.generate_latents(_requests(compiled, tiny_cfg.vision.feature_dim))
    for rid, latents in want.items():
        assert torch.allclose(got[rid], latents, atol=1e-4), (got[rid] - latents).abs().max()
