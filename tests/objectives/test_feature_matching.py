"""Masked MSE between student and teacher final hidden states."""

from __future__ import annotations

import pytest
import torch

from objectives.features import feature_matching


def _hidden(seed: int) -> torch.Tensor:
    return torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_zero_for_identical_states() -> None:
    hidden = _hidden(0)
    loss, metrics = feature_matching(hidden, hidden.clone(), torch.ones(2, 3))
    assert loss.item() == 0.0 and metrics["features/cosine"] == pytest.approx(1.0)


def test_known_value() -> None:
    student = torch.zeros(1, 2, 2, dtype=torch.float64)
    teacher = torch.tensor([[[1.0, 3.0], [2.0, 2.0]]], dtype=torch.float64)
    loss, _ = feature_matching(student, teacher, torch.tensor([[1, 0]]))
    assert loss.item() == pytest.approx((1 + 9) / 2)
    both, _ = feature_matching(student, teacher, torch.tensor([[1, 1]]), normalizer=4)
    assert both.item() == pytest.approx((5 + 4) / 4)


def test_masked_positions_inert_and_teacher_detached() -> None:
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    student, teacher = _hidden(1).requires_grad_(), _hidden(2).requires_grad_()
    loss, _ = feature_matching(student, teacher, mask)
    loss.backward()
    noisy_student = student.detach().clone()
    noisy_student[~mask] = 1e6
    noisy, _ = feature_matching(noisy_student, teacher.detach(), mask)
    assert noisy.item() == pytest.approx(loss.item(), rel=1e-12)
    assert teacher.grad is None
    assert bool((student.grad[~mask] == 0).all()) and bool((student.grad[mask] != 0).any())


def test_gradcheck() -> None:
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    teacher = _hidden(3)
    assert torch.autograd.gradcheck(
        lambda s: feature_matching(s, teacher, mask)[0], (_hidden(4).requires_grad_(),)
    )


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="teacher_hidden"):
        feature_matching(_hidden(0), _hidden(0)[:, :2], torch.ones(2, 3))


def test_sequence_reduction_is_the_mean_of_row_means_and_adds_up_over_micro_batches() -> None:
    from objectives.reduction import loss_denominator

    generator = torch.Generator().manual_seed(5)
    student = torch.randn(4, 5, 3, generator=generator, dtype=torch.float64).requires_grad_()
    teacher = torch.randn(4, 5, 3, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    per_token = (student - teacher).pow(2).mean(-1)
    expected = torch.stack([per_token[b][mask[b]].mean() for b in range(4)]).mean()
    full, _ = feature_matching(student, teacher, mask, reduction="sequence")
    assert full.item() == pytest.approx(expected.item(), rel=1e-12)
    token, _ = feature_matching(student, teacher, mask)
    assert token.item() == pytest.approx(per_token[mask].mean().item(), rel=1e-12)
    for reduction in ("token", "sequence"):
        whole, _ = feature_matching(student, teacher, mask, reduction=reduction)
        (g_full,) = torch.autograd.grad(whole, student)
        n = sum(loss_denominator(mask[i:i + 2], reduction=reduction) for i in (0, 2))
        parts = sum(feature_matching(student[i:i + 2], teacher[i:i + 2], mask[i:i + 2], reduction=reduction,
                                     normalizer=n)[0] for i in (0, 2))
        (g_parts,) = torch.autograd.grad(parts, student)
        assert parts.item() == pytest.approx(whole.item(), rel=1e-12) and torch.allclose(g_parts, g_full)
