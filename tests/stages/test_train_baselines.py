"""Baselines as presets of the one loop: what each computes, and what tells it from its neighbours."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_train_fixtures import examples_table, single_thread  # noqa: F401 (autouse fixture)

from engines.models import ModelConfig
from stages import contexts as contexts_stage
from stages.negatives import LLMSource, NegativesConfig, WordNetSource
from stages.negatives import run as build_negatives
from stages.train import LoraSettings, RolloutSettings, SFTSettings, TrainConfig
from stages.train.batches import BatchContext, generate, on_policy_rows
from stages.train.data import step_indices
from stages.train.loop import fit, setup
from storage import Workspace
from unisd.config import load_experiment

BASE = TrainConfig(steps=1, batch_size=2, lr=1e-2, warmup_ratio=0.0, seed=3, log_every=1,
                   lora=LoraSettings(r=4, alpha=8, dropout=0.0),
                   rollout=RolloutSettings(max_new_tokens=6, temperature=1.0))


@pytest.fixture(scope="module")
def tables():
    examples = examples_table(3)
    negatives = build_negatives(NegativesConfig(llm=LLMSource(num_per_item=0), wordnet=WordNetSource(num_per_item=0)),
                                examples)["negatives"]
    contexts = contexts_stage.run(contexts_stage.ContextsConfig(num_views=0), examples, negatives)["contexts"]
    return examples, contexts, negatives


@pytest.fixture(scope="module")
def model_cfg(tiny_model_dir):
    return ModelConfig(path=str(tiny_model_dir))


def _setup(cfg, model_cfg, tables, path):
    return setup(cfg, model_cfg, *tables, Workspace.create(path), "m")


def _ctx(run):
    return BatchContext(run.cfg, run.student, run.tokenizer, run.encoder, torch.device("cpu"),
                        start=run.teachers.start)


PRESETS = {
    # method: (teacher the divergence reads, loss terms that are on, whether completions are sampled)
    "sd": ("start", {"divergence"}, True),
    "sft": (None, {"sft"}, False),
    "ssd": (None, {"sft"}, True),
    "sdft": ("ema", {"divergence"}, True),
    "gkd": ("start", {"divergence"}, True),
    "opsd": ("start", {"divergence"}, True),
}


def _preset(method):
    """The shipped preset, shrunk to one tiny step (only sizes change, never what the preset does)."""
    cfg = load_experiment("distill", check_model=False).method_config(method)
    return dataclasses.replace(cfg, steps=1, batch_size=2, grad_accum=1, lr=1e-2, warmup_ratio=0.0, datasets=(),
                               max_train_examples=None, log_every=1, checkpoint_every=1,
                               lora=dataclasses.replace(cfg.lora, r=4, alpha=8, dropout=0.0),
                               rollout=dataclasses.replace(cfg.rollout, max_new_tokens=6))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("method", sorted(PRESETS))
def test_each_preset_runs_its_teacher_and_its_terms(method, model_cfg, tables, tmp_path):
    """After one real step: which weights the teacher views use, which loss terms are non-zero, and
    whether completions were sampled (and from whom) — read from the run, not from the YAML."""
    teacher, terms, samples = PRESETS[method]
    cfg = _preset(method)
    run = _setup(cfg, model_cfg, tables, tmp_path)
    fit(run)
    metrics = dict(run.rows[0]["metrics"])
    loss_terms = {k.rsplit("/", 1)[-1] for k, v in metrics.items() if k.startswith("train/loss/") and v != 0}
    assert loss_terms == terms, metrics
    assert (metrics["train/time/generate_s"] > 0.01) == samples
    ids = torch.tensor([[1, 520, 9531, 198, 28, 7018]])
    student = _logits(run.student, ids)
    with run.student.disable_adapter():
        start = _logits(run.student, ids)
    assert (student - start).abs().max() > 1e-4  # the step moved the adapter
    if teacher is None:
        assert not cfg.needs_teacher
        return
    with run.teachers.teacher() as t:
        seen = _logits(t, ids)
    if teacher == "start":
        assert torch.allclose(seen, start, atol=1e-6)
    else:  # SDFT's EMA teacher moves 1% of the way to the student after every step
        moved = float((seen - start).norm() / (student - start).norm())
        assert 0.003 < moved < 0.03, moved


def test_incoherent_baseline_settings_are_rejected():
    with pytest.raises(ValueError, match="on_policy_fraction < 1 mixes gold"):
        TrainConfig(divergence=dataclasses.replace(BASE.divergence, weight=0.0), sft=SFTSettings(weight=1.0),
                    rollout=RolloutSettings(on_policy_fraction=0.5))
    with pytest.raises(ValueError, match="backend=vllm .* lora.enabled"):
        TrainConfig(lora=LoraSettings(enabled=False), rollout=RolloutSettings(backend="vllm"))
    with pytest.raises(ValueError, match="on_policy_fraction must be in"):
        RolloutSettings(on_policy_fraction=1.5)


def test_sft_loss_is_the_gold_cross_entropy(model_cfg, tables, tmp_path):
    cfg = dataclasses.replace(BASE, divergence=dataclasses.replace(BASE.divergence, weight=0.0),
                              sft=SFTSettings(weight=1.0))
    run = _setup(cfg, model_cfg, tables, tmp_path)
    items = [run.items[i] for i in step_indices(len(run.items), cfg.batch_size, 1, cfg.seed)]
    nll, count = 0.0, 0
    with torch.no_grad():
        for it in items:
            prompt = run.encoder(it.prompt)
            gold = run.tokenizer(it.reference, add_special_tokens=False)["input_ids"] + [run.tokenizer.eos_token_id]
            logits = run.student(input_ids=torch.tensor([prompt + gold])).logits[0].double()
            logps = logits[len(prompt) - 1:-1].log_softmax(-1).gather(-1, torch.tensor(gold)[:, None])
            nll, count = nll - float(logps.sum()), count + len(gold)
    fit(run)
    metrics = dict(run.rows[0]["metrics"])
    assert metrics["train/loss/sft"] == pytest.approx(nll / count, rel=1e-4)
    assert "train/loss/divergence" not in metrics and "train/tokens/completion" in metrics
    assert metrics["train/time/generate_s"] < 0.05  # nothing was sampled


def test_ssd_samples_from_the_start_model_and_trains_on_them(model_cfg, tables, tmp_path):
    cfg = dataclasses.replace(BASE, lr=1.0, divergence=dataclasses.replace(BASE.divergence, weight=0.0),
                              sft=SFTSettings(weight=1.0, target="rollout"),
                              rollout=dataclasses.replace(BASE.rollout, policy="start"))
    trained = _setup(cfg, model_cfg, tables, tmp_path / "a")
    fit(trained)
    fresh = _setup(cfg, model_cfg, tables, tmp_path / "b")
    moved = any(not torch.equal(a, b) for (n, a), (_, b) in zip(trained.student.named_parameters(),
                                                                 fresh.student.named_parameters()) if "lora_" in n)
    assert moved
    items = trained.items[:3]
    after = [c.token_ids for c in generate(_ctx(trained), items, step=2)]
    before = [c.token_ids for c in generate(_ctx(fresh), items, step=2)]
    assert after == before  # θ0 samples, whatever the adapter learned
    own = dataclasses.replace(cfg, rollout=BASE.rollout)
    trained.cfg = own
    assert [c.token_ids for c in generate(_ctx(trained), items, step=2)] != before  # the student's would differ
    metrics = dict(trained.rows[0]["metrics"])
    assert metrics["train/loss/sft"] > 0 and metrics["train/tokens/completion"] == 12
    assert "train/loss/divergence" not in metrics and metrics["train/time/teachers_s"] < 0.05


def test_gkd_mixes_sampled_and_gold_sequences(model_cfg, tables, tmp_path):
    lam = dataclasses.replace(BASE.rollout, on_policy_fraction=0.5)
    cfg = dataclasses.replace(BASE, rollout=lam, divergence=dataclasses.replace(BASE.divergence, kind="jsd", beta=0.5))

    class Item:
        def __init__(self, i):
            self.id = f"x{i}"

    many = [Item(i) for i in range(600)]
    rows = on_policy_rows(cfg, many, step=1)
    assert rows == on_policy_rows(cfg, many, step=1)
    assert 0.44 < sum(rows) / len(rows) < 0.56
    assert rows != on_policy_rows(cfg, many, step=2)
    off = dataclasses.replace(cfg, rollout=dataclasses.replace(lam, on_policy_fraction=0.0))
    run = _setup(off, model_cfg, tables, tmp_path)
    comps = generate(_ctx(run), run.items[:2], step=1)
    for item, c in zip(run.items[:2], comps):
        gold = run.tokenizer(item.reference, add_special_tokens=False)["input_ids"]
        assert c.token_ids == gold[:6] and c.finished == (len(gold) <= 6) and c.text == item.reference
    fit(run)
    assert dict(run.rows[0]["metrics"])["train/loss/divergence"] > 0


def test_vllm_backend_without_vllm_fails_before_training(model_cfg, tables, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # not importable, whatever this machine has
    cfg = dataclasses.replace(BASE, rollout=dataclasses.replace(BASE.rollout, backend="vllm"))
    with pytest.raises(RuntimeError, match="rollout.backend=vllm needs the vllm package"):
        _setup(cfg, model_cfg, tables, tmp_path)
