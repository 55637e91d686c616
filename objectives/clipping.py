"""Per-token divergence clipping (REFERENCE §2.5).

ℓ̃_t = min(ℓ_t, κ), applied after the vocabulary sum and before agreement weighting. κ is either a
fixed value or the detached q-quantile of ℓ over the batch's loss tokens. It is a hard clamp: tokens
above κ contribute κ and receive zero gradient, which bounds the influence of tokens where the
teacher and student disagree wildly (typically teacher artefacts of the privileged prompt).
"""

from __future__ import annotations

import torch
from torch import Tensor

from objectives.masking import as_bool_mask, masked_mean, masked_quantile

__all__ = ["clip_divergence"]


def clip_divergence(
    per_token: Tensor, mask: Tensor, *, max_value: float | None = None, quantile: float | None = None
) -> tuple[Tensor, dict[str, float]]:
    """Clamp per-token divergences (...) at a fixed `max_value` or a batch `quantile` over `mask`.

    The two are mutually exclusive; with neither, the input is returned unchanged. Metrics:
    ``clip/fraction`` (share of loss tokens strictly above κ) and ``clip/threshold`` (κ, or inf).
    """
    if max_value is not None and quantile is not None:
        raise ValueError("pass either max_value or quantile, not both")
    keep = as_bool_mask(mask, per_token)
    threshold: Tensor | None = None
    if max_value is not None:
        if not max_value > 0.0:
            raise ValueError(f"max_value must be > 0, got {max_value}")
        threshold = torch.tensor(max_value, dtype=per_token.dtype, device=per_token.device)
    elif quantile is not None:
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        threshold = masked_quantile(per_token, keep, quantile)
    if threshold is None:
        return per_token, {"clip/fraction": 0.0, "clip/threshold": float("inf")}
    threshold = threshold.detach()
    above = (per_token.detach() > threshold).to(per_token.dtype)
    metrics = {"clip/fraction": masked_mean(above, keep).item(), "clip/threshold": float(threshold)}
    return torch.clamp(per_token, max=threshold), metrics
