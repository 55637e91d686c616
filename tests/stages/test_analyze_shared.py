"""One prompt pass for several continuations equals packing each continuation with its prompt."""

from __future__ import annotations

import torch

from stages.analyze.shared import shared_prompt_hidden
from stages.train.data import pack, pad_completions
from stages.train.step import scoring_hidden


def _packed_hidden(model, prompts, seqs, pad):
    tokens, lengths = pad_completions(seqs, pad)
    hidden = scoring_hidden(model, pack(prompts, tokens, lengths, pad), tokens.shape[1], False, 10**6)
    return hidden, torch.arange(tokens.shape[1])[None, :] < lengths[:, None]


def _case(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lens_p, lens_a, lens_b = [7, 2, 11, 4, 1], [3, 9, 1, 5, 6], [12, 1, 4, 8, 2]  # uneven, one-token rows

    def draw(n):
        return torch.randint(3, vocab, (n,), generator=g).tolist()

    return [draw(n) for n in lens_p], [draw(n) for n in lens_a], [draw(n) for n in lens_b]


def _check(model, pad, budget):
    prompts, gold, own = _case(model.config.vocab_size)
    shared = shared_prompt_hidden(model, prompts, [gold, own], pad, budget=budget)
    for seqs, got in zip((gold, own), shared):
        want, mask = _packed_hidden(model, prompts, seqs, pad)
        assert got.shape == want.shape
        torch.testing.assert_close(got[mask], want[mask], rtol=1e-4, atol=1e-5)


def test_equals_packed_passes(tiny_lm):
    model, tok = tiny_lm
    for budget in (1, 40, 10**6):  # one row per group, a few groups, one group
        _check(model, tok.pad_token_id, budget)


def test_equals_packed_passes_under_lora_and_with_it_disabled(tiny_lm):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny_lm
    torch.manual_seed(0)
    adapted = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                               init_lora_weights=False))
    try:
        _check(adapted, tok.pad_token_id, 40)
        prompts, gold, _ = _case(model.config.vocab_size)
        on = shared_prompt_hidden(adapted, prompts, [gold], tok.pad_token_id)[0]
        with adapted.disable_adapter():
            _check(adapted, tok.pad_token_id, 40)
            off = shared_prompt_hidden(adapted, prompts, [gold], tok.pad_token_id)[0]
        _, mask = _packed_hidden(model, prompts, gold, tok.pad_token_id)
        assert (on[mask] - off[mask]).abs().max() > 1e-4  # the adapter really is in effect
    finally:
        adapted.unload()
