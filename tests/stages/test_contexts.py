"""Contexts (teacher views) and the minimal negatives builder."""

from __future__ import annotations

import logging

import pyarrow as pa
import pytest
from test_train_fixtures import examples_table

import schemas
from stages import contexts as ctx
from stages.contexts.templates import REFERENCE_INTRO, SDI
from stages.negatives import LLMSource, NegativesConfig, WordNetSource
from stages.negatives import run as build_negatives


@pytest.fixture(scope="module")
def examples():
    return examples_table(4)


def _views(table: pa.Table) -> dict[tuple[str, str], str]:
    return {(r["id"], r["view"]): r["text"] for r in table.to_pylist()}


def test_privileged_view_layout(examples):
    out = ctx.run(ctx.ContextsConfig(num_views=0), examples)["contexts"]
    schemas.validate(out, schemas.CONTEXTS)
    item = next(r for r in examples.to_pylist() if r["id"] == "math-train-1")
    text = _views(out)[("math-train-1", "privileged")]
    assert text == f"\n{item['prompt']}\n\n{REFERENCE_INTRO}\n{item['reference']}\n\n{SDI}"
    assert {r["split"] for r in examples.to_pylist() if (r["id"], "privileged") in _views(out)} == {"train"}


@pytest.mark.parametrize("strategy", ["random", "retrieval"])
def test_aux_views_never_show_the_items_gold_and_donors_are_other_train_items(examples, strategy):
    rows = examples.to_pylist()
    train = [r for r in rows if r["split"] == "train"]
    neighbors = None
    if strategy == "retrieval":  # the item itself and a test item rank first: both must be skipped
        test_ids = [r["id"] for r in rows if r["split"] == "test"]
        neighbors = schemas.conform(
            [{"id": r["id"], "rank": k, "neighbor_id": nid, "score": 1.0 - k / 10}
             for r in train for k, nid in enumerate([r["id"], test_ids[0]] + [o["id"] for o in train if o is not r])],
            schemas.NEIGHBORS)
    out = ctx.run(ctx.ContextsConfig(strategy=strategy, num_views=3), examples, neighbors=neighbors)["contexts"]
    views = _views(out)
    test_prompts = [r["prompt"] for r in rows if r["split"] == "test"]
    for item in train:
        for k in range(3):
            text = views[(item["id"], f"aux_{k}")]
            assert item["reference"] not in text, (item["id"], k)
            if item["rationale"]:
                assert item["rationale"] not in text
            assert text.count(item["prompt"]) == 1  # the task itself, never as its own donor
            assert not any(p in text for p in test_prompts)
            donors = [r for r in train if r["id"] != item["id"] and r["prompt"] in text]
            assert len(donors) == 1 and donors[0]["dataset"] == item["dataset"]
    assert set(out.column("strategy").to_pylist()) == {"privileged", strategy}


def test_donor_with_the_same_answer_is_skipped():
    rows = examples_table(4).to_pylist()
    mcqa = [r for r in rows if r["family"] == "mcqa" and r["split"] == "train"]
    for r in mcqa:  # no rationale, all with answer A except one: only that one may be a donor
        r.update(answer="A", reference="Answer: A", rationale=None)
    mcqa[-1].update(answer="C", reference="Answer: C")
    table = schemas.conform(mcqa, schemas.EXAMPLES)
    out = _views(ctx.run(ctx.ContextsConfig(num_views=2), table)["contexts"])
    for r in mcqa[:-1]:
        assert mcqa[-1]["prompt"] in out[(r["id"], "aux_0")] and "Answer: A" not in out[(r["id"], "aux_0")]


def test_too_few_donors_wrap_with_a_warning_and_none_is_an_error(caplog):
    rows = [r for r in examples_table(2).to_pylist() if r["dataset"] == "code_ds" and r["split"] == "train"]
    with caplog.at_level(logging.WARNING):
        out = ctx.run(ctx.ContextsConfig(num_views=3), schemas.conform(rows, schemas.EXAMPLES))["contexts"]
    assert "reusing them" in caplog.text and out.num_rows == 2 * 4
    with pytest.raises(ValueError, match="no usable donor"):
        ctx.run(ctx.ContextsConfig(num_views=1), schemas.conform(rows[:1], schemas.EXAMPLES))


def test_induction_views_use_instructions_and_skip_leaky_ones(examples):
    item = next(r for r in examples.to_pylist() if r["id"] == "math-train-0")
    instructions = schemas.conform([
        {"dataset": "math_ds", "instruction_id": 0, "text": "Add the numbers carefully.", "demo_ids": [], "model": "m"},
        {"dataset": "math_ds", "instruction_id": 1, "text": f"Copy this: {item['reference']}", "demo_ids": [],
         "model": "m"},
    ], schemas.INSTRUCTIONS)
    sub = examples.filter(pa.compute.equal(examples.column("dataset"), "math_ds"))
    out = _views(ctx.run(ctx.ContextsConfig(strategy="induction", num_views=1), sub,
                         instructions=instructions)["contexts"])
    text = out[("math-train-0", "aux_0")]
    assert "Add the numbers carefully." in text and item["reference"] not in text
    assert "reference solution" not in text


def test_negative_views_differ_from_privileged_only_in_the_reference(examples):
    negatives = build_negatives(NegativesConfig(llm=LLMSource(num_per_item=0), wordnet=WordNetSource(num_per_item=0)), examples)["negatives"]
    out = _views(ctx.run(ctx.ContextsConfig(num_views=1), examples, negatives=negatives)["contexts"])
    items = {r["id"]: r for r in examples.to_pylist()}
    assert negatives.num_rows > 0
    for n in negatives.to_pylist():
        text = out[(n["id"], f"negative_{n['neg_id']}")]
        privileged = out[(n["id"], "privileged")]
        assert text.replace(n["text"], items[n["id"]]["reference"], 1) == privileged
        assert text != privileged




def test_configs_are_documented_and_validated():
    from unisd.configtools import field_docs

    for cls in (ctx.ContextsConfig,):
        docs = field_docs(cls)
        assert all(f in docs for f in cls.__dataclass_fields__), cls
    with pytest.raises(ValueError, match="num_views must be >= 0"):
        ctx.ContextsConfig(num_views=-1)
    assert ctx.SPEC.name == "contexts"
