"""Agreement weights (token and sequence level) and the weighted token mean that applies them."""

from __future__ import annotations

import math

import pytest
import torch

from objectives.agreement import sequence_agreement_weights, token_agreement_weights, weighted_token_mean
from objectives.reduction import loss_denominator


def _views(k: int, n: int, seed: int = 0) -> torch.Tensor:
    return -torch.rand(k, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3


@pytest.mark.parametrize("stat", ["var", "range"])
def test_single_view_gives_exact_ones(stat: str) -> None:
    mask = torch.ones(7, dtype=torch.bool)
    weights, metrics = token_agreement_weights(_views(1, 7), mask, gamma=1.0, stat=stat)
    assert torch.equal(weights, torch.ones(7, dtype=torch.float64))
    assert all(math.isfinite(value) for value in metrics.values())
    seq_weights, _ = sequence_agreement_weights(
        _views(1, 6).reshape(1, 2, 3), mask[:6].reshape(2, 3), gamma=1.0, stat=stat
    )
    assert torch.equal(seq_weights, torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize(("stat", "expected"), [("var", [0.8, 0.5, 1.0]), ("range", [2 / 3, 0.5, 1.0])])
def test_two_views_closed_form(stat: str, expected: list[float]) -> None:
    # var (unbiased, K=2) = (a-b)^2/2 = [0.5, 2, 0]; range = [1, 2, 0]; q=1 -> s = max d = 2.
    views = torch.tensor([[0.0, 0.0, 0.0], [-1.0, -2.0, 0.0]], dtype=torch.float64)
    weights, metrics = token_agreement_weights(views, torch.ones(3), gamma=1.0, stat=stat, quantile=1.0)
    assert torch.allclose(weights, torch.tensor(expected, dtype=torch.float64), atol=1e-12)
    assert metrics["agreement/scale"] == pytest.approx(2.0)
    assert metrics["agreement/weight_mean"] == pytest.approx(sum(expected) / 3)


def test_gamma_zero_gives_ones() -> None:
    weights, _ = token_agreement_weights(_views(3, 9), torch.ones(9), gamma=0.0)
    assert torch.equal(weights, torch.ones(9, dtype=torch.float64))
    seq, _ = sequence_agreement_weights(_views(3, 9).reshape(3, 3, 3), torch.ones(3, 3), gamma=0.0)
    assert torch.equal(seq, torch.ones(3, dtype=torch.float64))


def test_cap_and_floor_bound_the_weights() -> None:
    views = _views(3, 50)
    views[0, 0] = -100.0  # one extreme outlier token
    mask = torch.ones(50, dtype=torch.bool)
    capped, _ = token_agreement_weights(views, mask, gamma=1.0, cap=10.0, floor=0.01)
    assert capped[0].item() == pytest.approx(1 / 11)  # d̂ capped at 10
    assert bool((capped >= 1 / 11 - 1e-12).all()) and bool((capped <= 1).all())
    floored, metrics = token_agreement_weights(views, mask, gamma=1000.0, cap=10.0, floor=0.2)
    assert floored.min().item() == pytest.approx(0.2)
    assert metrics["agreement/floored_fraction"] > 0


def test_masked_positions_are_inert_and_excluded_from_the_quantile() -> None:
    views = _views(3, 10)
    mask = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0, 1, 1], dtype=torch.bool)
    weights, _ = token_agreement_weights(views, mask, gamma=2.0)
    noisy = views.clone()
    noisy[:, ~mask] = torch.tensor([[-50.0, 0.0], [0.0, -80.0], [-3.0, -1.0]], dtype=torch.float64)
    noisy_weights, _ = token_agreement_weights(noisy, mask, gamma=2.0)
    assert torch.equal(noisy_weights, weights)
    assert bool((weights[~mask] == 1).all())
    empty, metrics = token_agreement_weights(views, torch.zeros(10, dtype=torch.bool), gamma=2.0)
    assert torch.equal(empty, torch.ones(10, dtype=torch.float64)) and metrics["agreement/weight_mean"] == 0.0


def test_weights_carry_no_gradient() -> None:
    views = _views(3, 6).requires_grad_()
    weights, _ = token_agreement_weights(views, torch.ones(6), gamma=1.0)
    seq, _ = sequence_agreement_weights(views.reshape(3, 2, 3), torch.ones(2, 3), gamma=1.0)
    assert not weights.requires_grad and not seq.requires_grad


def test_token_weights_accept_batch_shape() -> None:
    views = _views(3, 12)
    mask = torch.ones(12, dtype=torch.bool)
    flat, _ = token_agreement_weights(views, mask, gamma=1.0)
    shaped, _ = token_agreement_weights(views.reshape(3, 3, 4), mask.reshape(3, 4), gamma=1.0)
    assert torch.equal(shaped.reshape(-1), flat)


@pytest.mark.parametrize(("stat", "spread"), [("var", 0.25), ("range", 1.0)])
def test_sequence_weights_closed_form(stat: str, spread: float) -> None:
    # Sequence 0: view means 0 and -1 (masked position ignored); sequence 1: identical views.
    views = torch.tensor(
        [[[0.0, 0.0, -9.0], [-1.0, -1.0, -1.0]], [[-1.0, -1.0, 5.0], [-1.0, -1.0, -1.0]]], dtype=torch.float64
    )
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    weights, _ = sequence_agreement_weights(views, mask, gamma=2.0, stat=stat)
    assert torch.allclose(weights, torch.tensor([math.exp(-2.0 * spread), 1.0], dtype=torch.float64))
    tiny, _ = sequence_agreement_weights(views * 1e4, mask, gamma=2.0, stat=stat)
    assert tiny[0].item() == pytest.approx(1e-6)


def _reference_kd(per_token: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """REFERENCE §2.7: (1/B) Σ_b Σ_t m·w·ℓ / max(Σ_t m·w, 1) — the normalisation that cancels."""
    weighted = weights[:, None] * mask
    return ((weighted * per_token).sum(-1) / weighted.sum(-1).clamp(min=1)).mean()


def test_sequence_weight_matters_unlike_the_reference_normalisation() -> None:
    per_token = torch.rand(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    full = torch.ones(3, dtype=torch.float64)
    half = torch.tensor([1.0, 0.5, 1.0], dtype=torch.float64)
    ours_full, _ = weighted_token_mean(per_token, mask, seq_weights=full)
    ours_half, metrics = weighted_token_mean(per_token, mask, seq_weights=half)
    contribution = per_token[1].sum() / mask.sum()
    assert (ours_full - ours_half).item() == pytest.approx(0.5 * contribution.item(), rel=1e-12)
    assert metrics["reduce/weight_mean"] == pytest.approx((10 - 2.5) / 10)
    ref_full = _reference_kd(per_token, mask, full)
    ref_half = _reference_kd(per_token, mask, half)
    assert ref_full.item() == pytest.approx(ref_half.item(), rel=1e-12)  # the §8.2 defect
    seq_full, _ = weighted_token_mean(per_token, mask, seq_weights=full, reduction="sequence")
    seq_half, _ = weighted_token_mean(per_token, mask, seq_weights=half, reduction="sequence")
    assert (seq_full - seq_half).item() == pytest.approx(0.5 * per_token[1].mean().item() / 3, rel=1e-12)


def test_token_weights_closed_form() -> None:
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    token_weights = torch.tensor([[0.5, 1.0, 0.1], [1.0, 0.2, 0.25]], dtype=torch.float64)
    value, metrics = weighted_token_mean(
        per_token, mask, token_weights, torch.tensor([1.0, 2.0], dtype=torch.float64)
    )
    assert value.item() == pytest.approx((0.5 + 2.0 + 2 * 4.0 + 2 * 0.25 * 6.0) / 4)
    assert metrics["reduce/tokens"] == 4.0


def test_weight_sum_normaliser_closed_form() -> None:
    """Σw normaliser (the reference's): token level Σ w·ℓ / Σ w; per sequence, token weights within the
    sequence and sequence weights across sequences."""
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    tok = torch.tensor([[0.5, 1.0, 0.1], [1.0, 0.2, 0.25]], dtype=torch.float64)
    seq = torch.tensor([1.0, 2.0], dtype=torch.float64)
    value, _ = weighted_token_mean(per_token, mask, tok, seq, normalize="weight_sum")
    assert value.item() == pytest.approx((0.5 + 2.0 + 2 * 4.0 + 2 * 0.25 * 6.0) / (0.5 + 1.0 + 2 * 1.0 + 2 * 0.25))
    count, _ = weighted_token_mean(per_token, mask, tok, seq, normalize="count")
    assert count.item() == pytest.approx((0.5 + 2.0 + 2 * 4.0 + 2 * 0.25 * 6.0) / 4)
    first, second = (0.5 * 1 + 1.0 * 2) / 1.5, (1.0 * 4 + 0.25 * 6) / 1.25
    per_seq, _ = weighted_token_mean(per_token, mask, tok, seq, reduction="sequence", normalize="weight_sum")
    assert per_seq.item() == pytest.approx((1.0 * first + 2.0 * second) / 3.0)
    per_seq_count, _ = weighted_token_mean(per_token, mask, tok, seq, reduction="sequence", normalize="count")
    assert per_seq_count.item() == pytest.approx((1.0 * (0.5 + 2.0) / 2 + 2.0 * (4.0 + 1.5) / 2) / 2)
    # uniform weights: weight_sum gives the unweighted mean back, count shrinks by the weight
    half = torch.full_like(per_token, 0.5)
    plain, _ = weighted_token_mean(per_token, mask)
    assert weighted_token_mean(per_token, mask, half, normalize="weight_sum")[0].item() == pytest.approx(plain.item())
    assert weighted_token_mean(per_token, mask, half, normalize="count")[0].item() == pytest.approx(0.5 * plain.item())


def test_sequence_reduction_averages_rows_that_have_tokens() -> None:
    per_token = torch.tensor([[1.0, 3.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    value, _ = weighted_token_mean(per_token, mask, reduction="sequence")
    assert value.item() == pytest.approx((2.0 + 5.0) / 2)  # the empty third row neither adds nor divides
    token, _ = weighted_token_mean(per_token, mask)
    assert token.item() == pytest.approx(9.0 / 3)


@pytest.mark.parametrize("reduction", ["token", "sequence"])
@pytest.mark.parametrize("normalize", ["count", "weight_sum"])
def test_gradient_accumulation_with_global_normalizer_equals_full_batch(reduction: str, normalize: str) -> None:
    """Micro-batches of uneven lengths divided by the summed `loss_denominator` add up to the full batch."""
    generator = torch.Generator().manual_seed(1)
    per_token = torch.rand(8, 6, generator=generator, dtype=torch.float64).requires_grad_()
    mask = torch.rand(8, 6, generator=generator) > 0.4
    mask[:, 0] = True
    mask[3] = False  # a row without loss tokens
    token_weights = torch.rand(8, 6, generator=generator, dtype=torch.float64)
    seq_weights = torch.rand(8, generator=generator, dtype=torch.float64)
    kw = {"reduction": reduction, "normalize": normalize}
    full, _ = weighted_token_mean(per_token, mask, token_weights, seq_weights, **kw)
    (full_grad,) = torch.autograd.grad(full, per_token)
    parts = [slice(i, i + 2) for i in range(0, 8, 2)]
    normalizer = sum(loss_denominator(mask[p], token_weights[p], seq_weights[p], **kw) for p in parts)
    micro = [weighted_token_mean(per_token[p], mask[p], token_weights[p], seq_weights[p], normalizer=normalizer,
                                 **kw)[0] for p in parts]
    accumulated = sum(micro)
    (micro_grad,) = torch.autograd.grad(accumulated, per_token)
    assert accumulated.item() == pytest.approx(full.item(), rel=1e-12)
    assert torch.allclose(micro_grad, full_grad, atol=1e-15)
    local = sum(weighted_token_mean(per_token[p], mask[p], token_weights[p], seq_weights[p], **kw)[0]
                for p in parts) / 4
    assert local.item() != pytest.approx(full.item(), rel=1e-6)  # local means would not add up


def test_weighted_mean_masked_positions_inert_and_gradcheck() -> None:
    per_token = torch.rand(2, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    poisoned = per_token.clone()
    poisoned[~mask] = float("nan")
    poisoned.requires_grad_()
    value, _ = weighted_token_mean(poisoned, mask, seq_weights=torch.tensor([0.3, 1.0], dtype=torch.float64))
    value.backward()
    assert math.isfinite(value.item())
    assert bool((poisoned.grad[~mask] == 0).all())
    token_weights = torch.linspace(0.1, 1.0, 8, dtype=torch.float64).reshape(2, 4)
    seq_weights = torch.tensor([0.3, 1.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: weighted_token_mean(x, mask, token_weights, seq_weights)[0], (per_token.requires_grad_(),)
    )


def test_invalid_arguments() -> None:
    views = _views(2, 4)
    with pytest.raises(ValueError, match="gamma"):
        token_agreement_weights(views, torch.ones(4), gamma=-1.0)
    with pytest.raises(ValueError, match="stat"):
        token_agreement_weights(views, torch.ones(4), gamma=1.0, stat="std")
    with pytest.raises(ValueError, match="mask shape"):
        token_agreement_weights(views, torch.ones(3), gamma=1.0)
    with pytest.raises(ValueError, match="normalize"):
        weighted_token_mean(torch.ones(2, 2), torch.ones(2, 2), normalize="tokens")
    with pytest.raises(ValueError, match="reduction"):
        weighted_token_mean(torch.ones(2, 2), torch.ones(2, 2), reduction="batch")
    with pytest.raises(ValueError, match="needs \\(B, T\\)"):
        weighted_token_mean(torch.ones(4), torch.ones(4), reduction="sequence")
    with pytest.raises(ValueError, match="seq_weights"):
        weighted_token_mean(torch.ones(2, 2), torch.ones(2, 2), seq_weights=torch.ones(3))
