"""Per-token divergences: closed forms, endpoints of β, temperature, top-k, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from objectives.divergence import divergence_from_logps, token_divergence, topk_token_divergence

KINDS = ["forward_kl", "reverse_kl", "jsd"]


def _logits(
    n: int, v: int, seed: int, dtype: torch.dtype = torch.float64, scale: float = 2.0
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=generator, dtype=dtype) * scale


def _from_probs(probs: list[float]) -> torch.Tensor:
    return torch.tensor([probs], dtype=torch.float64).log()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_zero_for_identical_inputs(kind: str, beta: float, temperature: float) -> None:
    logits = _logits(6, 11, seed=0)
    values = token_divergence(logits, logits.clone(), kind=kind, beta=beta, temperature=temperature)
    assert torch.allclose(values, torch.zeros(6, dtype=torch.float64), atol=1e-12)
    topk = topk_token_divergence(logits, logits.clone(), k=3, kind=kind, beta=beta, temperature=temperature)
    assert torch.allclose(topk, torch.zeros(6, dtype=torch.float64), atol=1e-12)


def test_forward_and_reverse_kl_closed_forms() -> None:
    student = _from_probs([0.25, 0.75])
    teacher = _from_probs([0.5, 0.5])
    forward = token_divergence(student, teacher, kind="forward_kl")
    reverse = token_divergence(student, teacher, kind="reverse_kl")
    # KL(p_T||p_S) = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln(4/3)
    assert forward.item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-12)
    # KL(p_S||p_T) = 0.25 ln(0.25/0.5) + 0.75 ln(0.75/0.5)
    assert reverse.item() == pytest.approx(0.75 * math.log(1.5) - 0.25 * math.log(2), abs=1e-12)


def test_jsd_closed_form_symmetric_and_bounded() -> None:
    student = _from_probs([0.25, 0.75])
    teacher = _from_probs([0.5, 0.5])
    mix = [0.375, 0.625]
    expected = 0.5 * (0.5 * math.log(0.5 / mix[0]) + 0.5 * math.log(0.5 / mix[1])) + 0.5 * (
        0.25 * math.log(0.25 / mix[0]) + 0.75 * math.log(0.75 / mix[1])
    )
    value = token_divergence(student, teacher, kind="jsd", beta=0.5)
    assert value.item() == pytest.approx(expected, abs=1e-12)

    a, b = _logits(32, 17, seed=1, scale=5.0), _logits(32, 17, seed=2, scale=5.0)
    forward = token_divergence(a, b, kind="jsd", beta=0.5)
    backward = token_divergence(b, a, kind="jsd", beta=0.5)
    assert torch.allclose(forward, backward, atol=1e-12)
    assert bool((forward <= math.log(2) + 1e-12).all()) and bool((forward >= 0).all())

    disjoint = token_divergence(
        torch.tensor([[60.0, 0.0]]), torch.tensor([[0.0, 60.0]]), kind="jsd", beta=0.5
    )
    assert disjoint.item() == pytest.approx(math.log(2), abs=1e-5)


def test_jsd_endpoints_are_exactly_the_kls() -> None:
    student, teacher = _logits(8, 13, seed=3), _logits(8, 13, seed=4)
    forward = token_divergence(student, teacher, kind="forward_kl")
    reverse = token_divergence(student, teacher, kind="reverse_kl")
    assert torch.equal(token_divergence(student, teacher, kind="jsd", beta=0.0), forward)
    assert torch.equal(token_divergence(student, teacher, kind="jsd", beta=1.0), reverse)
    assert bool(torch.isfinite(forward).all()) and bool(torch.isfinite(reverse).all())


def test_jsd_limits_pin_the_direction_of_each_endpoint() -> None:
    """ℓ(β)/β → KL(p_T‖p_S) as β→0 and ℓ(β)/(1−β) → KL(p_S‖p_T) as β→1 (the reason for the mapping)."""
    student, teacher = _logits(8, 13, seed=5), _logits(8, 13, seed=6)
    forward = token_divergence(student, teacher, kind="forward_kl")
    reverse = token_divergence(student, teacher, kind="reverse_kl")
    eps = 1e-6
    near_zero = token_divergence(student, teacher, kind="jsd", beta=eps) / eps
    near_one = token_divergence(student, teacher, kind="jsd", beta=1 - eps) / eps
    assert torch.allclose(near_zero, forward, rtol=1e-3)
    assert torch.allclose(near_one, reverse, rtol=1e-3)
    assert not torch.allclose(forward, reverse, rtol=1e-2)


def test_matches_naive_loop() -> None:
    student, teacher = _logits(3, 5, seed=7), _logits(3, 5, seed=8)
    beta, temperature = 0.3, 0.7
    values = token_divergence(student, teacher, kind="jsd", beta=beta, temperature=temperature)
    for row in range(3):
        ps = torch.softmax(student[row] / temperature, -1).tolist()
        pt = torch.softmax(teacher[row] / temperature, -1).tolist()
        mix = [(1 - beta) * s + beta * t for s, t in zip(ps, pt, strict=True)]
        kl_t = sum(t * math.log(t / m) for t, m in zip(pt, mix, strict=True))
        kl_s = sum(s * math.log(s / m) for s, m in zip(ps, mix, strict=True))
        assert values[row].item() == pytest.approx(beta * kl_t + (1 - beta) * kl_s, rel=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_temperature_is_honoured(kind: str) -> None:
    student, teacher = _logits(6, 9, seed=9), _logits(6, 9, seed=10)
    at_one = token_divergence(student, teacher, kind=kind, temperature=1.0)
    at_two = token_divergence(student, teacher, kind=kind, temperature=2.0)
    assert not torch.allclose(at_one, at_two, rtol=1e-3)
    assert torch.allclose(at_two, token_divergence(student / 2, teacher / 2, kind=kind), atol=1e-12)
    topk = topk_token_divergence(student, teacher, k=4, kind=kind, temperature=2.0)
    assert torch.allclose(topk, topk_token_divergence(student / 2, teacher / 2, k=4, kind=kind), atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_float64(kind: str) -> None:
    student = _logits(4, 6, seed=11).requires_grad_()
    teacher = _logits(4, 6, seed=12)
    assert torch.autograd.gradcheck(
        lambda s: token_divergence(s, teacher, kind=kind, beta=0.3, temperature=0.7), (student,)
    )


def test_teacher_receives_no_gradient() -> None:
    student = _logits(4, 6, seed=13).requires_grad_()
    teacher = _logits(4, 6, seed=14).requires_grad_()
    token_divergence(student, teacher, kind="jsd").sum().backward()
    assert teacher.grad is None and student.grad is not None


def test_bf16_is_upcast_to_float32() -> None:
    student = _logits(5, 64, seed=15, dtype=torch.float32)
    teacher = _logits(5, 64, seed=16, dtype=torch.float32)
    low = token_divergence(student.bfloat16(), teacher.bfloat16(), kind="forward_kl")
    reference = token_divergence(student.bfloat16().float(), teacher.bfloat16().float(), kind="forward_kl")
    assert low.dtype == torch.float32
    assert torch.equal(low, reference)


@pytest.mark.parametrize("kind", KINDS)
def test_topk_is_a_monotone_lower_bound_exact_at_full_vocab(kind: str) -> None:
    vocab = 12
    student, teacher = _logits(7, vocab, seed=17), _logits(7, vocab, seed=18)
    exact = token_divergence(student, teacher, kind=kind, beta=0.4, temperature=0.8)
    previous = torch.zeros_like(exact)
    for k in range(1, vocab):
        approx = topk_token_divergence(student, teacher, k=k, kind=kind, beta=0.4, temperature=0.8)
        assert bool((approx <= exact + 1e-12).all())
        assert bool((approx >= previous - 1e-12).all())
        previous = approx
    assert torch.allclose(previous, exact, atol=1e-12)  # k = V-1: the tail is a single token
    full = topk_token_divergence(student, teacher, k=vocab, kind=kind, beta=0.4, temperature=0.8)
    assert torch.allclose(full, exact, atol=1e-12)


def test_topk_gradcheck() -> None:
    student = _logits(3, 8, seed=19).requires_grad_()
    teacher = _logits(3, 8, seed=20)
    assert torch.autograd.gradcheck(lambda s: topk_token_divergence(s, teacher, k=3, kind="jsd"), (student,))


def test_divergence_from_logps_accepts_leading_dims() -> None:
    student = torch.log_softmax(_logits(6, 5, seed=21), -1).reshape(2, 3, 5)
    teacher = torch.log_softmax(_logits(6, 5, seed=22), -1).reshape(2, 3, 5)
    values = divergence_from_logps(student, teacher, kind="reverse_kl")
    assert values.shape == (2, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "kl"}, "kind"),
        ({"kind": "jsd", "beta": 1.5}, "beta"),
        ({"temperature": 0.0}, "temperature"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs: dict, message: str) -> None:
    logits = _logits(2, 3, seed=23)
    with pytest.raises(ValueError, match=message):
        token_divergence(logits, logits, **kwargs)


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="teacher logits"):
        token_divergence(_logits(2, 3, seed=0), _logits(2, 4, seed=0))
