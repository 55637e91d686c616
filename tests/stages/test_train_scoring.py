"""No-grad scoring passes: length grouping is exact, bfloat16 scoring is close to float32."""

from __future__ import annotations

import torch

from stages.train.data import pack
from stages.train.step import completion_hidden, decoder_of, length_groups, scoring_hidden


def _packed(model):
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    prompt_lengths, completion_lengths = [3, 17, 5, 11, 2, 9], [4, 1, 6, 6, 2, 3]
    prompts = [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in prompt_lengths]
    tokens = torch.randint(3, vocab, (len(prompts), max(completion_lengths)), generator=gen)
    lengths = torch.tensor(completion_lengths)
    mask = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
    return pack(prompts, tokens, lengths, pad_id=0), tokens, mask


def test_length_groups_cover_every_row_once_within_budget(tiny_lm):
    packed, _, _ = _packed(tiny_lm[0])
    groups = length_groups(packed, budget=40)
    rows = torch.cat([g for g, _, _ in groups]).sort().values
    assert rows.tolist() == list(range(packed.ids.shape[0]))
    assert len(groups) > 1
    for g, w, t in groups:
        assert len(g) == 1 or len(g) * (w + t) <= 40
        assert w == int(packed.attn[g, :packed.width].sum(-1).max())


def test_grouped_scoring_equals_one_padded_pass(tiny_lm):
    model = tiny_lm[0]
    packed, tokens, mask = _packed(model)
    with torch.no_grad():
        dense = completion_hidden(decoder_of(model), packed, tokens.shape[1], bare=True)
        for budget in (1, 40, 10**6):
            grouped = scoring_hidden(model, packed, tokens.shape[1], bf16=False, budget=budget)
            assert grouped.shape == dense.shape
            torch.testing.assert_close(grouped[mask], dense[mask], rtol=1e-4, atol=1e-5)


def test_bf16_scoring_is_float32_and_close(tiny_lm):
    model = tiny_lm[0]
    packed, tokens, mask = _packed(model)
    with torch.no_grad():
        exact = scoring_hidden(model, packed, tokens.shape[1], bf16=False, budget=64)
        fast = scoring_hidden(model, packed, tokens.shape[1], bf16=True, budget=64)
    assert fast.dtype == torch.float32
    assert not torch.equal(fast[mask], exact[mask])
    rel = (fast[mask] - exact[mask]).norm() / exact[mask].norm()
    assert rel < 0.05


def test_merged_lora_forward_equals_the_adapter_path_and_is_undone(tiny_lm):
    import copy

    from peft import LoraConfig, get_peft_model

    from stages.train.teachers import merged_lora

    model = get_peft_model(copy.deepcopy(tiny_lm[0]), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.3,
                                                                  target_modules=["q_proj", "v_proj", "down_proj"],
                                                                  init_lora_weights=False))
    model.add_adapter("other", LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    model.set_adapter("default")
    model.eval()
    packed, tokens, mask = _packed(model)
    with torch.no_grad():
        side_path = scoring_hidden(model, packed, tokens.shape[1], bf16=False, budget=10**6)
        with merged_lora(model, "default") as n:
            merged = scoring_hidden(model, packed, tokens.shape[1], bf16=False, budget=10**6)
        after = scoring_hidden(model, packed, tokens.shape[1], bf16=False, budget=10**6)
        with model.disable_adapter():
            base = scoring_hidden(model, packed, tokens.shape[1], bf16=False, budget=10**6)
    assert n == 3 * model.config.num_hidden_layers
    torch.testing.assert_close(merged[mask], side_path[mask], rtol=1e-4, atol=1e-5)
    assert torch.equal(after, side_path)  # every module has its own forward back
    assert not torch.allclose(base[mask], side_path[mask], atol=1e-3)  # the adapter really contributes
    assert all("forward" not in m.__dict__ for m in model.modules())
