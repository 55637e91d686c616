"""Each loss term of the train step equals its formula, recomputed densely, row by row, without padding.

The reference values are built independently of the trainer's packing: every row is run alone as
chat_ids(prompt) + completion, with full logits, and the objectives are applied to the completion
positions only. The trainer (packed, left-padded, token-chunked, phase A/B) must agree.
"""

from __future__ import annotations

import dataclasses

import pyarrow.compute as pc
import pytest
import torch
from test_train_fixtures import examples_table, single_thread  # noqa: F401 (autouse fixture)

from engines.generation import chat_ids
from objectives import (
    feature_matching,
    gather_logps,
    sequence_agreement_weights,
    token_agreement_weights,
    token_contrastive,
    token_divergence,
)
from objectives.divergence import topk_token_divergence
from stages import contexts as contexts_stage
from stages.negatives import LLMSource, NegativesConfig, WordNetSource
from stages.negatives import run as build_negatives
from stages.train import (
    AgreementSettings,
    ClipSettings,
    ContrastiveSettings,
    DivergenceSettings,
    FeatureSettings,
    LoraSettings,
    RolloutSettings,
    TrainConfig,
)
from stages.train.batches import BatchContext, choose_negative, completion_ids, generate, micro_batches
from stages.train.loop import setup, step_normalizers
from stages.train.step import Normalizers, agreement_weights, divergence_values, loss_terms, score
from stages.train.teachers import head_weight
from storage import Workspace

TAU = 0.7
CFG = TrainConfig(
    steps=1, batch_size=2, seed=3,
    lora=LoraSettings(r=4, alpha=8, dropout=0.0),
    rollout=RolloutSettings(max_new_tokens=6, temperature=1.0),
    agreement=AgreementSettings(level="token", num_views=2, gamma=2.0),
    contrastive=ContrastiveSettings(weight=0.3, margin=0.2, sources=("corrupt",)),
    features=FeatureSettings(mode="joint", weight=0.5),
)


@pytest.fixture(scope="module")
def prepared(tiny_model_dir, tmp_path_factory):
    """A set-up run with a perturbed adapter, one step's micro-batch, its scores and dense references."""
    from engines.models import ModelConfig

    examples = examples_table(3)
    # every trained item needs a verified-wrong negative for the dense reference below; the fixture's
    # code corruptions still pass their one-line tests (verified_wrong=False), so code items are left out
    examples = examples.filter(pc.field("family") != "code")
    negatives = build_negatives(NegativesConfig(llm=LLMSource(num_per_item=0), wordnet=WordNetSource(num_per_item=0)), examples)["negatives"]
    contexts = contexts_stage.run(contexts_stage.ContextsConfig(num_views=2), examples, negatives)["contexts"]
    run = setup(CFG, ModelConfig(path=str(tiny_model_dir)), examples, contexts, negatives,
                Workspace.create(tmp_path_factory.mktemp("ws")), "test")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in run.student.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    items = run.items[:2]
    ctx = BatchContext(CFG, run.student, run.tokenizer, run.encoder, torch.device("cpu"))
    comps = generate(ctx, items, 1)
    (mb,) = micro_batches(ctx, items, comps, 1)
    run.student.eval()
    sc = score(mb, run.teachers, CFG, with_start=True)
    return run, items, comps, mb, sc, _dense(run, items, comps)


def _row_forward(model, prompt_ids, completion):
    ids = torch.tensor([prompt_ids + completion])
    out = model(input_ids=ids, output_hidden_states=True)
    start = len(prompt_ids) - 1
    return out.logits[0, start:start + len(completion)], out.hidden_states[-1][0, start:start + len(completion)]


@torch.no_grad()
def _dense(run, items, comps) -> dict:
    tok, model = run.tokenizer, run.student
    ref: dict = {k: [] for k in ("s_logits", "s_hidden", "t_logits", "t_hidden", "n_logits", "aux", "y")}
    for item, comp in zip(items, comps):
        y = completion_ids(comp, tok.eos_token_id)
        ref["y"].append(torch.tensor(y))
        s_logits, s_hidden = _row_forward(model, chat_ids(tok, item.prompt), y)
        ref["s_logits"].append(s_logits)
        ref["s_hidden"].append(s_hidden)
        with model.disable_adapter():
            t_logits, t_hidden = _row_forward(model, chat_ids(tok, item.privileged), y)
            negative = choose_negative(item, CFG.seed, 1)
            ref["n_logits"].append(_row_forward(model, chat_ids(tok, negative), y)[0])
            ref["aux"].append([_row_forward(model, chat_ids(tok, view), y)[0] for view in item.aux])
        ref["t_logits"].append(t_logits)
        ref["t_hidden"].append(t_hidden)
    return ref


def _terms(run, mb, sc, cfg, weights=(None, None)):
    norm = step_normalizers(run.accelerator, cfg, [mb], [weights])
    with torch.no_grad():
        return loss_terms(run.model, head_weight(run.student), mb, sc, weights, cfg, norm)


def _per_token(ref, temperature=TAU):
    return torch.cat([token_divergence(s, t, temperature=temperature)
                      for s, t in zip(ref["s_logits"], ref["t_logits"])])


def test_loss_tokens_are_the_generated_tokens_with_eos(prepared):
    _, _, comps, mb, _, ref = prepared
    for r, comp in enumerate(comps):
        assert int(mb.mask[r].sum()) == len(comp.token_ids) + int(comp.finished)
        assert mb.tokens[r, mb.mask[r]].tolist() == ref["y"][r].tolist()


@pytest.mark.parametrize("kind,beta", [("forward_kl", None), ("reverse_kl", None), ("jsd", 0.3)])
def test_divergence_is_completion_only_and_honours_temperature(prepared, kind, beta):
    run, _, _, mb, sc, ref = prepared
    cfg = dataclasses.replace(CFG, agreement=AgreementSettings(),
                              divergence=DivergenceSettings(kind=kind, beta=beta, temperature=TAU))
    _, metrics = _terms(run, mb, sc, cfg)
    mix = 0.5 if beta is None else beta

    def per_token(temperature):
        return torch.cat([token_divergence(s, t, kind=kind, beta=mix, temperature=temperature)
                          for s, t in zip(ref["s_logits"], ref["t_logits"])])

    expected = per_token(TAU).mean()
    assert metrics["train/loss/divergence"] == pytest.approx(float(expected), rel=1e-4)
    assert float(per_token(1.0).mean()) != pytest.approx(float(expected), rel=1e-3)


def test_topk_divergence_matches_dense_values_and_gradients(prepared):
    run, _, _, _, sc, _ = prepared
    cfg = dataclasses.replace(CFG, divergence=DivergenceSettings(topk=5, chunk_size=4))
    weight = head_weight(run.student).detach()
    rows = torch.randn(sc.teacher_hidden.shape, generator=torch.Generator().manual_seed(0)).requires_grad_()
    values = divergence_values(rows, weight, sc, cfg)
    (grad,) = torch.autograd.grad(values.sum(), rows)
    dense_rows = rows.detach().clone().requires_grad_()
    dense = topk_token_divergence(dense_rows @ weight.T, sc.teacher_hidden @ weight.T, k=5, temperature=TAU)
    (dense_grad,) = torch.autograd.grad(dense.sum(), dense_rows)
    assert torch.allclose(values, dense, atol=1e-6) and torch.allclose(grad, dense_grad, atol=1e-6)
    exact = divergence_values(rows.detach(), weight, sc, dataclasses.replace(cfg, divergence=DivergenceSettings()))
    assert bool((values.detach() <= exact + 1e-6).all())


def test_contrastive_term_equals_token_contrastive(prepared):
    run, _, _, mb, sc, ref = prepared
    y = torch.cat(ref["y"])
    s = torch.cat([gather_logps(x, t, temperature=TAU) for x, t in zip(ref["s_logits"], ref["y"])])
    g = torch.cat([gather_logps(x, t, temperature=TAU) for x, t in zip(ref["t_logits"], ref["y"])])
    n = torch.cat([gather_logps(x, t, temperature=TAU) for x, t in zip(ref["n_logits"], ref["y"])])
    expected, em = token_contrastive(s, g, n, torch.ones_like(y, dtype=torch.bool), margin=0.2)
    _, metrics = _terms(run, mb, sc, CFG)
    assert metrics["train/loss/contrastive"] == pytest.approx(float(expected), rel=1e-4)
    assert metrics["train/contrastive/violation_fraction"] == pytest.approx(em["contrastive/violation_fraction"])
    assert float(expected) > 0


def test_feature_term_is_masked_mse_of_final_hidden_states(prepared):
    run, _, _, mb, sc, ref = prepared
    s, t = torch.cat(ref["s_hidden"]), torch.cat(ref["t_hidden"])
    expected, _ = feature_matching(s, t, torch.ones(s.shape[0], dtype=torch.bool))
    _, metrics = _terms(run, mb, sc, CFG)
    assert metrics["train/loss/features"] == pytest.approx(float(expected), rel=1e-4)
    assert float(expected) > 0


def test_total_is_the_weighted_sum_of_terms(prepared):
    run, _, _, mb, sc, _ = prepared
    loss, metrics = _terms(run, mb, sc, dataclasses.replace(CFG, agreement=AgreementSettings()))
    expected = metrics["train/loss/divergence"] + 0.3 * metrics["train/loss/contrastive"] \
        + 0.5 * metrics["train/loss/features"]
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def _view_logps(ref, k):
    return torch.cat([gather_logps(aux[k], y, temperature=TAU) for aux, y in zip(ref["aux"], ref["y"])])


@pytest.mark.parametrize("normalize", ["weight_sum", "count"])
def test_token_agreement_weights_scale_each_token(prepared, normalize):
    """weight_sum: Σ w·ℓ / Σ w (the term keeps its scale); count: Σ w·ℓ / N (the term shrinks by the mean weight)."""
    run, _, _, mb, sc, ref = prepared
    cfg = dataclasses.replace(CFG, agreement=dataclasses.replace(CFG.agreement, normalize=normalize))
    views = torch.stack([_view_logps(ref, k) for k in range(2)])
    weights, _ = token_agreement_weights(views, torch.ones(views.shape[1], dtype=torch.bool), gamma=2.0)
    (w,), metrics = agreement_weights(cfg, [mb], [sc])
    _, terms = _terms(run, mb, sc, cfg, w)
    per_token = _per_token(ref)
    denominator = weights.sum() if normalize == "weight_sum" else len(per_token)
    assert terms["train/loss/divergence"] == pytest.approx(float((weights * per_token).sum() / denominator), rel=1e-4)
    assert metrics["train/agreement/weight_min"] < 1.0
    if normalize == "count":
        assert terms["train/loss/divergence"] < float(per_token.mean())


@pytest.mark.parametrize("normalize", ["count", "weight_sum"])
def test_sequence_weights_do_not_cancel(prepared, normalize):
    """Sequence weights matter under either normaliser: count scales each sequence's share, weight_sum
    moves the term towards the better-agreed sequence (never a per-sequence weighted mean, §8.2)."""
    run, _, _, mb, sc, ref = prepared
    cfg = dataclasses.replace(CFG, agreement=AgreementSettings(level="sequence", num_views=2, gamma=3e4,
                                                               normalize=normalize))
    (w,), _ = agreement_weights(cfg, [mb], [sc])
    _, seq_w = w
    assert bool((seq_w < 1).all()) and float(seq_w.min()) < 0.99, seq_w
    view_logps = sc.view_logps
    expected_w, _ = sequence_agreement_weights(view_logps, mb.mask, gamma=3e4)
    assert torch.allclose(seq_w, expected_w)
    _, terms = _terms(run, mb, sc, cfg, w)
    rows = [token_divergence(s, t, temperature=TAU) for s, t in zip(ref["s_logits"], ref["t_logits"])]
    n = sum(len(r) for r in rows)
    weighted = sum(float(wb) * float(r.sum()) for wb, r in zip(seq_w, rows))
    denominator = n if normalize == "count" else sum(float(wb) * len(r) for wb, r in zip(seq_w, rows))
    assert terms["train/loss/divergence"] == pytest.approx(weighted / denominator, rel=1e-4)
    if normalize == "count":
        assert terms["train/loss/divergence"] < float(torch.cat(rows).mean()) * 0.999


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_single_view_gives_unit_weights_not_nan(prepared, level):
    run, _, _, mb, sc, _ = prepared
    cfg = dataclasses.replace(CFG, agreement=AgreementSettings(level=level, num_views=1, gamma=3.0))
    one = dataclasses.replace(sc, view_logps=sc.view_logps[:1])
    (w,), _ = agreement_weights(cfg, [mb], [one])
    weights = w[0] if level == "token" else w[1]
    assert torch.isfinite(weights).all() and bool((weights == 1).all())
    _, terms = _terms(run, mb, sc, cfg, w)
    _, plain = _terms(run, mb, sc, dataclasses.replace(cfg, agreement=AgreementSettings()))
    assert terms["train/loss/divergence"] == pytest.approx(plain["train/loss/divergence"], rel=1e-6)


def test_clip_caps_per_token_divergence_after_the_vocabulary_sum(prepared):
    run, _, _, mb, sc, ref = prepared
    per_token = _per_token(ref)
    kappa = float(per_token.median())
    cfg = dataclasses.replace(CFG, agreement=AgreementSettings(), clip=ClipSettings(max_value=kappa))
    _, terms = _terms(run, mb, sc, cfg)
    assert terms["train/loss/divergence"] == pytest.approx(float(per_token.clamp(max=kappa).mean()), rel=1e-4)
    assert terms["train/clip/fraction"] == pytest.approx(float((per_token > kappa).float().mean()))


def test_repr_mode_drops_the_divergence_from_the_loss(prepared):
    run, _, _, mb, sc, _ = prepared
    cfg = dataclasses.replace(CFG, agreement=AgreementSettings(), contrastive=ContrastiveSettings(),
                              features=FeatureSettings(mode="repr", weight=1.0))
    loss, terms = _terms(run, mb, sc, cfg)
    assert terms["train/loss/divergence"] > 0
    assert float(loss) == pytest.approx(terms["train/loss/features"], rel=1e-6)


def test_kl_to_start_is_k3_against_the_adapter_disabled_model(prepared):
    from objectives import k3_kl

    run, _, _, mb, sc, ref = prepared
    with torch.no_grad(), run.student.disable_adapter():
        start = [gather_logps(_row_forward(run.student, chat_ids(run.tokenizer, it.prompt), y.tolist())[0], y)
                 for it, y in zip(prepared[1], ref["y"])]
    now = [gather_logps(s, y) for s, y in zip(ref["s_logits"], ref["y"])]
    expected = torch.stack([k3_kl(a[None], b[None], torch.ones(1, len(a), dtype=torch.bool))[0]
                            for a, b in zip(now, start)]).mean()
    _, terms = _terms(run, mb, sc, CFG)
    assert terms["train/kl_to_start"] == pytest.approx(float(expected), rel=1e-3)
    assert terms["train/kl_to_start"] > 0


def test_sft_term_is_cross_entropy_on_the_gold_reference(prepared):
    run, items, _, _, _, _ = prepared
    cfg = dataclasses.replace(CFG, divergence=dataclasses.replace(CFG.divergence, weight=0.0),
                              agreement=AgreementSettings(), contrastive=ContrastiveSettings(),
                              features=FeatureSettings(), sft=dataclasses.replace(CFG.sft, weight=1.0))
    ctx = BatchContext(cfg, run.student, run.tokenizer, run.encoder, torch.device("cpu"))
    (mb,) = micro_batches(ctx, items, None, 1)
    norm = Normalizers(tokens=1.0, gold=float(mb.gold_mask.sum()))
    with torch.no_grad():
        loss, _ = loss_terms(run.model, head_weight(run.student), mb, None, (None, None), cfg, norm)
        nll, n = 0.0, 0
        for item in items:
            gold = run.tokenizer(item.reference, add_special_tokens=False)["input_ids"] + [run.tokenizer.eos_token_id]
            logits, _ = _row_forward(run.student, chat_ids(run.tokenizer, item.prompt), gold)
            nll -= float(gather_logps(logits, torch.tensor(gold)).sum())
            n += len(gold)
    assert float(loss) == pytest.approx(nll / n, rel=1e-4)


def test_rows_without_a_negative_do_not_dilute_the_contrastive_term(prepared):
    """Adding a row that has no bad teacher leaves the contrastive term and its gradient unchanged."""
    run, items, comps, _, _, _ = prepared
    cfg = dataclasses.replace(CFG, divergence=dataclasses.replace(CFG.divergence, weight=0.0),
                              agreement=AgreementSettings(), features=FeatureSettings())
    ctx = BatchContext(cfg, run.student, run.tokenizer, run.encoder, torch.device("cpu"))
    without = dataclasses.replace(items[1], negatives=())
    params = [p for p in run.student.parameters() if p.requires_grad]
    out = []
    for rows, completions in (([items[0]], comps[:1]), ([items[0], without], comps[:2])):
        (mb,) = micro_batches(ctx, rows, completions, 1)
        run.student.eval()
        sc = score(mb, run.teachers, cfg, with_start=False)
        norm = step_normalizers(run.accelerator, cfg, [mb], [(None, None)])
        loss, terms = loss_terms(run.model, head_weight(run.student), mb, sc, (None, None), cfg, norm)
        out.append((terms["train/loss/contrastive"], torch.autograd.grad(loss, params)))
    (alone, grads_alone), (mixed, grads_mixed) = out
    assert alone > 0
    assert mixed == pytest.approx(alone, rel=1e-6)
    for a, b in zip(grads_alone, grads_mixed):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-9)
