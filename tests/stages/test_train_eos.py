"""Training and analysis end sequences as the model's chat turns end: a rollout stopped at ``<|im_end|>``
keeps that id, and an SFT gold sequence or a retention answer ends with it, not with ``<|endoftext|>``
(a Qwen2-style tiny model, where the two differ)."""

from __future__ import annotations

import pytest
import torch
from test_train_fixtures import examples_table, single_thread  # noqa: F401 (autouse fixture)

from engines.models import ModelConfig
from stages import contexts as contexts_stage
from stages.analyze import AnalyzeConfig, _encode
from stages.negatives import LLMSource, NegativesConfig, WordNetSource
from stages.negatives import run as build_negatives
from stages.train import LoraSettings, RolloutSettings, SFTSettings, TrainConfig
from stages.train.batches import BatchContext, completion_ids, generate, micro_batches
from stages.train.loop import setup
from storage import Workspace

CFG = TrainConfig(steps=1, batch_size=2, lr=1e-2, warmup_ratio=0.0, seed=3, log_every=1,
                  lora=LoraSettings(r=4, alpha=8, dropout=0.0), rollout=RolloutSettings(max_new_tokens=6))


@pytest.fixture(scope="module")
def run(qwen_style_model, tmp_path_factory):
    examples = examples_table(2)
    negatives = build_negatives(NegativesConfig(llm=LLMSource(num_per_item=0), wordnet=WordNetSource(num_per_item=0)),
                                examples)["negatives"]
    contexts = contexts_stage.run(contexts_stage.ContextsConfig(num_views=0), examples, negatives)["contexts"]
    folder, _ = qwen_style_model
    cfg = TrainConfig(**{**CFG.__dict__, "sft": SFTSettings(weight=1.0, target="gold")})
    return setup(cfg, ModelConfig(path=str(folder)), examples, contexts, negatives,
                 Workspace.create(tmp_path_factory.mktemp("ws")), "m")


def test_rollouts_stop_at_end_of_turn_and_keep_it(run, qwen_style_model) -> None:
    _, ids = qwen_style_model
    ctx = BatchContext(run.cfg, run.student, run.tokenizer, run.encoder, torch.device("cpu"))
    items = run.items[:2]
    comps = generate(ctx, items, 1)
    assert all(c.finished and c.stop_id == ids["im_end"] for c in comps)
    assert all(completion_ids(c, ids["endoftext"])[-1] == ids["im_end"] for c in comps)
    mb = micro_batches(ctx, items, comps, 1)[0]
    last = mb.mask.sum(1) - 1
    assert mb.tokens[torch.arange(len(items)), last].tolist() == [ids["im_end"]] * len(items)


def test_sft_gold_sequences_end_with_the_end_of_turn_token(run, qwen_style_model) -> None:
    _, ids = qwen_style_model
    ctx = BatchContext(run.cfg, run.student, run.tokenizer, run.encoder, torch.device("cpu"))
    mb = micro_batches(ctx, run.items[:2], None, 1)[0]
    last = mb.gold_mask.sum(1) - 1
    ends = mb.gold_tokens[torch.arange(2), last].tolist()
    assert ends == [ids["im_end"]] * 2 and ids["endoftext"] not in mb.gold_tokens[mb.gold_mask].tolist()


def test_retention_answers_end_with_the_end_of_turn_token(run, qwen_style_model) -> None:
    _, ids = qwen_style_model
    encoded = _encode(AnalyzeConfig(), run.tokenizer, ["Answer: B", "cut"], [True, False])
    assert encoded[0][-1] == ids["im_end"] and encoded[1][-1] != ids["im_end"]
