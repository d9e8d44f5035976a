import pytest
import torch
from pydantic import ValidationError

from model.build import build_bundle
from model.config import VideoRobinConfig, load_config
from model.engine import Engine, GenerationParams
from model.videorobin import Conditions


@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_presets_round_trip_through_config_json(preset):
    cfg = load_config(preset)
    again = VideoRobinConfig.from_json(cfg.to_json())
    assert again == cfg
    assert cfg.latent_rate == 25.0


def test_paper_preset_has_the_papers_sizes():
    cfg = load_config("paper")
    lm = cfg.semantic_lm
    assert (lm.layers, lm.hidden, lm.heads, lm.kv_heads, lm.ffn) == (24, 1024, 16, 2, 4096)
    assert (cfg.fsq.dim, cfg.fsq.levels) == (256, 19)
    assert cfg.rite.layers == 8 and cfg.locdit.layers == 8 and cfg.patch_size == 4 and cfg.latent_dim == 64
    assert cfg.vision.clip_model == "ViT-B-32" and cfg.vision.fps == 5.0
    assert cfg.vae.hop == 1920 and cfg.vae.sample_rate == 48000
    assert cfg.patches_for(10.0) == 63  # ceil(250 / 4)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["semantic_lm.heads=3"], "divisible"),
        (["fsq=null"], "rite requires fsq"),
        (["bogus=1"], "Extra inputs"),
        (["vae.decoder.latent_dim=8"], "twice"),
        (["flow.steps=0"], "greater than or equal to 1"),
    ],
)
def test_invalid_configs_are_refused(overrides, message):
    with pytest.raises(ValidationError, match=message):
        load_config("tiny", overrides)


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="unknown preset"):
        load_config("huge")


ABLATIONS = {
    "full": [],
    "no_rite": ["rite=null"],
    "no_fsq_rite": ["rite=null", "fsq=null"],
    "patch8": ["patch_size=8"],
    "patch16": ["patch_size=16"],
    "stage1_no_vision": ["vision=null"],
}


@pytest.mark.parametrize("name", ABLATIONS)
def test_each_ablation_trains_and_generates(name):
    cfg = load_config("tiny", ABLATIONS[name])
    bundle = build_bundle(cfg)
    model = bundle.model
    N = 3
    frames = [torch.randn(4, cfg.vision.feature_dim), None] if cfg.vision is not None else [None, None]
    cond = Conditions([torch.tensor([5, 6, 7]), torch.tensor([8])], frames)
    patches = torch.randn(2, N, cfg.patch_size, cfg.latent_dim)
    loss = model(cond, patches, torch.tensor([N, 2]))["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert model.locdit.out_proj.weight.grad is not None and model.embed.weight.grad is not None
    engine = Engine(bundle, max_batch=2)
    request = engine.make_request(frames=frames[0], params=GenerationParams(duration_s=1.0, steps=2))
    out = engine.generate_latents([request])[request.request_id]
    assert out.shape == (cfg.patches_for(1.0) * cfg.patch_size, cfg.latent_dim)
    assert request.n_patches == -(-25 // cfg.patch_size)
