import torch

from model.config import FSQConfig
from model.fsq import FSQ
from model.videorobin import Conditions


def _batch(cfg, N=5):
    cond = Conditions(
        [torch.tensor([10, 11, 12, 13]), torch.tensor([20])],
        [torch.randn(3, cfg.vision.feature_dim), torch.randn(6, cfg.vision.feature_dim)],
    )
    return cond, torch.randn(2, N, cfg.patch_size, cfg.latent_dim), torch.tensor([N, 3])


def test_plan_shapes(tiny_bundle, tiny_cfg):
    cond, patches, n = _batch(tiny_cfg)
    mu = tiny_bundle.model.eval().plan_sequence(cond, patches, n)
    assert mu.shape == (2, 5, tiny_cfg.locdit.hidden)


def test_plan_for_patch_i_does_not_see_patches_i_and_later(tiny_bundle, tiny_cfg):
    model = tiny_bundle.model.eval()
    cond, patches, n = _batch(tiny_cfg)
    base = model.plan_sequence(cond, patches, n)
    for i in range(patches.shape[1]):
        changed = patches.clone()
        changed[:, i:] = torch.randn_like(changed[:, i:])
        mu = model.plan_sequence(cond, changed, n)
        assert torch.allclose(mu[0, : i + 1], base[0, : i + 1], atol=1e-5), i  # patch i's plan uses < i only
        if i + 1 < patches.shape[1]:
            assert not torch.allclose(mu[0, i + 1 :], base[0, i + 1 :], atol=1e-4), i


def test_plans_depend_on_text_and_video(tiny_bundle, tiny_cfg):
    model = tiny_bundle.model.eval()
    cond, patches, n = _batch(tiny_cfg)
    base = model.plan_sequence(cond, patches, n)
    other_text = Conditions([torch.tensor([30, 31, 32, 33]), cond.text_ids[1]], cond.frames)
    other_video = Conditions(cond.text_ids, [torch.randn_like(cond.frames[0]), cond.frames[1]])
    assert not torch.allclose(model.plan_sequence(other_text, patches, n)[0], base[0], atol=1e-4)
    assert not torch.allclose(model.plan_sequence(other_video, patches, n)[0], base[0], atol=1e-4)
    assert torch.allclose(model.plan_sequence(other_text, patches, n)[1], base[1], atol=1e-5)  # rows independent


def test_fsq_has_19_levels_and_passes_gradients():
    fsq = FSQ(32, FSQConfig(dim=8, scale=9)).train()
    h = torch.randn(1000, 32, requires_grad=True)
    q = fsq.quantize(h * 10)
    levels = torch.unique(torch.round(q.detach() * 9))
    assert levels.min() >= -9 and levels.max() <= 9 and len(levels) == 19
    fsq(h).sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0


def test_training_loss_backpropagates_to_every_trainable_part(tiny_cfg):
    from model.videorobin import VideoRobin

    model = VideoRobin(tiny_cfg).train()
    cond, patches, n = _batch(tiny_cfg)
    model(cond, patches, n)["loss"].backward()
    for name in (
        "embed",
        "semantic_lm",
        "fsq",
        "rite",
        "locenc",
        "locdit",
        "vision_proj",
        "plan_proj",
        "residual_proj",
    ):
        grads = [p.grad for p in getattr(model, name).parameters()]
        assert all(g is not None for g in grads), name
    assert model.audio_start.grad is not None
    assert all(p.grad is None for p in model.clip.parameters())  # CLIP stays frozen
