"""Chunked LM-head losses equal their dense versions in values and gradients."""

from __future__ import annotations

import pytest
import torch

from objectives.chunked import chunked_head_apply
from objectives.divergence import chunked_token_divergence, divergence_and_logit_grad, token_divergence
from objectives.logprobs import chunked_cross_entropy, chunked_gather_logps, cross_entropy, gather_logps

KINDS = [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3), ("jsd", 0.0), ("jsd", 1.0)]


def _inputs(n: int = 10, hidden: int = 6, vocab: int = 13, seed: int = 0, dtype: torch.dtype = torch.float64):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(n, hidden, generator=generator, dtype=dtype)
    teacher = torch.randn(n, hidden, generator=generator, dtype=dtype)
    weight = torch.randn(vocab, hidden, generator=generator, dtype=dtype)
    teacher_weight = torch.randn(vocab, hidden, generator=generator, dtype=dtype)
    grad_out = torch.randn(n, generator=generator, dtype=dtype)
    return student, teacher, weight, teacher_weight, grad_out


@pytest.mark.parametrize(("kind", "beta"), KINDS)
@pytest.mark.parametrize("chunk_size", [1, 3, 4, 10, 64])
@pytest.mark.parametrize("separate_teacher_head", [False, True])
def test_chunked_divergence_equals_dense(
    kind: str, beta: float, chunk_size: int, separate_teacher_head: bool
) -> None:
    student, teacher, weight, teacher_weight, grad_out = _inputs()
    t_weight = teacher_weight if separate_teacher_head else weight
    h_dense = student.clone().requires_grad_()
    w_dense = weight.clone().requires_grad_()
    dense = token_divergence(h_dense @ w_dense.T, teacher @ t_weight.T, kind=kind, beta=beta, temperature=0.7)
    (dense * grad_out).sum().backward()

    h_chunk = student.clone().requires_grad_()
    w_chunk = weight.clone().requires_grad_()
    chunked = chunked_token_divergence(
        h_chunk,
        w_chunk,
        teacher,
        teacher_weight if separate_teacher_head else None,
        kind=kind,
        beta=beta,
        temperature=0.7,
        chunk_size=chunk_size,
    )
    (chunked * grad_out).sum().backward()
    assert torch.allclose(chunked, dense, atol=1e-12)
    assert torch.allclose(h_chunk.grad, h_dense.grad, atol=1e-12)
    assert torch.allclose(w_chunk.grad, w_dense.grad, atol=1e-12)


@pytest.mark.parametrize(("kind", "beta"), KINDS[:3])
def test_chunked_divergence_gradcheck(kind: str, beta: float) -> None:
    student, teacher, weight, teacher_weight, _ = _inputs(n=5, hidden=3, vocab=7)
    assert torch.autograd.gradcheck(
        lambda h, w: chunked_token_divergence(
            h, w, teacher, teacher_weight, kind=kind, beta=beta, temperature=0.7, chunk_size=2
        ),
        (student.requires_grad_(), weight.requires_grad_()),
    )


def test_frozen_head_gives_hidden_gradient_only() -> None:
    student, teacher, weight, _, grad_out = _inputs()
    h_dense = student.clone().requires_grad_()
    (token_divergence(h_dense @ weight.T, teacher @ weight.T) * grad_out).sum().backward()
    h_chunk = student.clone().requires_grad_()
    (chunked_token_divergence(h_chunk, weight, teacher, chunk_size=3) * grad_out).sum().backward()
    assert weight.grad is None
    assert torch.allclose(h_chunk.grad, h_dense.grad, atol=1e-12)


def test_no_grad_and_leading_dims() -> None:
    student, teacher, weight, _, _ = _inputs(n=12)
    expected = token_divergence(student @ weight.T, teacher @ weight.T, kind="jsd")
    with torch.no_grad():
        values = chunked_token_divergence(
            student.reshape(3, 4, -1).requires_grad_(),
            weight,
            teacher.reshape(3, 4, -1),
            kind="jsd",
            chunk_size=5,
        )
    assert values.shape == (3, 4) and not values.requires_grad
    assert torch.allclose(values.reshape(-1), expected, atol=1e-12)


def test_temperature_is_honoured_in_chunked() -> None:
    student, teacher, weight, _, _ = _inputs()
    at_one = chunked_token_divergence(student, weight, teacher, temperature=1.0)
    at_two = chunked_token_divergence(student, weight, teacher, temperature=2.0)
    assert not torch.allclose(at_one, at_two, rtol=1e-3)
    assert torch.allclose(
        at_two, token_divergence(student @ weight.T / 2, teacher @ weight.T / 2), atol=1e-12
    )


def test_bf16_inputs_compute_in_float32() -> None:
    student, teacher, weight, _, _ = _inputs(dtype=torch.float32)
    student_bf, teacher_bf, weight_bf = student.bfloat16(), teacher.bfloat16(), weight.bfloat16()
    values = chunked_token_divergence(student_bf.requires_grad_(), weight_bf, teacher_bf, chunk_size=4)
    dense = token_divergence(student_bf @ weight_bf.T, teacher_bf @ weight_bf.T)
    assert values.dtype == torch.float32
    assert torch.allclose(values, dense, atol=1e-5)
    values.sum().backward()
    assert student_bf.grad is not None and student_bf.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("chunk_size", [1, 4, 64])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_gather_logps_equals_dense(chunk_size: int, temperature: float) -> None:
    student, _, weight, _, grad_out = _inputs()
    tokens = torch.randint(
        0, weight.shape[0], (student.shape[0],), generator=torch.Generator().manual_seed(1)
    )
    h_dense, w_dense = student.clone().requires_grad_(), weight.clone().requires_grad_()
    dense = gather_logps(h_dense @ w_dense.T, tokens, temperature=temperature)
    (dense * grad_out).sum().backward()
    h_chunk, w_chunk = student.clone().requires_grad_(), weight.clone().requires_grad_()
    chunked = chunked_gather_logps(h_chunk, w_chunk, tokens, temperature=temperature, chunk_size=chunk_size)
    (chunked * grad_out).sum().backward()
    assert torch.allclose(chunked, dense, atol=1e-12)
    assert torch.allclose(h_chunk.grad, h_dense.grad, atol=1e-12)
    assert torch.allclose(w_chunk.grad, w_dense.grad, atol=1e-12)


def test_chunked_gather_logps_gradcheck() -> None:
    student, _, weight, _, _ = _inputs(n=5, hidden=3, vocab=7)
    tokens = torch.tensor([0, 6, 3, 3, 1])
    assert torch.autograd.gradcheck(
        lambda h, w: chunked_gather_logps(h, w, tokens, temperature=0.7, chunk_size=2),
        (student.requires_grad_(), weight.requires_grad_()),
    )


def test_chunked_cross_entropy_equals_dense() -> None:
    student, _, weight, _, _ = _inputs(n=12)
    hidden = student.reshape(3, 4, -1)
    targets = torch.randint(0, weight.shape[0], (3, 4), generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 1, 1, 1]], dtype=torch.bool)
    h_dense = hidden.clone().requires_grad_()
    dense, dense_metrics = cross_entropy(h_dense @ weight.T, targets, mask)
    dense.backward()
    h_chunk = hidden.clone().requires_grad_()
    chunked, chunked_metrics = chunked_cross_entropy(h_chunk, weight, targets, mask, chunk_size=2)
    chunked.backward()
    assert torch.allclose(chunked, dense, atol=1e-12)
    assert torch.allclose(h_chunk.grad, h_dense.grad, atol=1e-12)
    assert chunked_metrics["ce/tokens"] == dense_metrics["ce/tokens"] == 7.0
    assert bool((h_chunk.grad[~mask] == 0).all())


def test_logits_never_exceed_one_chunk() -> None:
    """The O(chunk × V) property: no call ever sees more than `chunk_size` rows of logits."""
    student, teacher, weight, _, _ = _inputs(n=23)
    seen: list[int] = []

    def chunk_fn(logits: torch.Tensor, start: int, end: int, need_grad: bool):
        seen.append(logits.shape[0])
        teacher_logits = teacher[start:end] @ weight.T
        return divergence_and_logit_grad(
            logits, teacher_logits, kind="forward_kl", beta=0.5, temperature=1.0, need_grad=need_grad
        )

    hidden = student.clone().requires_grad_()
    head = weight.clone().requires_grad_()
    chunked_head_apply(hidden, head, chunk_fn, chunk_size=5).sum().backward()
    assert max(seen) == 5 and sum(seen) == 2 * 23  # forward pass + weight-gradient recompute


def test_no_loss_tokens_gives_empty_values_and_zero_gradients() -> None:
    student, teacher, weight, _, _ = _inputs()
    hidden = student.clone().requires_grad_()
    head = weight.clone().requires_grad_()
    none = torch.zeros(student.shape[0], dtype=torch.bool)
    values = chunked_token_divergence(hidden[none], head, teacher[none], kind="jsd")
    assert values.shape == (0,)
    values.sum().backward()
    assert bool((hidden.grad == 0).all()) and bool((head.grad == 0).all())


def test_shape_errors() -> None:
    student, teacher, weight, _, _ = _inputs()
    with pytest.raises(ValueError, match="teacher hidden"):
        chunked_token_divergence(student, weight, teacher[:3])
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_token_divergence(student, weight, teacher, chunk_size=0)
    with pytest.raises(ValueError, match="teacher vocab"):
        chunked_token_divergence(student, weight, teacher, weight[:5])
