"""The validation split: single-split sources are hashed into train / validation / test, leak-free, and
nothing that trains (train data, negatives, donors of the teacher views) ever reads validation or test."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

import schemas
from stages import contexts as contexts_stage
from stages.evaluate import EvaluateConfig
from stages.ingest import VERSION, IngestConfig, run
from stages.ingest.splits import assign_pool, drop_leaks, hash_unit, pool_split
from stages.negatives import NegativesConfig, train_items
from stages.train.config import TrainConfig
from stages.train.data import select_examples
from unisd.config import load_experiment
from unisd.configtools import ConfigError


def humaneval(**kw) -> pa.Table:
    return run(IngestConfig(dataset="humaneval", **kw), Path("."))["examples"]


def test_pooled_sources_get_a_validation_split_by_default() -> None:
    counts = Counter(humaneval().column("split").to_pylist())  # 164 problems, test_fraction 0.5
    assert set(counts) == {"train", "validation", "test"}
    for seed in range(1, 5):  # about 0.2 of the non-test items (pooled over seeds: one seed is noisy)
        counts += Counter(humaneval(seed=seed).column("split").to_pylist())
    assert 0.15 <= counts["validation"] / (counts["train"] + counts["validation"]) <= 0.25
    assert IngestConfig(dataset="humaneval").validation_fraction == 0.2
    assert VERSION >= 3  # the keys of every ingest artifact changed with the new split


def test_validation_fraction_never_moves_an_item_into_or_out_of_test() -> None:
    splits = {vf: dict(zip(t.column("id").to_pylist(), t.column("split").to_pylist()))
              for vf in (0.0, 0.2, 0.5) for t in [humaneval(validation_fraction=vf, seed=3)]}
    tests = [{i for i, s in sp.items() if s == "test"} for sp in splits.values()]
    assert tests[0] == tests[1] == tests[2]
    assert "validation" not in splits[0.0].values()
    grown = {i for i, s in splits[0.2].items() if s == "validation"}
    assert grown <= {i for i, s in splits[0.5].items() if s == "validation"}  # nested: more is a superset


def test_pool_split_boundaries() -> None:
    assert [pool_split(u, 0.5, 0.2) for u in (0.0, 0.49, 0.5, 0.59, 0.6, 0.99)] == \
        ["test", "test", "validation", "validation", "train", "train"]
    assert pool_split(0.99, 1.0, 0.2) == "test"
    assert pool_split(0.0, 0.0, 1.0) == "validation"


def test_hash_split_is_seeded_and_per_item() -> None:
    rows = [{"id": f"d/{i}", "split": "pool"} for i in range(200)]
    again = [dict(r) for r in rows]
    assign_pool(rows, 0.3, 7, 0.25)
    assign_pool(again[:50], 0.3, 7, 0.25)  # fewer items: the same items keep their split
    assert [r["split"] for r in rows[:50]] == [r["split"] for r in again[:50]]
    for r in rows:
        assert r["split"] == pool_split(hash_unit(7, r["id"]), 0.3, 0.25)


def test_a_prompt_in_validation_and_train_stays_only_in_validation() -> None:
    rows = [{"id": "a", "split": "train", "prompt": "Same  question"},
            {"id": "b", "split": "validation", "prompt": "same question"},
            {"id": "c", "split": "test", "prompt": "Other"}, {"id": "d", "split": "validation", "prompt": "other"}]
    kept, dropped = drop_leaks(rows)
    assert [r["id"] for r in kept] == ["b", "c"]
    assert dropped == {"train: also in a held-out split": 1, "validation: also in a held-out split": 1}


def test_validation_fraction_out_of_range_is_one_line() -> None:
    with pytest.raises(ValueError, match=r"^validation_fraction must be in \[0, 1\], got 1.5$"):
        IngestConfig(dataset="humaneval", validation_fraction=1.5)


def test_evaluate_split_accepts_validation_and_refuses_others() -> None:
    assert EvaluateConfig(split="validation").split == "validation"
    with pytest.raises(ValueError, match=r"^split must be one of train, validation, test, got 'dev'$"):
        EvaluateConfig(split="dev")
    with pytest.raises(ConfigError, match=r"evaluate.*split must be one of train, validation, test, got 'dev'"):
        load_experiment("smoke", overrides=["evaluate.split=dev"], check_model=False)


def _three_splits() -> pa.Table:
    rows = []
    for split in ("train", "validation", "test"):
        for i in range(4):
            rows.append({"id": f"d/{split}{i}", "dataset": "d", "split": split, "family": "math",
                         "prompt": f"{split} question {i}?", "reference": f"Answer: {split}{i}",
                         "answer": f"{split}{i}"})
    return schemas.conform(rows, schemas.EXAMPLES)


def test_training_reads_only_the_train_split() -> None:
    table = _three_splits()
    assert {r["split"] for r in select_examples(TrainConfig(), table)} == {"train"}
    assert {r["split"] for r in train_items(NegativesConfig(), table)} == {"train"}
    views = contexts_stage.run(contexts_stage.ContextsConfig(num_views=3, seed=1), table)["contexts"]
    texts = "\n".join(views.column("text").to_pylist())
    assert "validation question" not in texts and "test question" not in texts  # donors are train items
    assert {i.split("/")[1][:5] for i in views.column("id").to_pylist()} == {"train"}
