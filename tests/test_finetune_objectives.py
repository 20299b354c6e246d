"""Loss terms of fine-tuning: teacher KL, consistency MSE, warm-up, S-JFB draws and unigram entropy."""

from __future__ import annotations

import math

import pytest
import torch

from mgm2fp.training.objectives import consistency_loss, distillation_kl, linear_warmup, sample_jfb_iterations, unigram_entropy

MASK = 9


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    x_student = torch.tensor([[MASK, MASK, 3, MASK], [1, MASK, MASK, 2]])
    x_cleaner = torch.tensor([[MASK, 5, 3, MASK], [1, MASK, 7, 2]])
    return x_student, x_cleaner


def test_kl_zero_when_student_matches_teacher():
    x_student, _ = _inputs()
    logits = torch.randn(2, 4, 10)
    kl = distillation_kl(logits, logits, x_student, x_student, mask_token_id=MASK, temperature=1.5)
    assert kl.abs().item() < 1e-5


def test_kl_matches_manual_computation():
    torch.manual_seed(0)
    x_student, x_cleaner = _inputs()
    student, teacher = torch.randn(2, 4, 10), torch.randn(2, 4, 10)
    tau = 2.0
    kl = distillation_kl(student, teacher, x_student, x_cleaner, mask_token_id=MASK, temperature=tau)

    expected = []
    for b in range(2):
        for i in range(4):
            if x_student[b, i] != MASK:
                continue
            q = torch.log_softmax(torch.cat([student[b, i, :MASK], student[b, i, MASK + 1 :]]) / tau, dim=-1)
            q = torch.cat([q[:MASK], torch.tensor([-math.inf]), q[MASK:]])
            if x_cleaner[b, i] == MASK:
                p = torch.softmax(torch.cat([teacher[b, i, :MASK], teacher[b, i, MASK + 1 :]]) / tau, dim=-1)
                p = torch.cat([p[:MASK], torch.zeros(1), p[MASK:]])
                keep = p > 0
                expected.append((p[keep] * (p[keep].log() - q[keep])).sum())
            else:  # visible to the teacher: one-hot target, cross-entropy
                expected.append(-q[x_cleaner[b, i]])
    manual = tau**2 * torch.stack(expected).mean()
    assert torch.allclose(kl, manual, atol=1e-5)


def test_kl_gradient_reaches_student_only():
    x_student, x_cleaner = _inputs()
    student = torch.randn(2, 4, 10, requires_grad=True)
    teacher = torch.randn(2, 4, 10, requires_grad=True)
    distillation_kl(student, teacher.detach(), x_student, x_cleaner, mask_token_id=MASK).backward()
    assert student.grad is not None
    visible = x_student != MASK
    assert student.grad[visible].abs().max().item() == 0


def test_consistency_averages_over_student_masked_positions():
    x_student, _ = _inputs()
    student = torch.zeros(2, 4, 3)
    cleaner = torch.ones(2, 4, 3)
    cleaner[x_student != MASK] = 100.0  # visible positions must not count
    loss = consistency_loss(student, cleaner, x_student, mask_token_id=MASK)
    assert loss.item() == pytest.approx(1.0)  # mean over D=3 of a unit squared difference
    summed = consistency_loss(student, cleaner, x_student, mask_token_id=MASK, reduction="sum")
    assert summed.item() == pytest.approx(3.0)  # squared norm over D=3


def test_consistency_stops_gradient_on_cleaner_branch():
    x_student, _ = _inputs()
    student = torch.randn(2, 4, 3, requires_grad=True)
    cleaner = torch.randn(2, 4, 3, requires_grad=True)
    consistency_loss(student, cleaner, x_student, mask_token_id=MASK).backward()
    assert cleaner.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


@pytest.mark.parametrize(("step", "expected"), [(0, 0.0), (250, 0.05), (500, 0.1), (5000, 0.1)])
def test_linear_warmup(step, expected):
    assert linear_warmup(step, final_value=0.1, warmup_steps=500) == pytest.approx(expected)


def test_linear_warmup_without_warmup_is_constant():
    assert linear_warmup(0, final_value=0.3, warmup_steps=0) == 0.3


def test_jfb_draws_cover_ranges():
    generator = torch.Generator().manual_seed(0)
    draws = [sample_jfb_iterations((0, 4), (3, 6), generator=generator) for _ in range(400)]
    assert {no_grad for no_grad, _ in draws} == {0, 1, 2, 3, 4}
    assert {grad for _, grad in draws} == {3, 4, 5, 6}


def test_unigram_entropy_values():
    tokens = torch.tensor([[1, 1, 1, 1], [1, 2, 3, 4], [5, 5, 6, 6]])
    entropy = unigram_entropy(tokens)
    assert entropy.shape == (3,)
    assert entropy[0].item() == pytest.approx(0.0)
    assert entropy[1].item() == pytest.approx(math.log(4))
    assert entropy[2].item() == pytest.approx(math.log(2))


def test_unigram_entropy_rejects_flat_input():
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        unigram_entropy(torch.tensor([1, 2, 3]))
