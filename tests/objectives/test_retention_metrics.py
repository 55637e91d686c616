"""Retention metrics: sequence log-prob, perplexity, per-example JSD, k3 KL estimate."""

from __future__ import annotations

import math

import pytest
import torch

from objectives.retention import k3_kl, perplexity, sequence_logprob, token_jsd


def _logits(seed: int, shape: tuple[int, ...] = (2, 4, 6)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2


MASK = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)


def test_sequence_logprob_sum_mean_and_empty_sequence() -> None:
    logits = _logits(0)
    tokens = torch.tensor([[1, 2, 3, 4], [0, 0, 0, 0]])
    total, mean = sequence_logprob(logits, tokens, MASK)
    expected = torch.log_softmax(logits[0, :3], -1).gather(-1, tokens[0, :3, None]).sum()
    assert total[0].item() == pytest.approx(expected.item(), rel=1e-12)
    assert mean[0].item() == pytest.approx(expected.item() / 3, rel=1e-12)
    assert total[1].item() == 0.0 and math.isnan(mean[1].item())


def test_perplexity_of_uniform_model_is_vocab_size() -> None:
    logits = torch.zeros(1, 5, 7, dtype=torch.float64)
    tokens = torch.randint(0, 7, (1, 5), generator=torch.Generator().manual_seed(0))
    assert perplexity(logits, tokens, torch.ones(1, 5)).item() == pytest.approx(7.0, rel=1e-12)


def test_token_jsd_bounds_symmetry_and_masking() -> None:
    p, q = _logits(1) * 3, _logits(2) * 3
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1]], dtype=torch.bool)
    values = token_jsd(p, q, mask, chunk_size=3)
    assert torch.allclose(values, token_jsd(q, p, mask), atol=1e-12)
    assert bool((values >= 0).all()) and bool((values <= math.log(2)).all())
    assert torch.allclose(token_jsd(p, p.clone(), mask), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    far = torch.tensor([[[80.0, 0.0]]], dtype=torch.float64)
    assert token_jsd(far, far.flip(-1), torch.ones(1, 1)).item() == pytest.approx(math.log(2), abs=1e-6)
    noisy = p.clone()
    noisy[~mask] = 0.0
    assert torch.allclose(token_jsd(noisy, q, mask), values, atol=1e-12)


def test_k3_is_zero_at_identity_nonnegative_and_closed_form() -> None:
    logps = -torch.rand(2, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.allclose(k3_kl(logps, logps.clone(), mask), torch.zeros(2, dtype=torch.float64))
    ref = logps - 0.5
    values = k3_kl(logps, ref, mask)
    assert torch.allclose(values, torch.full((2,), math.exp(-0.5) + 0.5 - 1, dtype=torch.float64))
    assert bool((k3_kl(logps, ref.flip(-1), mask) >= 0).all())


def test_k3_estimates_kl_from_student_samples() -> None:
    """E_{y~p}[exp(r−s) − (r−s) − 1] = KL(p‖q) with s = log p(y), r = log q(y)."""
    generator = torch.Generator().manual_seed(4)
    p_logps = torch.log_softmax(torch.randn(8, generator=generator, dtype=torch.float64), -1)
    q_logps = torch.log_softmax(torch.randn(8, generator=generator, dtype=torch.float64), -1)
    samples = torch.multinomial(p_logps.exp(), 200_000, replacement=True, generator=generator)
    estimate = k3_kl(p_logps[samples][None], q_logps[samples][None], torch.ones(1, 200_000))
    exact = (p_logps.exp() * (p_logps - q_logps)).sum()
    assert estimate.item() == pytest.approx(exact.item(), rel=0.03)
