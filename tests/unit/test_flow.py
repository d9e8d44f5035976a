import pytest
import torch

from model.config import FlowConfig, TransformerConfig
from model.flow import flow_loss, sample_flow, sample_t
from model.locdit import LocDiT

CFG = TransformerConfig(hidden=32, layers=1, heads=2, kv_heads=1, ffn=64)


def _dit():
    torch.manual_seed(0)
    return LocDiT(CFG, latent_dim=4).eval()


def test_training_times_follow_the_logit_normal():
    t = sample_t(200_000, FlowConfig(), "cpu", torch.Generator().manual_seed(0))
    assert abs(t.median().item() - torch.sigmoid(torch.tensor(-0.4)).item()) < 0.01
    assert 0 < t.min() and t.max() < 1


def _guided(dit, mu, prev, x, t, w):
    v_c, v_u = dit(mu, t, prev, x), dit(torch.zeros_like(mu), t, prev, x)
    return v_u + w * (v_c - v_u)


@pytest.mark.parametrize("midpoint", [False, True])
def test_guided_sampler_equals_cond_and_uncond_run_separately(midpoint):
    dit = _dit()
    mu, prev, noise = torch.randn(3, 32), torch.randn(3, 4, 4), torch.randn(3, 4, 4)
    w, steps = 2.0, 5
    x = noise.clone()
    for i in range(steps):
        t = torch.full((3,), 1 - i / steps)
        v = _guided(dit, mu, prev, x, t, w)
        if midpoint:
            v = _guided(dit, mu, prev, x - v / (2 * steps), t - 1 / (2 * steps), w)
        x = x - v / steps
    assert torch.allclose(sample_flow(dit, mu, prev, noise, steps, w, midpoint), x, atol=1e-5)


def test_rows_with_different_steps_guidance_and_solvers_equal_their_solo_runs():
    dit = _dit()
    mu, prev, noise = torch.randn(3, 32), torch.randn(3, 4, 4), torch.randn(3, 4, 4)
    steps, guidance, midpoint = (
        torch.tensor([3, 7, 4]),
        torch.tensor([1.5, 0.0, 2.0]),
        torch.tensor([False, True, True]),
    )
    mixed = sample_flow(dit, mu, prev, noise, steps, guidance, midpoint)
    solo = [
        sample_flow(dit, mu[i : i + 1], prev[i : i + 1], noise[i : i + 1], steps[i], guidance[i], midpoint[i])
        for i in range(3)
    ]
    assert torch.allclose(mixed, torch.cat(solo), atol=1e-5)


def test_midpoint_with_fewer_evaluations_lands_closer_to_the_exact_solution_than_euler():
    dit = _dit()
    mu, prev, noise = torch.randn(16, 32), torch.randn(16, 4, 4), torch.randn(16, 4, 4)
    exact = sample_flow(dit, mu, prev, noise, 256, 2.0, midpoint=True)

    def error(steps, midpoint):
        return (sample_flow(dit, mu, prev, noise, steps, 2.0, midpoint) - exact).norm() / exact.norm()

    assert error(4, midpoint=True) < error(10, midpoint=False) / 2  # 8 evaluations against 10


def test_flow_loss_drops_mu_but_never_the_prefix():
    dit = _dit()
    mu, prev, x = torch.randn(64, 32), torch.randn(64, 4, 4), torch.randn(64, 4, 4)
    weight = torch.ones(64)
    torch.manual_seed(1)
    always_dropped = flow_loss(dit, mu, prev, x, weight, FlowConfig(cfg_dropout=1.0))
    torch.manual_seed(1)
    no_mu = flow_loss(dit, torch.zeros_like(mu), prev, x, weight, FlowConfig(cfg_dropout=0.0))
    assert torch.allclose(always_dropped, no_mu)  # p=1 is exactly "mu zeroed", prefix untouched
    torch.manual_seed(1)
    kept = flow_loss(dit, mu, prev, x, weight, FlowConfig(cfg_dropout=0.0))
    assert not torch.allclose(kept, no_mu)
