"""The objectives chained as the trainer chains them: divergence -> clip -> agreement -> weighted mean."""

from __future__ import annotations

import torch

from objectives.agreement import token_agreement_weights, weighted_token_mean
from objectives.clipping import clip_divergence
from objectives.divergence import chunked_token_divergence, token_divergence


def _setup(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    student_hidden = torch.randn(2, 5, 4, generator=generator, dtype=torch.float64)
    teacher_hidden = torch.randn(2, 5, 4, generator=generator, dtype=torch.float64)
    weight = torch.randn(9, 4, generator=generator, dtype=torch.float64)
    views = -torch.rand(3, 2, 5, generator=generator, dtype=torch.float64) * 2
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    return student_hidden, teacher_hidden, weight, views, mask


def _dense_loss(student_logits, teacher_logits, views, mask):
    per_token = token_divergence(student_logits, teacher_logits, kind="jsd", beta=0.5, temperature=0.7)
    clipped, _ = clip_divergence(per_token, mask, quantile=0.8)
    weights, _ = token_agreement_weights(views, mask, gamma=1.0)
    return weighted_token_mean(clipped, mask, weights)[0]


def test_masked_positions_change_neither_loss_nor_gradients() -> None:
    student_hidden, teacher_hidden, weight, views, mask = _setup()
    student_logits = (student_hidden @ weight.T).requires_grad_()
    teacher_logits = teacher_hidden @ weight.T
    loss = _dense_loss(student_logits, teacher_logits, views, mask)
    (grad,) = torch.autograd.grad(loss, student_logits)

    noisy_student = student_logits.detach().clone()
    noisy_student[~mask] = torch.randn(int((~mask).sum()), 9, dtype=torch.float64) * 50
    noisy_teacher = teacher_logits.clone()
    noisy_teacher[~mask] = -noisy_teacher[~mask] * 30
    noisy_views = views.clone()
    noisy_views[:, ~mask] = -40.0 * torch.rand(3, int((~mask).sum()), dtype=torch.float64)
    noisy_student.requires_grad_()
    noisy_loss = _dense_loss(noisy_student, noisy_teacher, noisy_views, mask)
    (noisy_grad,) = torch.autograd.grad(noisy_loss, noisy_student)
    assert torch.allclose(noisy_loss, loss, atol=1e-12)
    assert torch.allclose(noisy_grad, grad, atol=1e-12)
    assert bool((grad[~mask] == 0).all()) and bool((grad[mask] != 0).any())


def test_chunked_on_loss_tokens_equals_dense_pipeline() -> None:
    student_hidden, teacher_hidden, weight, views, mask = _setup(1)
    dense_hidden = student_hidden.clone().requires_grad_()
    dense = _dense_loss(dense_hidden @ weight.T, teacher_hidden @ weight.T, views, mask)
    dense.backward()

    chunk_hidden = student_hidden.clone().requires_grad_()
    selected = chunked_token_divergence(
        chunk_hidden[mask], weight, teacher_hidden[mask], kind="jsd", beta=0.5, temperature=0.7, chunk_size=2
    )
    per_token = torch.zeros(2, 5, dtype=torch.float64).masked_scatter(mask, selected)
    clipped, _ = clip_divergence(per_token, mask, quantile=0.8)
    weights, _ = token_agreement_weights(views, mask, gamma=1.0)
    chunked = weighted_token_mean(clipped, mask, weights)[0]
    chunked.backward()
    assert torch.allclose(chunked, dense, atol=1e-12)
    assert torch.allclose(chunk_hidden.grad, dense_hidden.grad, atol=1e-12)
