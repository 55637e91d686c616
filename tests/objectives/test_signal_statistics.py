"""Signal diagnostics math: zero at identical inputs, closed forms on explicit logits, masks inert."""

from __future__ import annotations

import math

import pytest
import torch

from objectives.signals import agreement_spread, logprob_gain, own_sample_divergence, paired_gain, row_logprob

R, T, H, V = 3, 5, 4, 7


def setup(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(R, T, H, generator=g, dtype=torch.float64)
    other = torch.randn(R, T, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, V, (R, T), generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    return hidden, other, weight, tokens, mask


def explicit_logps(hidden, weight, tokens):
    return torch.log_softmax(hidden @ weight.T, -1).gather(-1, tokens[..., None]).squeeze(-1)


def test_identical_prompts_give_zero_gain_and_zero_divergence() -> None:
    hidden, _, weight, tokens, mask = setup()
    rows, m = logprob_gain(hidden, hidden.clone(), weight, tokens, mask)
    assert torch.equal(rows[0], rows[1]) and torch.equal(rows[2], torch.zeros(R, dtype=rows.dtype)) and m["gain"] == 0.0 and m["n"] == 3
    div, m = own_sample_divergence(hidden, hidden.clone(), weight, mask)
    assert torch.allclose(div, torch.zeros(R, dtype=div.dtype), atol=1e-12) and m["divergence"] < 1e-12
    views = explicit_logps(hidden, weight, tokens).expand(4, R, T)
    spread, m = agreement_spread(views, mask)
    assert torch.equal(spread, torch.zeros(2, R, dtype=spread.dtype)) and m["std"] == m["range"] == 0.0
    _, m = paired_gain(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 1.0]))
    assert m["gain"] == 0.0 and m["teacher"] == m["student"] == pytest.approx(2 / 3)


def test_row_logprob_matches_explicit_logits_mean_and_sum() -> None:
    hidden, _, weight, tokens, mask = setup(1)
    per_token = explicit_logps(hidden, weight, tokens)
    count = mask.sum(-1)
    expected_sum = torch.where(mask, per_token, 0.0).sum(-1)
    assert torch.allclose(row_logprob(hidden, weight, tokens, mask, reduction="sum"), expected_sum)
    assert torch.allclose(row_logprob(hidden, weight, tokens, mask), expected_sum / count)
    rows, m = logprob_gain(hidden * 2, hidden, weight, tokens, mask, reduction="sum")
    expected = torch.where(mask, explicit_logps(hidden * 2, weight, tokens), 0.0).sum(-1) - expected_sum
    assert torch.allclose(rows[2], expected) and torch.allclose(rows[1], expected_sum) and m["gain"] == pytest.approx(float(expected.mean()))
    assert m["privileged"] - m["plain"] == pytest.approx(m["gain"])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_divergence_is_kl_student_to_teacher_in_closed_form(temperature: float) -> None:
    student, teacher, weight, _, mask = setup(2)
    log_s = torch.log_softmax(student @ weight.T / temperature, -1)
    log_t = torch.log_softmax(teacher @ weight.T / temperature, -1)
    kl = (log_s.exp() * (log_s - log_t)).sum(-1)  # KL(p_S ‖ p_T), not the forward KL
    expected = torch.where(mask, kl, 0.0).sum(-1) / mask.sum(-1)
    rows, m = own_sample_divergence(student, teacher, weight, mask, temperature=temperature)
    assert torch.allclose(rows, expected)
    forward = (log_t.exp() * (log_t - log_s)).sum(-1)
    assert not torch.allclose(rows, torch.where(mask, forward, 0.0).sum(-1) / mask.sum(-1))
    assert m["divergence"] == pytest.approx(float(expected.mean())) and m["n"] == 3


def test_spread_of_two_views_is_half_root_two_and_range() -> None:
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(R, T, generator=g), torch.randn(R, T, generator=g)
    mask = torch.ones(R, T, dtype=torch.bool)
    rows, m = agreement_spread(torch.stack([a, b]), mask)
    gap = (a - b).abs()
    assert torch.allclose(rows[0], (gap / math.sqrt(2)).mean(-1), atol=1e-6)
    assert torch.allclose(rows[1], gap.mean(-1), atol=1e-6)
    assert m["range"] == pytest.approx(float(gap.mean()), rel=1e-5)
    _, one = agreement_spread(a[None], mask)  # K = 1: no disagreement, never NaN
    assert one["std"] == 0.0 and one["range"] == 0.0


def test_masked_positions_are_inert_and_empty_rows_are_left_out() -> None:
    hidden, other, weight, tokens, mask = setup(4)
    mask[2] = False  # a row with nothing to score
    noise = torch.randn_like(hidden) * 100
    junk_hidden = torch.where(mask[..., None], hidden, noise)
    junk_other = torch.where(mask[..., None], other, -noise)
    junk_tokens = torch.where(mask, tokens, (tokens + 3) % V)
    rows, m = logprob_gain(hidden, other, weight, tokens, mask)
    rows2, m2 = logprob_gain(junk_hidden, junk_other, weight, junk_tokens, mask)
    assert torch.allclose(rows[:, :2], rows2[:, :2]) and rows[:, 2].isnan().all()
    assert m == pytest.approx(m2) and m["n"] == 2 and m["gain"] == pytest.approx(float(rows[2, :2].mean()))
    div, d = own_sample_divergence(hidden, other, weight, mask)
    div2, d2 = own_sample_divergence(junk_hidden, junk_other, weight, mask)
    assert torch.allclose(div[:2], div2[:2]) and d == pytest.approx(d2) and d["n"] == 2
    views = torch.randn(3, R, T, dtype=torch.float64)
    junk_views = torch.where(mask, views, 1e6 * torch.randn_like(views))
    assert agreement_spread(views, mask)[1] == pytest.approx(agreement_spread(junk_views, mask)[1])


def test_bad_arguments_are_one_line_errors() -> None:
    hidden, other, weight, tokens, mask = setup()
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        row_logprob(hidden, weight, tokens, mask, reduction="max")
    with pytest.raises(ValueError, match="view_logps must be"):
        agreement_spread(torch.zeros(R, T), mask)
    with pytest.raises(ValueError):
        logprob_gain(hidden, other[:2], weight, tokens, mask)
