"""The analyze stage on the tiny model: retention metrics against direct full-logit computations."""

from __future__ import annotations

import math
import shutil

import pyarrow as pa
import pytest
import torch
from test_train_fixtures import examples_table, single_thread  # noqa: F401 (autouse fixture)

import schemas
from engines.generation import chat_ids
from engines.models import ModelConfig, load_model
from stages import analyze
from stages.train import checkpoint as ckpt

CFG = analyze.AnalyzeConfig(precision="float32", batch_size=2, batch_tokens=64)


@pytest.fixture(scope="module")
def model_cfg(tiny_model_dir):
    return ModelConfig(path=str(tiny_model_dir))


@pytest.fixture(scope="module")
def examples():
    return examples_table(2)


def _predictions(examples: pa.Table, method: str) -> pa.Table:
    rows = [r for r in examples.to_pylist() if r["split"] == "test"]
    return schemas.conform([{"id": r["id"], "dataset": r["dataset"], "model": "tiny", "method": method, "sample": 0,
                             "prompt_tokens": 10, "completion": f"I think {r['answer']} is right.",
                             "correct": i % 2 == 0, "score": float(i % 2 == 0), "latency": 0.1,
                             "truncated": i == 1} for i, r in enumerate(rows)], schemas.PREDICTIONS)


@pytest.fixture(scope="module")
def lora_checkpoint(model_cfg, tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base, tok = load_model(model_cfg)
    student = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return ckpt.export(student, tok, tmp_path_factory.mktemp("ckpt") / "checkpoint", lora=True)


def _direct(model, tok, prompt: str, text: str, eos: bool) -> torch.Tensor:
    """Per-token log-softmax rows (T, V) of `text` after the chat prompt, from full logits in float64."""
    ids = chat_ids(tok, prompt)
    target = tok(text, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if eos else [])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids + target])).logits[0, len(ids) - 1:-1].double()
    return logits.log_softmax(-1), torch.tensor(target)


def test_base_run_scores_its_own_completions_with_zero_jsd(model_cfg, examples):
    preds = _predictions(examples, "base")
    out = analyze.run(CFG, examples, preds, model_cfg, None, method="base")["retention"]
    schemas.validate(out, schemas.RETENTION)
    model, tok = load_model(model_cfg)
    by_id = {r["id"]: r for r in examples.to_pylist()}
    assert out.num_rows == preds.num_rows
    for row, pred in zip(out.to_pylist(), sorted(preds.to_pylist(), key=lambda p: p["id"])):
        item = by_id[row["id"]]
        logp, target = _direct(model, tok, item["prompt"], item["reference"], True)
        fit = logp.gather(-1, target[:, None]).mean()
        assert row["ppl_fit"] == pytest.approx(math.exp(-float(fit)), rel=1e-4)
        logp, target = _direct(model, tok, item["prompt"], pred["completion"], not pred["truncated"])
        assert row["base_logp"] == pytest.approx(float(logp.gather(-1, target[:, None]).mean()), rel=1e-4)
        assert row["ppl_ret"] == pytest.approx(math.exp(-row["base_logp"]), rel=1e-9)
        assert row["jsd"] == 0.0 and row["num_tokens"] == len(target)
        assert row["seed"] is None and row["method"] == "base"


def test_adapted_run_matches_direct_jsd_and_both_checkpoint_layouts_agree(model_cfg, examples, lora_checkpoint,
                                                                            tmp_path):
    preds = _predictions(examples, "sd")
    lora = analyze.run(CFG, examples, preds, model_cfg, lora_checkpoint, method="sd", seed=1,
                       trained_on="mcqa_ds")["retention"].to_pylist()
    base, tok = load_model(model_cfg)
    merged, _ = load_model(ModelConfig(path=str(lora_checkpoint / "merged")))
    by_id = {r["id"]: r for r in examples.to_pylist()}
    preds_by_id = {p["id"]: p for p in preds.to_pylist()}
    for row in lora:
        item, pred = by_id[row["id"]], preds_by_id[row["id"]]
        p, target = _direct(base, tok, item["prompt"], pred["completion"], not pred["truncated"])
        q, _ = _direct(merged, tok, item["prompt"], pred["completion"], not pred["truncated"])
        m = 0.5 * (p.exp() + q.exp())
        jsd = 0.5 * (p.exp() * (p - m.log())).sum(-1) + 0.5 * (q.exp() * (q - m.log())).sum(-1)
        assert row["jsd"] == pytest.approx(float(jsd.mean()), rel=1e-3, abs=1e-6)
        assert 0.0 < row["jsd"] <= math.log(2)
        assert row["base_logp"] == pytest.approx(float(p.gather(-1, target[:, None]).mean()), rel=1e-4)
        g, gt = _direct(merged, tok, item["prompt"], item["reference"], True)
        assert row["ppl_fit"] == pytest.approx(math.exp(-float(g.gather(-1, gt[:, None]).mean())), rel=1e-3)
        assert (row["seed"], row["trained_on"]) == (1, "mcqa_ds")
    full = tmp_path / "checkpoint"  # a full fine-tune exports only merged/
    shutil.copytree(lora_checkpoint / "merged", full / "merged")
    merged_only = analyze.run(CFG, examples, preds, model_cfg, full, method="sd", seed=1)["retention"].to_pylist()
    for a, b in zip(lora, merged_only):
        for key in ("ppl_fit", "base_logp", "jsd"):
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-6), key


def test_bf16_analysis_is_close_and_bad_ids_are_rejected(model_cfg, examples, lora_checkpoint):
    preds = _predictions(examples, "sd")
    exact = analyze.run(CFG, examples, preds, model_cfg, lora_checkpoint, method="sd")["retention"].to_pylist()
    fast_cfg = analyze.AnalyzeConfig(precision="bfloat16", max_examples=2)
    fast = analyze.run(fast_cfg, examples, preds, model_cfg, lora_checkpoint, method="sd")["retention"].to_pylist()
    assert len(fast) == 2
    for a, b in zip(exact, fast):
        assert b["base_logp"] == pytest.approx(a["base_logp"], rel=0.05)
    stray = schemas.conform([{**preds.to_pylist()[0], "id": "nope"}], schemas.PREDICTIONS)
    with pytest.raises(ValueError, match="'nope' is not in the examples"):
        analyze.run(CFG, examples, stray, model_cfg, None, method="base")
    with pytest.raises(ValueError, match="analyze.confidence"):
        analyze.AnalyzeConfig(confidence=1.5)
