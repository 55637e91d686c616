"""The train loop end to end on the tiny model: updates, invariants, resume, EMA, checkpoint export."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from test_train_fixtures import eos_prone_model, examples_table, single_thread  # noqa: F401 (autouse fixture)

import schemas
from engines.generation import PromptTooLong
from engines.models import ModelConfig
from stages import contexts as contexts_stage
from stages import train
from stages.negatives import LLMSource, NegativesConfig, WordNetSource
from stages.negatives import run as build_negatives
from stages.train import (
    AgreementSettings,
    ClipSettings,
    ContrastiveSettings,
    FeatureSettings,
    LoraSettings,
    RolloutSettings,
    TeacherSettings,
    TrainConfig,
)
from stages.train.loop import fit, setup
from stages.train.teachers import EMA, lora_ema_pairs
from storage import Workspace

BASE = TrainConfig(steps=2, batch_size=2, lr=1e-2, warmup_ratio=0.0, seed=1, log_every=1,
                   lora=LoraSettings(r=4, alpha=8, dropout=0.0),
                   rollout=RolloutSettings(max_new_tokens=6, temperature=1.0))
MECHANISMS = {
    "agreement": AgreementSettings(level="token", num_views=2),
    "teacher": TeacherSettings(kind="ema", ema_beta=0.5, ema_every=1),
    "contrastive": ContrastiveSettings(weight=0.2, sources=("corrupt",)),
    "features": FeatureSettings(mode="joint", weight=0.5),
}


@pytest.fixture(scope="module")
def tables():
    examples = examples_table(3)
    negatives = build_negatives(NegativesConfig(llm=LLMSource(num_per_item=0), wordnet=WordNetSource(num_per_item=0)), examples)["negatives"]
    contexts = contexts_stage.run(contexts_stage.ContextsConfig(num_views=2), examples, negatives)["contexts"]
    return examples, contexts, negatives


@pytest.fixture(scope="module")
def model_cfg(tiny_model_dir):
    import accelerate  # noqa: F401  (import once here, not inside the first timed test)
    import peft  # noqa: F401

    return ModelConfig(path=str(tiny_model_dir))


def _with_reduction(cfg, reduction):
    """`cfg` with the divergence, contrastive and feature terms reduced per token or per sequence."""
    return cfg if reduction == "token" else dataclasses.replace(cfg, reduction=reduction)


def _adapter(student) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in student.named_parameters() if ".default." in n}


def _train(cfg, model_cfg, tables, path, on_step=None, method="m"):
    examples, contexts, negatives = tables
    return train.run(cfg, model_cfg, examples, contexts, negatives, Workspace.create(path), method, on_step=on_step)


def test_parameters_change_loss_finite_tables_conform(model_cfg, tables, tmp_path):
    cfg = dataclasses.replace(BASE, **MECHANISMS)
    seen = []
    out = _train(cfg, model_cfg, tables, tmp_path, on_step=lambda s, row, student: seen.append(_adapter(student)))
    steps = out["train_steps"].to_pylist()
    assert [r["step"] for r in steps] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in steps)
    metrics = dict(steps[0]["metrics"])
    for key in ("train/loss/divergence", "train/loss/contrastive", "train/loss/features",
                "train/agreement/weight_mean", "train/agreement/weight_min",
                "train/contrastive/violation_fraction", "train/kl_to_start", "train/tokens/completion"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert steps[0]["peak_mem_mb"] > 0 and steps[0]["tokens_per_s"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(seen[0].values(), seen[1].values()))
    schemas.validate(out["train_steps"], schemas.TRAIN_STEPS)
    schemas.validate(out["rollouts"], schemas.ROLLOUTS)
    assert out["rollouts"].num_rows == 2 * BASE.rollout.log_samples


@pytest.fixture(scope="module")
def eos_model_cfg(tiny_model_dir, tmp_path_factory):
    """The tiny model with completions that end at EOS after uneven lengths (test_train_fixtures)."""
    return ModelConfig(path=str(eos_prone_model(tiny_model_dir, tmp_path_factory.mktemp("eos-model"))))


def test_token_count_is_taken_after_generation(eos_model_cfg, tables, tmp_path):
    """The loss normaliser counts the tokens actually generated (EOS included), not batch × max_new_tokens."""
    cfg = dataclasses.replace(BASE, steps=1, batch_size=4,
                              rollout=dataclasses.replace(BASE.rollout, max_new_tokens=12, log_samples=4))
    out = _train(cfg, eos_model_cfg, tables, tmp_path)
    metrics = dict(out["train_steps"].to_pylist()[0]["metrics"])
    samples = out["rollouts"].to_pylist()
    lengths = [r["num_tokens"] for r in samples]
    assert len(samples) == 4 and any(not r["truncated"] for r in samples), samples  # some ended at EOS
    assert len(set(lengths)) > 1 and min(lengths) < 12, lengths
    assert metrics["train/tokens/completion"] == sum(lengths) < 4 * 12
    assert 0.0 < metrics["train/rollout/truncated_fraction"] < 1.0


def test_mask_truncated_drops_unfinished_completions(model_cfg, tables, tmp_path):
    cfg = dataclasses.replace(BASE, steps=1, rollout=dataclasses.replace(BASE.rollout, mask_truncated=True))
    out = _train(cfg, model_cfg, tables, tmp_path)
    row = out["train_steps"].to_pylist()[0]
    assert dict(row["metrics"])["train/tokens/completion"] == 0
    assert row["loss"] == 0.0


def test_long_prompt_is_an_error_or_a_counted_truncation(model_cfg, tables, tmp_path):
    examples, contexts, negatives = tables
    short = dataclasses.replace(BASE, steps=1, rollout=dataclasses.replace(BASE.rollout, max_prompt_tokens=40))
    with pytest.raises(PromptTooLong, match="max_prompt_tokens=40"):
        setup(short, model_cfg, examples, contexts, negatives, Workspace.create(tmp_path / "a"), "m")
    cut = dataclasses.replace(short, rollout=dataclasses.replace(short.rollout, on_long_prompt="truncate_left"))
    out = _train(cut, model_cfg, tables, tmp_path / "b")
    assert dict(out["train_steps"].to_pylist()[0]["metrics"])["train/prompt/truncated"] >= 4


def _step_gradients(cfg, model_cfg, tables, path):
    """One optimizer step in float64; returns its train_steps row and the accumulated adapter gradients
    (summed over the step's micro-batches, before gradient clipping)."""
    run = setup(cfg, model_cfg, *tables, Workspace.create(path), "m")
    run.student.double()
    grads: dict[str, torch.Tensor] = {}
    for name, p in run.student.named_parameters():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(lambda p, name=name: grads.__setitem__(name, p.grad.clone()))
    fit(run)
    return run.rows[0], grads, [r["num_tokens"] for r in run.rollouts]


@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_grad_accumulation_equals_one_big_batch(eos_model_cfg, tables, tmp_path, reduction):
    """4 prompts as one micro-batch == the same 4 prompts (same rollouts, uneven lengths) as 4 micro-batches
    of 1, with every term on and the quantile clip, whose threshold is the optimizer step's."""
    results = []
    for accum in (1, 4):
        cfg = dataclasses.replace(BASE, steps=1, batch_size=4, grad_accum=accum, score_precision="float32",
                                  rollout=dataclasses.replace(BASE.rollout, max_new_tokens=12, log_samples=4),
                                  clip=ClipSettings(quantile=0.5), **MECHANISMS)
        cfg = _with_reduction(cfg, reduction)
        results.append(_step_gradients(cfg, eos_model_cfg, tables, tmp_path / str(accum)))
    (row1, grads1, lengths1), (row4, grads4, lengths4) = results
    m1, m4 = dict(row1["metrics"]), dict(row4["metrics"])
    assert lengths1 == lengths4 and len(set(lengths1)) > 1, lengths1  # the same rollouts, of uneven lengths
    assert m1["train/tokens/completion"] == m4["train/tokens/completion"] == sum(lengths1)
    assert 0.0 < m1["train/clip/fraction"] < 1.0
    assert row4["loss"] == pytest.approx(row1["loss"], rel=1e-9)
    for key in ("train/loss/divergence", "train/loss/contrastive", "train/loss/features", "train/grad_norm",
                "train/clip/fraction"):
        assert m4[key] == pytest.approx(m1[key], rel=1e-9), key
    assert grads1.keys() == grads4.keys() and grads1
    for name in grads1:
        assert torch.allclose(grads4[name], grads1[name], rtol=1e-8, atol=1e-12), name
    assert any(g.abs().max() > 1e-6 for g in grads1.values())


def test_bf16_scoring_stays_close_to_float32(model_cfg, tables, tmp_path):
    """score_precision=bfloat16 changes the teacher passes only by rounding: the same step's terms agree."""
    rows = {}
    for precision in ("float32", "bfloat16"):
        cfg = dataclasses.replace(BASE, steps=1, batch_size=4, score_precision=precision, **MECHANISMS)
        run = setup(cfg, model_cfg, *tables, Workspace.create(tmp_path / precision), "m")
        assert run.score_bf16 == (precision == "bfloat16")
        fit(run)
        rows[precision] = dict(run.rows[0]["metrics"])
    exact, fast = rows["float32"], rows["bfloat16"]
    assert exact["train/tokens/completion"] == fast["train/tokens/completion"]  # same rollouts
    for key in ("train/loss/divergence", "train/loss/features", "train/kl_to_start"):
        assert fast[key] == pytest.approx(exact[key], rel=0.1, abs=1e-4), key
    assert fast["train/loss/divergence"] != exact["train/loss/divergence"]  # really ran in bfloat16


class _Stop(RuntimeError):
    pass


def test_resume_reproduces_the_uninterrupted_run(model_cfg, tables, tmp_path):
    from safetensors.torch import load_file

    cfg = dataclasses.replace(BASE, steps=3, checkpoint_every=1, **MECHANISMS)
    full = _train(cfg, model_cfg, tables, tmp_path / "full")

    def crash(step, row, student):
        if step == 1:
            raise _Stop("killed after step 1")

    with pytest.raises(_Stop):
        _train(cfg, model_cfg, tables, tmp_path / "resumed", on_step=crash)
    resumed = _train(cfg, model_cfg, tables, tmp_path / "resumed")

    def comparable(table):
        return [(r["step"], r["loss"], r["lr"],
                 {k: v for k, v in r["metrics"] if not k.startswith("train/time/")})
                for r in table.to_pylist()]

    assert comparable(resumed["train_steps"]) == comparable(full["train_steps"])
    assert resumed["rollouts"].to_pylist() == full["rollouts"].to_pylist()
    a = load_file(tmp_path / "full" / "files" / "checkpoint" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "files" / "checkpoint" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ema_closed_form():
    """After n updates θ̄_n = β^n θ̄_0 + (1−β) Σ_i β^(n−i) θ_i."""
    beta = 0.8
    source, target = torch.zeros(3), torch.tensor([1.0, -2.0, 0.5])
    start = target.clone()
    ema = EMA([("w", source, target)], beta=beta, every=2)
    trajectory = []
    for step in range(1, 7):
        source.copy_(torch.tensor([step, -step, 2.0 * step]))
        if ema.update(step):
            trajectory.append(source.clone())
    n = len(trajectory)
    expected = beta**n * start + (1 - beta) * sum(beta ** (n - 1 - i) * t for i, t in enumerate(trajectory))
    assert n == 3 and ema.updates == 3
    assert torch.allclose(target, expected)


def test_lora_ema_teacher_follows_beta_and_moves_away_from_start(model_cfg, tables, tmp_path):
    """The EMA adapter averages the student adapter (REFERENCE §8.1: it must not stay at θ0)."""
    beta = 0.5
    cfg = dataclasses.replace(BASE, steps=3, **{**MECHANISMS, "teacher": TeacherSettings(
        kind="ema", ema_beta=beta, ema_every=1)})
    run = setup(cfg, model_cfg, *tables, Workspace.create(tmp_path), "m")
    pairs = lora_ema_pairs(run.student)
    thetas = [{n: s.detach().clone() for n, s, _ in pairs}]
    fit(run, on_step=lambda step, row, student: thetas.append({n: s.detach().clone() for n, s, _ in pairs}))
    for name, _, target in pairs:
        expected = thetas[0][name] * beta**3
        for i in (1, 2, 3):
            expected = expected + (1 - beta) * beta ** (3 - i) * thetas[i][name]
        assert torch.allclose(target, expected, atol=1e-7), name
    ids = torch.tensor([[1, 520, 9531, 198, 28, 7018]])
    with torch.no_grad():
        with run.teachers.teacher() as teacher:
            ema_logits = teacher(input_ids=ids).logits
        with run.student.disable_adapter():
            start_logits = run.student(input_ids=ids).logits
    assert (ema_logits - start_logits).abs().max() > 1e-4


def test_full_finetune_with_ema_teacher_copy(model_cfg, tables, tmp_path):
    cfg = dataclasses.replace(BASE, steps=1, lr=1e-3, lora=LoraSettings(enabled=False),
                              teacher=TeacherSettings(kind="ema", ema_beta=0.5, ema_every=1))
    run = setup(cfg, model_cfg, *tables, Workspace.create(tmp_path), "m")
    name, param = next((n, p) for n, p in run.student.named_parameters() if "q_proj" in n)
    start = param.detach().clone()
    fit(run)
    copy = dict(run.teachers.copy.named_parameters())[name]
    assert not torch.equal(param, start)
    assert torch.allclose(copy, 0.5 * start + 0.5 * param, atol=1e-7)


def test_gradient_checkpointing_gives_the_same_step(model_cfg, tables, tmp_path):
    rows = []
    for flag in (False, True):
        cfg = dataclasses.replace(BASE, steps=1, gradient_checkpointing=flag)
        rows.append(_train(cfg, model_cfg, tables, tmp_path / str(flag))["train_steps"].to_pylist()[0])
    assert rows[1]["loss"] == pytest.approx(rows[0]["loss"], rel=1e-6)
    assert dict(rows[1]["metrics"])["train/grad_norm"] == pytest.approx(dict(rows[0]["metrics"])["train/grad_norm"],
                                                                        rel=1e-4)


def test_merged_checkpoint_matches_the_adapter_model(model_cfg, tables, tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = dataclasses.replace(BASE, steps=2, lr=5e-2)
    _train(cfg, model_cfg, tables, tmp_path)
    ckpt = tmp_path / "files" / "checkpoint"
    merged = AutoModelForCausalLM.from_pretrained(ckpt / "merged").eval()
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), ckpt).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.tensor([[1, 520, 9531, 198, 28, 7018, 411]])
    with torch.no_grad():
        a, m, b = adapter(input_ids=ids).logits, merged(input_ids=ids).logits, base(input_ids=ids).logits
    assert torch.allclose(a, m, atol=1e-5)
    assert (m - b).abs().max() > 1e-4
    assert (ckpt / "merged" / "tokenizer.json").exists()


def test_missing_views_fail_with_one_line(model_cfg, tables, tmp_path):
    examples, contexts, negatives = tables
    cfg = dataclasses.replace(BASE, agreement=AgreementSettings(level="token", num_views=5))
    with pytest.raises(ValueError, match="has no view aux_2"):
        setup(cfg, model_cfg, examples, contexts, negatives, Workspace.create(tmp_path), "m")
    cfg = dataclasses.replace(BASE, agreement=AgreementSettings(level="token", num_views=2, strategy="retrieval"))
    with pytest.raises(ValueError, match="built with strategy 'random'"):
        setup(cfg, model_cfg, examples, contexts, negatives, Workspace.create(tmp_path), "m")
