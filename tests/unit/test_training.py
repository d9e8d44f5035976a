"""Training batches, input masking, warm starts and the DeepSpeed config, without Ray."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs.train import TrainConfig, resolve_model
from jobs.train_config import deepspeed_config
from model.build import build_bundle
from model.checkpoint import read_config, save_bundle, save_encoders
from model.config import load_config
from model.text import ByteTokenizer
from model.training import STAGE2_NEW, collate, crop_window, load_weights, mask_inputs
from model.videorobin import VideoRobin


def _rows(cfg, frames: list[int], with_features: bool = True) -> dict:
    rng = np.random.default_rng(0)
    D, fd = cfg.latent_dim, cfg.vision.feature_dim
    n_feat = [round(n / cfg.latent_rate * cfg.vision.fps) if with_features else 0 for n in frames]
    return {
        "id": np.array([f"c{i}" for i in range(len(frames))], dtype=object),
        "token_ids": np.array([np.arange(3, 3 + 10 * (i + 1)) for i in range(len(frames))] + [None], dtype=object)[:-1],
        "latents": np.array([rng.standard_normal(n * D).astype(np.float32) for n in frames] + [None], dtype=object)[
            :-1
        ],
        "n_frames": np.array(frames),
        # feature k holds the value k so the window taken is visible
        "features": np.array([np.repeat(np.arange(f, dtype=np.float32), fd) for f in n_feat] + [None], dtype=object)[
            :-1
        ],
        "n_features": np.array(n_feat),
    }


def test_collate_crops_long_clips_pads_short_ones_and_standardises():
    cfg = load_config("tiny")
    D, P = cfg.latent_dim, cfg.patch_size
    batch = _rows(cfg, [250, 30])  # 10 s and 1.2 s at 25 Hz
    mean, std = np.full(D, 0.5, np.float32), np.full(D, 2.0, np.float32)
    tb = collate(batch, cfg, clip_s=2.0, mean=mean, std=std, rng=np.random.default_rng(1))
    assert tb.patches.shape == (2, cfg.patches_for(2.0), P, D)
    window_frames = cfg.patches_for(2.0) * P  # 2 s rounded up to whole patches: 52 frames
    assert tb.n_patches.tolist() == [window_frames // P, 30 // P]
    short = np.asarray(batch["latents"][1]).reshape(-1, D)
    flat = tb.patches[1].reshape(-1, D).numpy()
    np.testing.assert_allclose(flat[:30], (short - 0.5) / 2.0, rtol=1e-6)
    assert not flat[30:].any()  # padding past the clip's end
    long = (np.asarray(batch["latents"][0]).reshape(-1, D) - 0.5) / 2.0
    window = tb.patches[0].reshape(-1, D).numpy()
    first = int(np.argmin([np.abs(long[s : s + window_frames] - window).max() for s in range(250 - window_frames)]))
    np.testing.assert_allclose(window, long[first : first + window_frames], rtol=1e-6)
    # The video features cover the same window (2.08 s: 11 frames at 5 fps) starting where the latents start.
    feats = tb.cond.frames[0]
    assert feats.shape == (11, cfg.vision.feature_dim)
    assert feats[0, 0].item() == round(first / 25 * 5)
    assert tb.cond.text_ids[1].tolist() == list(range(3, 23))


def test_rows_without_video_have_no_frames_and_stage1_ignores_features():
    cfg = load_config("tiny")
    tb = collate(_rows(cfg, [50], with_features=False), cfg, 2.0, np.zeros(16), np.ones(16), np.random.default_rng(0))
    assert tb.cond.frames == [None]
    t2m = load_config("tiny", ["vision=null"])
    tb = collate(_rows(cfg, [50]), t2m, 2.0, np.zeros(16), np.ones(16), np.random.default_rng(0))
    assert tb.cond.frames == [None]


def test_crop_window_is_random_but_reproducible():
    starts = {crop_window(100, 20, np.random.default_rng(s))[0] for s in range(20)}
    assert len(starts) > 5 and max(starts) <= 80
    assert crop_window(100, 20, np.random.default_rng(3)) == crop_window(100, 20, np.random.default_rng(3))
    assert crop_window(10, 20, np.random.default_rng(0)) == (0, 10)


def test_input_masking_drops_tokens_and_zeroes_frames_at_the_asked_rate():
    ids, feats = np.arange(10_000), np.ones((10_000, 4), np.float32)
    kept_ids, masked = mask_inputs(ids, feats, 0.3, np.random.default_rng(0))
    assert abs(len(kept_ids) / 10_000 - 0.7) < 0.02
    assert masked.shape == feats.shape and abs((masked[:, 0] == 0).mean() - 0.3) < 0.02
    same_ids, same = mask_inputs(ids, feats, 0.0, np.random.default_rng(0))
    assert same_ids is ids and same is feats


def test_stage2_warm_start_keeps_stage1_weights_and_a_fresh_vision_projection():
    stage1 = VideoRobin(load_config("tiny", ["vision=null"]))
    torch.manual_seed(1)
    stage2 = VideoRobin(load_config("tiny"))
    fresh = stage2.vision_proj.weight.clone()
    load_weights(stage2, stage1.state_dict(), allow_missing=STAGE2_NEW)
    assert torch.equal(stage2.locdit.out_proj.weight, stage1.locdit.out_proj.weight)
    assert torch.equal(stage2.vision_proj.weight, fresh)
    with pytest.raises(ValueError, match="missing"):
        load_weights(stage2, stage1.state_dict())  # vision_proj is only allowed missing when asked
    bigger = VideoRobin(load_config("tiny", ["vision=null", "semantic_lm.layers=3"]))
    with pytest.raises(ValueError, match="unexpected"):
        load_weights(stage1, bigger.state_dict())


def _cfg(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(stage="t2m", data=str(tmp_path / "data"), storage=str(tmp_path / "runs"), steps=100, **kw)


def test_deepspeed_config_fills_every_auto_field(tmp_path):
    cfg = _cfg(tmp_path, batch_size=3, lr=3e-4, warmup=0.1, grad_clip=0.5)
    gpu = deepspeed_config(cfg, on_gpu=True)
    assert "auto" not in json.dumps(gpu)
    assert gpu["train_micro_batch_size_per_gpu"] == 3 and gpu["gradient_clipping"] == 0.5
    assert gpu["optimizer"]["params"]["lr"] == 3e-4 and gpu["optimizer"]["params"]["weight_decay"] == 0.01
    assert gpu["scheduler"]["params"]["warmup_num_steps"] == 10 and gpu["scheduler"]["params"]["total_num_steps"] == 100
    assert gpu["bf16"]["enabled"] and gpu["zero_optimization"]["stage"] == 2
    cpu = deepspeed_config(_cfg(tmp_path, zero_stage=3), on_gpu=False)
    assert not cpu["bf16"]["enabled"] and cpu["optimizer"]["params"]["torch_adam"]
    assert cpu["zero_optimization"]["stage"] == 3 and not cpu["zero_optimization"]["overlap_comm"]
    custom = tmp_path / "ds.json"
    custom.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"stage": 1}}))
    assert deepspeed_config(_cfg(tmp_path, deepspeed=str(custom)), on_gpu=True) == {
        "train_micro_batch_size_per_gpu": 4,
        "zero_optimization": {"stage": 1},
    }
    custom.write_text(json.dumps({"fp16": {"enabled": "auto"}}))  # a field train does not own
    with pytest.raises(ValueError, match="fp16|enabled"):
        deepspeed_config(_cfg(tmp_path, deepspeed=str(custom)), on_gpu=True)


def test_model_resolution_follows_the_stage_and_checks_the_data(tmp_path):
    cfg = load_config("tiny")
    bundle = build_bundle(cfg)
    data = tmp_path / "data"
    save_encoders(str(data), cfg, bundle.vae, bundle.model.clip, ByteTokenizer())
    with pytest.raises(ValueError, match="not a complete"):
        resolve_model(_cfg(tmp_path))
    (data / "latent_stats.json").write_text(json.dumps({"mean": [0.0] * 16, "std": [1.0] * 16}))
    assert resolve_model(_cfg(tmp_path)).vision is None
    with pytest.raises(ValueError, match="needs --init-from"):
        resolve_model(_cfg(tmp_path).model_copy(update={"stage": "v2m"}))
    with pytest.raises(ValueError, match="VAE differs"):
        resolve_model(_cfg(tmp_path, set=["vae.chunk_latents=64"]))
    assert resolve_model(_cfg(tmp_path, set=["flow.cfg_dropout=0.2"])).flow.cfg_dropout == 0.2

    # distill: the teacher's config, whose default becomes the student's few Euler steps
    with pytest.raises(ValueError, match="distill needs --init-from"):
        resolve_model(_cfg(tmp_path).model_copy(update={"stage": "distill"}))
    teacher = tmp_path / "teacher"
    save_bundle(build_bundle(load_config("tiny", ["flow.solver=midpoint"])), str(teacher))
    student = resolve_model(
        _cfg(tmp_path, init_from=str(teacher), student_steps=3).model_copy(update={"stage": "distill"})
    )
    assert (student.flow.steps, student.flow.solver) == (3, "euler")
    assert student.model_copy(update={"flow": None}) == read_config(str(teacher)).model_copy(update={"flow": None})
    other = tmp_path / "other_vision"
    save_encoders(str(other), load_config("tiny", ["vision.fps=2"]), bundle.vae, bundle.model.clip, ByteTokenizer())
    (other / "latent_stats.json").write_text((data / "latent_stats.json").read_text())
    with pytest.raises(ValueError, match="vision settings"):
        resolve_model(
            _cfg(tmp_path, init_from=str(teacher)).model_copy(update={"stage": "distill", "data": str(other)})
        )
    with pytest.raises(ValueError, match="distill_guidance"):
        _cfg(tmp_path, distill_guidance=(3.0, 1.0))


BF16_STEPS = """
import importlib, os, sys, tempfile
import numpy as np, torch
os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
import deepspeed
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from jobs.train_config import TrainConfig, deepspeed_config
from model.config import load_config
from model.training import collate, load_weights
from model.videorobin import VideoRobin
from tests.unit.test_training import _rows
cfg = load_config("tiny", ["vision=null"])
run = TrainConfig(stage="t2m", data="d", storage="s", steps=4, batch_size=2, lr=1e-3, warmup=0.25,
                  zero_stage=int(sys.argv[2]))
ds = deepspeed_config(run, on_gpu=True)  # the GPU config: bf16, ZeRO-2; only the Adam op is swapped
ds["optimizer"]["params"]["torch_adam"] = True
model = VideoRobin(cfg)
engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
dtype = next(engine.module.parameters()).dtype
for step in range(4):
    tb = collate(_rows(load_config("tiny"), [60, 40]), cfg, 2.0, np.zeros(16), np.ones(16),
                 np.random.default_rng(step)).to("cpu", dtype)
    loss = engine(tb.cond, tb.patches, tb.n_patches)["loss"]
    engine.backward(loss)
    engine.step()
    assert torch.isfinite(loss), loss
with tempfile.TemporaryDirectory() as tmp:  # the export path: consolidate the ZeRO shards to fp32
    engine.save_checkpoint(tmp, tag="ds")
    state = get_fp32_state_dict_from_zero_checkpoint(tmp, tag="ds")
load_weights(VideoRobin(cfg), state)  # every tensor present, shapes right
trained = engine.module.locdit.out_proj.weight
if int(sys.argv[2]) < 3:  # under ZeRO-3 the module holds only its partition
    assert torch.allclose(state["locdit.out_proj.weight"], trained.float(), atol=1e-2)
print("dtype", dtype, "loss", float(loss))
"""


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_the_gpu_deepspeed_config_trains_and_exports_the_model_in_bf16(zero_stage):
    """The bf16 path of `deepspeed_config(on_gpu=True)` at ZeRO-2 and ZeRO-3, on DeepSpeed's CPU accelerator."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", BF16_STEPS, port, str(zero_stage)], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dtype torch.bfloat16" in result.stdout
