"""Fixtures for the storage tests: a tiny real stage (SCORES output) and a compute that counts calls."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
import pytest

import schemas
from storage import StageSpec, Store, Workspace


def _scores(n: int = 2, dataset: str = "gsm8k", value: float = 0.5) -> pa.Table:
    rows = [{"dataset": dataset, "model": "tiny", "method": "sft", "metric": f"m{i}",
             "value": value + i, "n": 10 + i, "stderr": None} for i in range(n)]
    return pa.Table.from_pylist(rows, schema=schemas.SCORES.schema)


@dataclass
class CountingCompute:
    """Returns a fixed scores table and records how often it ran."""

    table: pa.Table = field(default_factory=_scores)
    calls: int = 0

    def __call__(self, ws: Workspace) -> dict[str, pa.Table]:
        self.calls += 1
        return {"scores": self.table}


@pytest.fixture
def spec() -> StageSpec:
    return StageSpec(name="evaluate", version=1, inputs={"examples": schemas.EXAMPLES},
                     outputs={"scores": schemas.SCORES})


@pytest.fixture
def make_scores() -> Callable[..., pa.Table]:
    return _scores


@pytest.fixture
def counting() -> Callable[..., CountingCompute]:
    return CountingCompute


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "store")
