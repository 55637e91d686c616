"""Sampled-token log-probs and masked cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from objectives.logprobs import cross_entropy, gather_logps


def _case(seed: int = 0, dtype: torch.dtype = torch.float64):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 5, 11, generator=generator, dtype=dtype) * 3
    tokens = torch.randint(0, 11, (3, 5), generator=generator)
    return logits, tokens


@pytest.mark.parametrize("chunk_size", [1, 4, 256])
def test_gather_logps_matches_log_softmax(chunk_size: int) -> None:
    logits, tokens = _case()
    expected = torch.log_softmax(logits / 0.7, -1).gather(-1, tokens[..., None]).squeeze(-1)
    values = gather_logps(logits, tokens, temperature=0.7, chunk_size=chunk_size)
    assert values.shape == (3, 5)
    assert torch.allclose(values, expected, atol=1e-12)


def test_gather_logps_temperature_changes_value() -> None:
    logits, tokens = _case()
    assert not torch.allclose(gather_logps(logits, tokens), gather_logps(logits, tokens, temperature=0.7))


def test_gather_logps_upcasts_bf16_and_has_gradient() -> None:
    logits, tokens = _case(dtype=torch.float32)
    low = logits.bfloat16().requires_grad_()
    values = gather_logps(low, tokens)
    assert values.dtype == torch.float32
    assert torch.allclose(values, gather_logps(low.detach().float(), tokens), atol=1e-6)
    values.sum().backward()
    assert low.grad is not None


def test_gather_logps_gradcheck() -> None:
    logits, tokens = _case()
    assert torch.autograd.gradcheck(
        lambda x: gather_logps(x, tokens, chunk_size=4), (logits.requires_grad_(),)
    )


def test_cross_entropy_matches_torch_on_masked_tokens() -> None:
    logits, tokens = _case()
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]], dtype=torch.bool)
    loss, metrics = cross_entropy(logits, tokens, mask)
    expected = F.cross_entropy(logits[mask], tokens[mask])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    assert metrics["ce/tokens"] == 8.0


def test_cross_entropy_normalizer_and_masked_positions_are_inert() -> None:
    logits, tokens = _case()
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]], dtype=torch.bool)
    local, _ = cross_entropy(logits, tokens, mask)
    scaled, _ = cross_entropy(logits, tokens, mask, normalizer=16)
    assert scaled.item() == pytest.approx(local.item() * 8 / 16, rel=1e-12)
    changed = logits.clone()
    changed[~mask] = 1e4
    assert cross_entropy(changed, tokens, mask)[0].item() == pytest.approx(local.item(), rel=1e-12)


def test_invalid_tokens_are_rejected() -> None:
    logits, tokens = _case()
    with pytest.raises(ValueError, match="integer"):
        gather_logps(logits, tokens.double())
    with pytest.raises(ValueError, match="tokens shape"):
        gather_logps(logits, tokens[:, :2])
    with pytest.raises(ValueError, match="normalizer"):
        cross_entropy(logits, tokens, torch.ones_like(tokens, dtype=torch.bool), normalizer=0)
