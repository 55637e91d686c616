"""Signals stage on the tiny random Llama: schema, train split only, values equal to plain forwards."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest
import torch

import schemas
from engines.generation import HFGenerator, chat_ids
from stages import contexts as contexts_stage
from stages.evaluate import EvaluateConfig
from stages.signals import STATISTICS, SignalsConfig, run, select_items

EVAL = EvaluateConfig(engine="hf", max_new_tokens={"mcqa": 6, "math": 6}, batch_size=8)
CFG = SignalsConfig(limit=5, max_new_tokens=6, batch_size=3)


def examples() -> pa.Table:
    rows = []
    for split, n in (("train", 7), ("validation", 2), ("test", 2)):
        for i in range(n):
            letter = "ABCD"[i % 4]
            rows.append({"id": f"q/{split}{i}", "dataset": "q", "split": split, "family": "mcqa",
                         "prompt": f"Question {split} {i}: pick one.\nA. x\nB. y\nC. z\nD. w",
                         "reference": f"Reasoning: because {i}.\nAnswer: {letter}", "answer": letter,
                         "options": ["x", "y", "z", "w"]})
        for j in range(2 if split == "train" else 1):
            rows.append({"id": f"m/{split}{j}", "dataset": "m", "split": split, "family": "math",
                         "prompt": f"What is {len(rows)} + 1 ({split})?", "reference": f"Answer: {len(rows) + 1}",
                         "answer": str(len(rows) + 1)})
    return schemas.conform(rows, schemas.EXAMPLES)


def views(num_views: int = 2) -> pa.Table:
    return contexts_stage.run(contexts_stage.ContextsConfig(num_views=num_views), examples())["contexts"]


def measure(tiny_lm, contexts: pa.Table, cfg: SignalsConfig = CFG) -> dict[tuple[str, str], dict]:
    model, tok = tiny_lm
    table = run(cfg, examples(), contexts, model, tok, HFGenerator(model, tok, batch_size=8), EVAL, "tiny")["signals"]
    assert table.schema == schemas.SIGNALS.schema
    return {(r["dataset"], r["statistic"]): r for r in table.to_pylist()}


def test_every_statistic_per_dataset_from_the_train_split_only(tiny_lm) -> None:
    rows = measure(tiny_lm, views())
    assert {d for d, _ in rows} == {"q", "m"}
    expected = {*STATISTICS, "acc_student", "acc_teacher_ref", "acc_gain", "num_views"}
    assert {s for d, s in rows if d == "q"} == expected
    assert all(r["split"] == "train" and r["model"] == "tiny" for r in rows.values())
    assert rows["q", "logp_gold_gain"]["n"] == 5 and rows["m", "logp_gold_gain"]["n"] == 2  # limit; m has 2 train
    assert rows["q", "num_views"]["value"] == 2
    for r in rows.values():
        assert math.isfinite(r["value"])
        if r["statistic"].startswith("acc_") and r["statistic"] != "acc_gain":
            assert 0.0 <= r["value"] <= 1.0
        if r["ci_low"] is not None:
            assert r["ci_low"] <= r["value"] <= r["ci_high"]
    assert rows["q", "divergence_own_samples"]["value"] > 0 and rows["q", "agreement_spread"]["value"] > 0
    assert rows["q", "agreement_range"]["value"] >= rows["q", "agreement_spread"]["value"]
    gain = rows["q", "logp_gold_privileged"]["value"] - rows["q", "logp_gold_plain"]["value"]
    assert rows["q", "logp_gold_gain"]["value"] == pytest.approx(gain, abs=1e-5)


def test_items_never_come_from_validation_or_test() -> None:
    extra = [{"id": f"q/{s}0", "view": "privileged", "strategy": "privileged", "text": "c"} for s in ("validation", "test")]
    contexts = pa.concat_tables([views(), schemas.conform(extra, schemas.CONTEXTS)])
    items = select_items(SignalsConfig(limit=100), examples(), contexts)
    assert {it.row["split"] for it in items} == {"train"} and len(items) == 9
    chosen = {it.row["id"] for it in select_items(SignalsConfig(limit=3, seed=1), examples(), contexts)}
    assert chosen != {it.row["id"] for it in select_items(SignalsConfig(limit=3, seed=2), examples(), contexts)}
    with pytest.raises(ValueError, match="signals: no train-split example has a privileged view"):
        run(CFG, examples(), schemas.conform(extra, schemas.CONTEXTS), None, None, None, EVAL, "tiny")


def test_a_privileged_prompt_equal_to_the_plain_one_carries_no_signal(tiny_lm) -> None:
    table = views(num_views=0)
    plain = {r["id"]: r["prompt"] for r in examples().to_pylist()}
    same = table.set_column(table.column_names.index("text"), "text",
                            pa.array([plain[i] for i in table.column("id").to_pylist()]))
    rows = measure(tiny_lm, same)
    for stat in ("logp_gold_gain", "logp_answer_gain", "acc_gain"):
        assert rows["q", stat]["value"] == pytest.approx(0.0, abs=1e-5)
    assert rows["q", "divergence_own_samples"]["value"] == pytest.approx(0.0, abs=1e-5)
    assert ("q", "agreement_spread") not in rows and rows["q", "num_views"]["value"] == 0  # K = 0: no spread


def test_gold_log_probs_equal_a_plain_full_forward(tiny_lm) -> None:
    model, tok = tiny_lm
    contexts = views()
    rows = measure(tiny_lm, contexts)
    items = [it for it in select_items(CFG, examples(), contexts) if it.row["dataset"] == "q"]

    def mean_logp(prompt: str, continuation: list[int], skip: int = 0, total: bool = False) -> float:
        ids = chat_ids(tok, prompt)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids + continuation])).logits[0, len(ids) - 1:-1].double()
        picked = torch.log_softmax(logits, -1).gather(-1, torch.tensor(continuation)[:, None])[skip:, 0]
        return float(picked.sum() if total else picked.mean())

    gold = [tok(it.row["reference"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for it in items]
    for stat, prompt in (("logp_gold_plain", lambda it: it.row["prompt"]), ("logp_gold_privileged", lambda it: it.privileged)):
        expected = sum(mean_logp(prompt(it), g) for it, g in zip(items, gold)) / len(items)
        assert rows["q", stat]["value"] == pytest.approx(expected, abs=1e-4)
    prefix = tok("Answer:", add_special_tokens=False)["input_ids"]
    answers = [prefix + tok(" " + it.row["answer"], add_special_tokens=False)["input_ids"] for it in items]
    expected = sum(mean_logp(it.privileged, a, skip=len(prefix), total=True) for it, a in zip(items, answers))
    assert rows["q", "logp_answer_privileged"]["value"] == pytest.approx(expected / len(items), abs=1e-4)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="limit must be >= 1"):
        SignalsConfig(limit=0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        SignalsConfig(temperature=0.0)
