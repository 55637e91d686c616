"""Per-token divergence clipping: bounded values, zero gradient above the cap, quantile fraction."""

from __future__ import annotations

import pytest
import torch

from objectives.clipping import clip_divergence


def test_fixed_cap_bounds_values_and_zeroes_gradient_above() -> None:
    per_token = torch.tensor([0.5, 2.0, 9.0, 20.0, 3.0], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([1, 1, 1, 1, 0], dtype=torch.bool)
    clipped, metrics = clip_divergence(per_token, mask, max_value=5.0)
    assert torch.equal(clipped.detach(), torch.tensor([0.5, 2.0, 5.0, 5.0, 3.0], dtype=torch.float64))
    clipped.sum().backward()
    assert torch.equal(per_token.grad, torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0], dtype=torch.float64))
    assert metrics == {"clip/fraction": 0.5, "clip/threshold": 5.0}


def test_quantile_cap_clips_about_one_minus_q_of_masked_tokens() -> None:
    generator = torch.Generator().manual_seed(0)
    per_token = torch.empty(20000, dtype=torch.float64).exponential_(generator=generator)
    mask = torch.ones(20000, dtype=torch.bool)
    mask[:5000] = False
    per_token[:5000] = 1e6  # huge values on masked tokens must not move the threshold
    clipped, metrics = clip_divergence(per_token, mask, quantile=0.9)
    expected = torch.quantile(per_token[5000:], 0.9).item()
    assert metrics["clip/threshold"] == pytest.approx(expected, rel=1e-12)
    assert metrics["clip/fraction"] == pytest.approx(0.1, abs=1e-3)
    assert clipped.max().item() == pytest.approx(expected, rel=1e-12)


def test_quantile_threshold_is_detached() -> None:
    per_token = torch.rand(
        50, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    ).requires_grad_()
    clipped, _ = clip_divergence(per_token, torch.ones(50), quantile=0.8)
    clipped.sum().backward()
    assert set(per_token.grad.unique().tolist()) <= {0.0, 1.0}
    assert per_token.grad.sum().item() == pytest.approx(40.0, abs=1.0)


def test_argument_rules() -> None:
    per_token = torch.rand(4)
    with pytest.raises(ValueError, match="either"):
        clip_divergence(per_token, torch.ones(4), max_value=1.0, quantile=0.9)
    with pytest.raises(ValueError, match="max_value"):
        clip_divergence(per_token, torch.ones(4), max_value=0.0)
    with pytest.raises(ValueError, match="quantile"):
        clip_divergence(per_token, torch.ones(4), quantile=1.5)
    same, metrics = clip_divergence(per_token, torch.ones(4))
    assert same is per_token and metrics["clip/fraction"] == 0.0


def test_step_threshold_is_the_quantile_over_every_micro_batch() -> None:
    from objectives.clipping import divergence_quantile

    generator = torch.Generator().manual_seed(2)
    parts = [torch.rand(n, generator=generator, dtype=torch.float64) * (i + 1) for i, n in enumerate((3, 9, 1, 5))]
    kappa = divergence_quantile(parts, 0.7)
    assert kappa == pytest.approx(torch.quantile(torch.cat(parts), 0.7).item(), rel=1e-12)
    # each micro-batch clipped at the step's κ == the whole step clipped at once (values and gradients)
    whole = torch.cat(parts).requires_grad_()
    clipped_whole, _ = clip_divergence(whole, torch.ones_like(whole, dtype=torch.bool), quantile=0.7)
    (g_whole,) = torch.autograd.grad(clipped_whole.sum(), whole)
    leaves = [p.clone().requires_grad_() for p in parts]
    pieces = [clip_divergence(p, torch.ones_like(p, dtype=torch.bool), threshold=kappa)[0] for p in leaves]
    grads = torch.autograd.grad(sum(x.sum() for x in pieces), leaves)
    assert torch.allclose(torch.cat(pieces), clipped_whole) and torch.equal(torch.cat(grads), g_whole)
    per_batch = torch.cat([clip_divergence(p, torch.ones_like(p, dtype=torch.bool), quantile=0.7)[0] for p in parts])
    assert not torch.allclose(per_batch, clipped_whole)  # a micro-batch quantile would clip differently
    assert divergence_quantile([torch.zeros(0)], 0.7) == float("inf")


def test_reference_values_decide_which_tokens_are_clipped() -> None:
    per_token = torch.tensor([1.0, 2.0 + 1e-12, 3.0], dtype=torch.float64, requires_grad=True)
    reference = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    clipped, metrics = clip_divergence(per_token, torch.ones(3, dtype=torch.bool), threshold=2.0, reference=reference)
    (grad,) = torch.autograd.grad(clipped.sum(), per_token)
    assert grad.tolist() == [1.0, 1.0, 0.0]  # the token at κ by its reference value keeps its gradient
    assert clipped.tolist() == [1.0, 2.0 + 1e-12, 2.0] and metrics["clip/fraction"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="either"):
        clip_divergence(per_token, torch.ones(3), quantile=0.5, threshold=2.0)
