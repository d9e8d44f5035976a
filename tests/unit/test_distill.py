"""Distillation (model/distill.py): a few-step student, trained through the engine's own sampler, lands closer
to its teacher's accurate solution than the teacher does in the same few steps."""

import copy

import torch

from model.config import TransformerConfig
from model.distill import Distillation
from model.flow import integrate_flow, sample_flow
from model.locdit import LocDiT

CFG = TransformerConfig(hidden=32, layers=1, heads=2, kv_heads=1, ffn=64)


def _teacher() -> LocDiT:
    torch.manual_seed(0)
    return LocDiT(CFG, latent_dim=4).eval().requires_grad_(False)


def _conditions(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 32, generator=g), torch.randn(n, 4, 4, generator=g), torch.randn(n, 4, 4, generator=g)


def test_the_sampler_with_gradients_is_the_engine_sampler():
    dit = _teacher()
    mu, prev, noise = _conditions(3, 1)
    student = copy.deepcopy(dit).requires_grad_(True)
    x = integrate_flow(student, mu, prev, noise, 3, torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(x.detach(), sample_flow(dit, mu, prev, noise, 3, torch.tensor([1.0, 2.0, 3.0])))
    x.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.out_proj.parameters())


def test_a_distilled_student_in_two_steps_lands_closer_to_the_teacher_than_the_teacher_in_two():
    teacher = _teacher()
    distill = Distillation(teacher, 2, 8, True, patches=64, guidance=(1.0, 3.0))
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    mu, prev, _ = _conditions(512, 2)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    torch.manual_seed(3)
    for _ in range(150):
        optimizer.zero_grad()
        distill.loss(student, mu, prev).backward()
        optimizer.step()

    mu, prev, noise = _conditions(256, 4)  # conditions and noise never trained on
    for w in (1.5, 2.5):  # guidance weights inside the range, not fixed in training
        exact = sample_flow(teacher, mu, prev, noise, 8, w, True)
        before = (sample_flow(teacher, mu, prev, noise, 2, w) - exact).norm() / exact.norm()
        after = (sample_flow(student.eval(), mu, prev, noise, 2, w) - exact).norm() / exact.norm()
        print(f"w={w}: 2 Euler steps land {before:.3f} from the teacher's solution, the student's {after:.3f}")
        assert after < 0.6 * before
