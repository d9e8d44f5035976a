"""The patch loop in bf16 (model/engine/precision.py): bf16 weights, matmuls and KV caches, fp32 where it matters."""

import pytest
import torch

from model.engine import Engine
from model.errors import InputError
from tests.unit.test_engine import _requests


def _first_patches(latents: dict, patch_size: int) -> dict:
    return {rid: x[:patch_size] for rid, x in latents.items()}


def test_a_bf16_loop_lands_near_the_fp32_one_and_leaves_the_model_fp32(tiny_bundle, tiny_cfg):
    before = {k: v.clone() for k, v in tiny_bundle.model.state_dict().items()}
    fp32 = Engine(tiny_bundle, max_batch=3)
    bf16 = Engine(tiny_bundle, max_batch=3, compute_dtype="bfloat16")
    assert bf16.runner.caches.semantic_lm.k.dtype == torch.bfloat16
    assert next(bf16.runner.model.locdit.parameters()).dtype == torch.bfloat16
    want = fp32.generate_latents(_requests(fp32, tiny_cfg.vision.feature_dim))
    got = bf16.generate_latents(_requests(bf16, tiny_cfg.vision.feature_dim))
    for rid, latents in got.items():
        assert latents.dtype == torch.float32 and latents.shape == want[rid].shape and latents.isfinite().all()
    # The first patch comes from the same prefill and noise: only bf16 rounding separates the two. Later
    # patches feed back what came before, so the draws drift apart as any two samplers' do.
    first_want, first_got = (_first_patches(x, tiny_cfg.patch_size) for x in (want, got))
    for rid, patch in first_got.items():
        distance = float((patch - first_want[rid]).norm() / first_want[rid].norm())
        assert 0 < distance < 0.05, (rid, distance)
    after = tiny_bundle.model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


def test_compiled_bf16_writes_what_eager_bf16_writes(tiny_bundle, tiny_cfg):
    eager = Engine(tiny_bundle, max_batch=3, compute_dtype="bfloat16")
    compiled = Engine(tiny_bundle, max_batch=3, compute_dtype="bfloat16", compiled=True)
    want = _first_patches(eager.generate_latents(_requests(eager, tiny_cfg.vision.feature_dim)), tiny_cfg.patch_size)
    got = compiled.generate_latents(_requests(compiled, tiny_cfg.vision.feature_dim))
    for rid, patch in _first_patches(got, tiny_cfg.patch_size).items():
        assert float((patch - want[rid]).norm() / want[rid].norm()) < 0.02, rid


def test_an_unknown_compute_dtype_is_refused(tiny_bundle):
    with pytest.raises(InputError, match="compute dtype 'float16' is not one of float32, bfloat16"):
        Engine(tiny_bundle, compute_dtype="float16")
