"""Masked reductions shared by the objectives.

Every objective reduces over "loss tokens" only (sampled completion tokens, EOS included), so masked
means and quantiles live here once. A mask is a bool or 0/1 tensor; non-zero means "counts".

Masked positions are removed with `torch.where`, not multiplied by zero, so a NaN or inf at a padded
position cannot leak into a reduction (0 * inf = NaN).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "as_bool_mask",
    "check_same_shape",
    "compute_dtype",
    "masked_mean",
    "masked_quantile",
    "token_denominator",
]


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (bf16/fp16 inputs are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def as_bool_mask(mask: Tensor, like: Tensor, name: str = "mask") -> Tensor:
    """Return `mask` as bool after checking it has the shape of `like`."""
    if mask.shape != like.shape:
        raise ValueError(f"{name} shape {tuple(mask.shape)} != values shape {tuple(like.shape)}")
    return mask if mask.dtype == torch.bool else mask != 0


def check_same_shape(**tensors: Tensor) -> None:
    """Raise ValueError unless every named tensor has the same shape."""
    items = list(tensors.items())
    first_name, first = items[0]
    for name, tensor in items[1:]:
        if tensor.shape != first.shape:
            raise ValueError(f"{name} shape {tuple(tensor.shape)} != {first_name} shape {tuple(first.shape)}")


def token_denominator(count: Tensor, normalizer: float | Tensor | None) -> Tensor | float:
    """Denominator of a token-mean loss: `normalizer` if given (> 0), else the local count (≥ 1).

    Passing the optimizer step's global token count as `normalizer` makes the sum of micro-batch
    losses equal the full-batch loss under gradient accumulation.
    """
    if normalizer is None:
        return count.clamp(min=1)
    if not float(normalizer) > 0:
        raise ValueError(f"normalizer must be > 0, got {float(normalizer)}")
    return normalizer


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `values` where `mask` is set; empty selections give 0 (the count is clamped to 1).

    values (...), mask (...) -> scalar (dim=None) or values reduced over `dim`.
    """
    keep = as_bool_mask(mask, values)
    picked = torch.where(keep, values, torch.zeros((), dtype=values.dtype, device=values.device))
    if dim is None:
        return picked.sum() / keep.sum().clamp(min=1)
    return picked.sum(dim) / keep.sum(dim).clamp(min=1)


def masked_quantile(values: Tensor, mask: Tensor, q: float) -> Tensor | None:
    """q-quantile (linear interpolation, like `torch.quantile`) of `values[mask]`, detached.

    Returns None when no position is selected. Implemented with a sort so it has no input-size
    limit (`torch.quantile` refuses more than 2**24 elements).
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    picked = values.detach()[as_bool_mask(mask, values)]
    n = picked.numel()
    if n == 0:
        return None
    ordered = picked.sort().values
    position = q * (n - 1)
    low = int(position)
    high = min(low + 1, n - 1)
    frac = position - low
    return ordered[low] + (ordered[high] - ordered[low]) * frac
