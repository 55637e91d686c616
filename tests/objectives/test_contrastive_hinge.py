"""Token contrastive hinge max(0, μ + |s−g| − |s−n|)."""

from __future__ import annotations

import pytest
import torch

from objectives.contrastive import token_contrastive


def _t(values: list[float], grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def test_zero_when_margin_is_satisfied() -> None:
    student, good, bad = _t([-1.0, -2.0]), _t([-1.1, -2.0]), _t([-3.0, -0.5])
    loss, metrics = token_contrastive(student, good, bad, torch.ones(2), margin=0.5)
    assert loss.item() == 0.0
    assert metrics["contrastive/violation_fraction"] == 0.0


def test_known_value_and_metrics() -> None:
    # token 0: |s-g| = 0.2, |s-n| = 0.5 -> hinge 0.5 + 0.2 - 0.5 = 0.2; token 1 satisfied; token 2 masked.
    student, good, bad = _t([-1.0, -2.0, -1.0]), _t([-1.2, -2.0, -9.0]), _t([-1.5, -4.0, -1.0])
    mask = torch.tensor([1, 1, 0], dtype=torch.bool)
    loss, metrics = token_contrastive(student, good, bad, mask, margin=0.5)
    assert loss.item() == pytest.approx(0.1)
    assert metrics["contrastive/violation_fraction"] == 0.5
    assert metrics["contrastive/gap_mean"] == pytest.approx((0.3 + 2.0) / 2)
    scaled, _ = token_contrastive(student, good, bad, mask, margin=0.5, normalizer=4)
    assert scaled.item() == pytest.approx(0.05)


def test_teachers_are_constants_and_masked_tokens_inert() -> None:
    # token 0 sits between g and n: hinge 0.5 + 0.1 - 0.2 = 0.4, d/ds = (sign(s-g) - sign(s-n)) / 2 = -1.
    student, good, bad = (
        _t([-1.3, -2.0, -1.0], True),
        _t([-1.2, -2.5, 0.0], True),
        _t([-1.5, -2.1, 7.0], True),
    )
    mask = torch.tensor([1, 1, 0], dtype=torch.bool)
    loss, _ = token_contrastive(student, good, bad, mask, margin=0.5)
    loss.backward()
    assert good.grad is None and bad.grad is None
    assert student.grad[0].item() == pytest.approx(-1.0) and student.grad[2].item() == 0.0
    moved = student.detach().clone()
    moved[2] = 100.0
    assert token_contrastive(moved, good, bad, mask, margin=0.5)[0].item() == pytest.approx(loss.item())


def test_gradcheck_away_from_kinks() -> None:
    generator = torch.Generator().manual_seed(0)
    student = -torch.rand(2, 5, generator=generator, dtype=torch.float64) * 3
    good = -torch.rand(2, 5, generator=generator, dtype=torch.float64) * 3
    bad = -torch.rand(2, 5, generator=generator, dtype=torch.float64) * 3
    mask = torch.rand(2, 5, generator=generator) > 0.3
    assert torch.autograd.gradcheck(
        lambda s: token_contrastive(s, good, bad, mask, margin=0.3)[0], (student.requires_grad_(),)
    )


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="good_logps"):
        token_contrastive(_t([0.0]), _t([0.0, 1.0]), _t([0.0]), torch.ones(1))
    with pytest.raises(ValueError, match="margin"):
        token_contrastive(_t([0.0]), _t([0.0]), _t([0.0]), torch.ones(1), margin=-1.0)


def test_rows_without_a_negative_neither_add_nor_divide() -> None:
    """A row outside the mask (no bad teacher) leaves the term and the other rows' gradient unchanged."""
    generator = torch.Generator().manual_seed(3)
    student = -torch.rand(3, 4, generator=generator, dtype=torch.float64) * 3
    good, bad = (-torch.rand(3, 4, generator=generator, dtype=torch.float64) * 3 for _ in range(2))
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    has_negative = torch.tensor([True, True, False])
    for reduction in ("token", "sequence"):
        two = student[:2].clone().requires_grad_()
        alone, _ = token_contrastive(two, good[:2], bad[:2], mask[:2], margin=2.0, reduction=reduction)
        (grad_alone,) = torch.autograd.grad(alone, two)
        three = student.clone().requires_grad_()
        mixed, _ = token_contrastive(three, good, bad, mask & has_negative[:, None], margin=2.0, reduction=reduction)
        (grad_mixed,) = torch.autograd.grad(mixed, three)
        assert alone.item() > 0 and mixed.item() == pytest.approx(alone.item(), rel=1e-12)
        assert torch.allclose(grad_mixed[:2], grad_alone) and bool((grad_mixed[2] == 0).all())


def test_sequence_reduction_is_the_mean_of_row_means() -> None:
    student, good = _t([[-1.0, -1.0, -1.0], [-1.0, 0.0, 0.0]]), _t([[-1.0, -1.0, -1.0], [-1.0, 0.0, 0.0]])
    bad = _t([[-1.0, -1.0, -1.0], [-1.0, 0.0, 0.0]])  # gap 0 everywhere: hinge = margin on every token
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    hinge = torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.0, 0.0]])
    assert hinge.sum().item() / 4 == token_contrastive(student, good, bad, mask, margin=0.5)[0].item()
    student = _t([[-1.0, -1.0, -1.0], [-1.0, 0.0, 0.0]])
    bad = _t([[-3.0, -1.0, -1.0], [-1.0, 0.0, 0.0]])  # token (0, 0) satisfied: gap 2 > μ
    token, _ = token_contrastive(student, good, bad, mask, margin=0.5)
    sequence, _ = token_contrastive(student, good, bad, mask, margin=0.5, reduction="sequence")
    assert token.item() == pytest.approx((0.0 + 0.5 + 0.5 + 0.5) / 4)
    assert sequence.item() == pytest.approx(((0.0 + 0.5 + 0.5) / 3 + 0.5) / 2)
