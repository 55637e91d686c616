"""Training data helpers: example selection, seeded epoch order, prompt encoding, packing."""

from __future__ import annotations

import dataclasses

import pytest
from test_train_fixtures import examples_table

from engines.generation import Completion, PromptTooLong, chat_ids
from stages.train import TrainConfig
from stages.train.batches import completion_ids, rollout_seed
from stages.train.data import PromptEncoder, pack, pad_completions, select_examples, step_indices


def test_select_examples_train_split_datasets_and_cap():
    examples = examples_table(4)
    rows = select_examples(TrainConfig(), examples)
    assert {r["split"] for r in rows} == {"train"} and len(rows) == 12
    rows = select_examples(TrainConfig(datasets=("math_ds",), max_train_examples=2), examples)
    assert [r["id"] for r in rows] == ["math-train-0", "math-train-1"]
    with pytest.raises(ValueError, match="no train split for 'nope'"):
        select_examples(TrainConfig(datasets=("nope",)), examples)


def test_step_indices_are_seeded_epoch_permutations():
    n, batch = 5, 2
    order = [i for step in range(1, 11) for i in step_indices(n, batch, step, seed=7)]
    epochs = [order[e * n:(e + 1) * n] for e in range(4)]
    assert all(sorted(e) == list(range(n)) for e in epochs)  # every epoch visits every example once
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled per epoch
    assert order == [i for step in range(1, 11) for i in step_indices(n, batch, step, seed=7)]
    assert order != [i for step in range(1, 11) for i in step_indices(n, batch, step, seed=8)]
    assert step_indices(n, batch, 3, seed=7) == order[4:6]  # a step's batch needs only the step number


def test_prompt_encoder_errors_or_counts_truncation(tiny_lm):
    _, tok = tiny_lm
    text = "word " * 50
    full = chat_ids(tok, text)
    with pytest.raises(PromptTooLong, match="max_prompt_tokens=40"):
        PromptEncoder(tok, 40, "error")(text)
    enc = PromptEncoder(tok, 40, "truncate_left")
    assert enc.prepare([text, "hi"]) == 1 and enc.uses_truncated == 0
    assert enc(text) == full[-40:] and enc.uses_truncated == 1
    assert enc("hi") == chat_ids(tok, "hi") and enc.uses_truncated == 1


def test_pack_left_pads_prompts_and_right_pads_completions():
    tokens, lengths = pad_completions([[7, 8, 9], [5]], pad_id=0)
    packed = pack([[1, 2], [3, 4, 5, 6]], tokens, lengths, pad_id=0)
    assert packed.width == 4
    assert packed.ids.tolist() == [[0, 0, 1, 2, 7, 8, 9], [3, 4, 5, 6, 5, 0, 0]]
    assert packed.attn.tolist() == [[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]]
    for r in range(2):  # the column predicting completion token t is width - 1 + t in every row
        assert packed.ids[r, packed.width:packed.width + int(lengths[r])].tolist() == tokens[r, :lengths[r]].tolist()


def test_completion_ids_restore_eos_and_seeds_are_pure():
    done = Completion("x", [4, 5], 3, True, 0.0)
    cut = Completion("y", [4, 5], 3, False, 0.0)
    assert completion_ids(done, 2) == [4, 5, 2] and completion_ids(cut, 2) == [4, 5]
    assert rollout_seed(1, 5, 0) == rollout_seed(1, 5, 0) != rollout_seed(1, 5, 1) != rollout_seed(1, 6, 0)


def test_config_is_frozen_and_hashable_into_a_cache_key():
    from storage import canonical_json

    cfg = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 3  # type: ignore[misc]
    assert canonical_json(cfg) != canonical_json(dataclasses.replace(cfg, lr=1e-4))
