"""Weighted sum of loss terms."""

from __future__ import annotations

import math

import pytest
import torch

from objectives.combined import combine


def test_weighted_sum_and_metrics() -> None:
    kd = torch.tensor(2.0, requires_grad=True)
    con = torch.tensor(0.5, requires_grad=True)
    loss, metrics = combine(
        [("kd", 1.0, kd), ("contrastive", 0.1, con), ("features", 0.0, torch.tensor(float("nan")))]
    )
    assert loss.item() == pytest.approx(2.05)
    assert metrics["train/loss/kd"] == 2.0 and metrics["train/loss/contrastive"] == 0.5
    assert math.isnan(metrics["train/loss/features"])
    assert metrics["train/loss/total"] == pytest.approx(2.05)
    loss.backward()
    assert kd.grad.item() == 1.0 and con.grad.item() == pytest.approx(0.1)


def test_prefix_and_errors() -> None:
    _, metrics = combine([("kd", 1.0, torch.tensor(1.0))], prefix="eval/loss")
    assert set(metrics) == {"eval/loss/kd", "eval/loss/total"}
    with pytest.raises(ValueError, match="weight 0"):
        combine([("kd", 0.0, torch.tensor(1.0))])
    with pytest.raises(ValueError, match="unique"):
        combine([("kd", 1.0, torch.tensor(1.0)), ("kd", 1.0, torch.tensor(1.0))])
    with pytest.raises(ValueError, match="scalar"):
        combine([("kd", 1.0, torch.ones(2))])
