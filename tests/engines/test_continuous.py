"""ContinuousGenerator against HFGenerator: same tokens, flags and bookkeeping, fewer wasted row-steps.

The seeded tiny Llama only copies its last input token under greedy decoding (tied embeddings dominate
its residual stream), which would hide attention or position bugs; `sharp_lm` scales its projection
weights so every output depends on the whole context. `eos_tok` makes a token the model really emits
the end-of-sequence token, so rows end at different steps and new prompts join mid-run.
"""

from __future__ import annotations

import collections
import copy
import functools
import math
import re

import pytest
import torch

from engines.continuous import ContinuousGenerator, prefill_groups, row_generator, sample_tokens
from engines.generation import HFGenerator, PromptTooLong, SamplingConfig, chat_ids
from engines.prefill import MIN_SHARED_TOKENS, SharedPrefix, common_prefix_length, prefill

PROMPTS = ["Hi", "What is 2+2?", "Write a haiku about the sea, please, in English.", "a",
           "Tell me a story about dragons, knights and castles, " * 3, "bb ccc", "Explain recursion."]


@pytest.fixture(scope="module")
def sharp_lm(tiny_lm):
    model, tok = tiny_lm
    sharp = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in sharp.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(8)
            elif name.endswith(("v_proj.weight", "o_proj.weight", "gate_proj.weight", "up_proj.weight",
                                "down_proj.weight")):
                p.mul_(10)
    return sharp, tok


@pytest.fixture(scope="module")
def eos_tok(sharp_lm):
    """A tokenizer whose EOS is the token the sharp model emits in the most rows (first occurrence varies)."""
    model, tok = sharp_lm
    outs = HFGenerator(model, tok, batch_size=4).generate(PROMPTS, SamplingConfig(max_new_tokens=12))
    counts = collections.Counter(t for c in outs for t in set(c.token_ids[:10]))
    return _with_eos(tok, counts.most_common(1)[0][0])


def _with_eos(tok, eos_id: int):
    tok2 = copy.deepcopy(tok)
    tok2.eos_token = tok2.convert_ids_to_tokens(eos_id)
    assert tok2.eos_token_id == eos_id != tok2.pad_token_id
    return tok2


def _same(a, b) -> list[bool]:
    return [(x.token_ids, x.finished, x.prompt_tokens, x.text) == (y.token_ids, y.finished, y.prompt_tokens, y.text)
            for x, y in zip(a, b)]


@pytest.mark.parametrize("max_new_tokens", [1, 6, 12])
def test_greedy_equals_hf_generator_for_every_batch_size(sharp_lm, eos_tok, max_new_tokens):
    model, _ = sharp_lm
    sampling = SamplingConfig(max_new_tokens=max_new_tokens)
    ref = HFGenerator(model, eos_tok, batch_size=3).generate(PROMPTS, sampling)
    if max_new_tokens > 1:  # rows end at different steps, some at their first token
        assert len({len(c.token_ids) for c in ref}) > 2 and any(c.finished for c in ref)
    for batch_size in (1, 2, 3):
        out = ContinuousGenerator(model, eos_tok, batch_size=batch_size).generate(PROMPTS, sampling)
        assert all(_same(ref, out)), batch_size


def test_greedy_equals_hf_on_the_plain_tiny_model(tiny_lm):
    model, tok = tiny_lm
    sampling = SamplingConfig(max_new_tokens=8)
    ref = HFGenerator(model, tok, batch_size=3).generate(PROMPTS, sampling)
    assert all(_same(ref, ContinuousGenerator(model, tok, batch_size=2).generate(PROMPTS, sampling)))


def test_cache_regrowth_keeps_greedy_tokens(sharp_lm):
    model, tok = sharp_lm  # 90 new tokens: the slot buffers outgrow their spare columns at least once
    sampling = SamplingConfig(max_new_tokens=90)
    ref = HFGenerator(model, tok, batch_size=3).generate(PROMPTS[:3], sampling)
    assert all(_same(ref, ContinuousGenerator(model, tok, batch_size=2).generate(PROMPTS[:3], sampling)))


def test_rows_ending_at_their_first_token_never_take_a_slot(sharp_lm):
    model, tok = sharp_lm
    sampling = SamplingConfig(max_new_tokens=8)
    first = ContinuousGenerator(model, tok, batch_size=3).generate(PROMPTS, sampling)[2].token_ids[0]
    eos = _with_eos(tok, first)
    ref = HFGenerator(model, eos, batch_size=3).generate(PROMPTS, sampling)
    out = ContinuousGenerator(model, eos, batch_size=2).generate(PROMPTS, sampling)
    assert all(_same(ref, out))
    assert out[2].token_ids == [] and out[2].finished and any(len(c.token_ids) == 8 for c in out)


def test_eos_ends_rows_and_finished_flags(sharp_lm, eos_tok):
    model, _ = sharp_lm
    out = ContinuousGenerator(model, eos_tok, batch_size=2).generate(PROMPTS, SamplingConfig(max_new_tokens=12))
    for c in out:
        assert eos_tok.eos_token_id not in c.token_ids
        assert c.finished or len(c.token_ids) == 12
    assert any(c.finished for c in out) and not all(c.finished for c in out)


def test_rows_leave_and_join_without_wasted_steps(sharp_lm, eos_tok):
    """Every decode step runs exactly the live rows, and the batch stays full while prompts are pending."""
    model, _ = sharp_lm
    decode_rows: list[int] = []
    hook = model.register_forward_hook(
        lambda m, args, kwargs, out: decode_rows.append(kwargs["input_ids"].shape[0])
        if kwargs["input_ids"].shape[1] == 1 else None, with_kwargs=True)
    try:
        out = ContinuousGenerator(model, eos_tok, batch_size=3).generate(PROMPTS, SamplingConfig(max_new_tokens=12))
    finally:
        hook.remove()
    # a row decodes once per token after its first, the EOS step included
    assert sum(decode_rows) == sum(len(c.token_ids) + c.finished - 1 for c in out)
    assert max(decode_rows) == 3 and decode_rows == sorted(decode_rows, reverse=True)  # full, then draining


def test_stop_regex_ends_each_row_like_hf(sharp_lm):
    model, tok = sharp_lm
    pattern = r"\S\s+\S"
    free = ContinuousGenerator(model, tok, batch_size=2).generate(PROMPTS, SamplingConfig(max_new_tokens=12))
    sampling = SamplingConfig(max_new_tokens=12, stop=pattern)
    stopped = ContinuousGenerator(model, tok, batch_size=2).generate(PROMPTS, sampling)
    assert all(_same(HFGenerator(model, tok, batch_size=3).generate(PROMPTS, sampling), stopped))
    for f, s in zip(free, stopped):
        assert s.token_ids == f.token_ids[:len(s.token_ids)]
        if s.finished:
            assert re.search(pattern, s.text) and not re.search(pattern, tok.decode(s.token_ids[:-1]))
        else:
            assert len(s.token_ids) == 12 and not re.search(pattern, s.text)
    assert any(len(s.token_ids) < len(f.token_ids) for f, s in zip(free, stopped))


def test_long_prompt_is_an_error_or_a_counted_truncation(tiny_lm):
    model, tok = tiny_lm
    long = "word " * 200
    with pytest.raises(PromptTooLong, match="max_prompt_tokens=32"):
        ContinuousGenerator(model, tok, max_prompt_tokens=32).generate([long], SamplingConfig(max_new_tokens=2))
    gen = ContinuousGenerator(model, tok, max_prompt_tokens=32, on_long_prompt="truncate_left")
    out = gen.generate(["short", long, long], SamplingConfig(max_new_tokens=2))
    assert gen.stats.truncated == 2 and [c.prompt_tokens for c in out] == [len(chat_ids(tok, "short")), 32, 32]
    assert gen.stats.longest == len(chat_ids(tok, long))


def test_results_follow_prompt_order(sharp_lm):
    model, tok = sharp_lm
    sampling = SamplingConfig(max_new_tokens=5)
    gen = ContinuousGenerator(model, tok, batch_size=3, system="Be brief.")
    out = gen.generate(PROMPTS, sampling)
    alone = [gen.generate([p], sampling)[0] for p in PROMPTS]
    assert all(_same(alone, out))
    assert [c.prompt_tokens for c in out] == [len(chat_ids(tok, p, "Be brief.")) for p in PROMPTS]
    assert gen.generate([], sampling) == []


def test_progress_counts_every_prompt_once(sharp_lm, eos_tok):
    model, _ = sharp_lm
    calls: list[int] = []
    out = ContinuousGenerator(model, eos_tok, batch_size=2).generate(PROMPTS, SamplingConfig(max_new_tokens=12),
                                                                   progress=calls.append)
    assert sum(calls) == len(PROMPTS) == len(out) and all(n > 0 for n in calls) and len(calls) > 1
    assert sum(c.seconds for c in out) > 0 and all(c.seconds > 0 for c in out)


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_sampling_is_seeded_and_independent_of_batch_size(sharp_lm, eos_tok, top_p):
    model, _ = sharp_lm
    s = SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=top_p, seed=3)
    runs = [ContinuousGenerator(model, eos_tok, batch_size=b).generate(PROMPTS, s) for b in (3, 3, 1, 7)]
    for other in runs[1:]:
        assert [c.token_ids for c in other] == [c.token_ids for c in runs[0]]
    reseeded = ContinuousGenerator(model, eos_tok, batch_size=3).generate(
        PROMPTS, SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=top_p, seed=4))
    assert [c.token_ids for c in reseeded] != [c.token_ids for c in runs[0]]
    greedy = ContinuousGenerator(model, eos_tok, batch_size=3).generate(PROMPTS, SamplingConfig(max_new_tokens=10))
    assert [c.token_ids for c in greedy] != [c.token_ids for c in runs[0]]


def test_sample_tokens_follows_the_nucleus_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(4000, -1)
    rngs = [row_generator(7, i) for i in range(4000)]
    counts = collections.Counter(sample_tokens(logits, rngs, temperature=1.0, top_p=0.7))
    assert set(counts) == {0, 1}  # top-p 0.7 keeps the two tokens whose preceding mass is < 0.7
    assert math.isclose(counts[0] / 4000, 0.5 / 0.8, abs_tol=0.04)
    rngs = [row_generator(7, i) for i in range(4000)]
    counts = collections.Counter(sample_tokens(logits, rngs, temperature=1.0, top_p=1.0))
    assert all(math.isclose(counts[k] / 4000, float(probs[k]), abs_tol=0.03) for k in range(4))
    assert sample_tokens(torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]]), [None, None], 0.0, 1.0) == [1, 0]
    spiky = torch.tensor([[0.0, -math.inf, 5.0, -math.inf]]).expand(200, -1)  # zero-probability tokens never drawn
    assert set(sample_tokens(spiky, [row_generator(1, i) for i in range(200)], 1.0, 1.0)) == {0, 2}


def test_peft_wrapped_model_matches_hf(sharp_lm):
    from peft import LoraConfig, get_peft_model

    model, tok = sharp_lm
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", init_lora_weights=False)
    lora = get_peft_model(copy.deepcopy(model), config)
    lora.eval()
    sampling = SamplingConfig(max_new_tokens=6)
    ref = HFGenerator(lora, tok, batch_size=3).generate(PROMPTS, sampling)
    assert all(_same(ref, ContinuousGenerator(lora, tok, batch_size=2).generate(PROMPTS, sampling)))
    assert [c.token_ids for c in ref] != [c.token_ids for c in HFGenerator(model, tok, batch_size=3).generate(
        PROMPTS, sampling)]  # the adapter is active


def test_batch_size_must_be_positive(tiny_lm):
    with pytest.raises(ValueError, match="batch_size"):
        ContinuousGenerator(*tiny_lm, batch_size=0)


INSTRUCTION = "Answer the following question in one short sentence, then stop. Question: "


def _prefill_shapes(model, run) -> tuple[list[tuple[int, int]], object]:
    """(rows, tokens) of every multi-token forward (prefills) while ``run()`` executes, and its result."""
    shapes: list[tuple[int, int]] = []
    hook = model.register_forward_hook(
        lambda m, args, kwargs, out: shapes.append(tuple(kwargs["input_ids"].shape))
        if kwargs["input_ids"].shape[1] > 1 else None, with_kwargs=True)
    try:
        out = run()
    finally:
        hook.remove()
    return shapes, out


def test_common_prefix_length_leaves_a_token_of_every_prompt():
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert common_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter prompt keeps its last token
    assert common_prefix_length([[1, 2], [3, 2]]) == 0
    assert common_prefix_length([[1, 2, 3]]) == 0  # one prompt: nothing to share


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_shared_prefix_gives_the_same_tokens_and_is_prefilled_once(sharp_lm, eos_tok, temperature):
    model, _ = sharp_lm
    prompts = [INSTRUCTION + p for p in PROMPTS]
    encoded = [chat_ids(eos_tok, p) for p in prompts]
    shared = common_prefix_length(encoded)
    assert shared >= MIN_SHARED_TOKENS + 10  # the chat template's system turn and the instruction
    sampling = SamplingConfig(max_new_tokens=12, temperature=temperature, seed=5)
    runs = {}
    for share in (False, True):
        gen = ContinuousGenerator(model, eos_tok, batch_size=3, share_prefix=share)
        shapes, runs[share] = _prefill_shapes(model, functools.partial(gen.generate, prompts, sampling))
        if share:  # the prefix alone, then only the tokens after it
            assert shapes[0] == (1, shared) and all(w <= max(map(len, encoded)) - shared for _, w in shapes[1:])
        else:
            assert all(w > shared for _, w in shapes)
        assert sum(r for r, _ in shapes) == len(prompts) + share
    assert all(_same(runs[False], runs[True]))
    if temperature == 0:
        assert len({len(c.token_ids) for c in runs[True]}) > 1  # rows end at different steps, others join
        assert all(_same(HFGenerator(model, eos_tok, batch_size=3).generate(prompts, sampling), runs[True]))


def test_no_prefix_is_shared_below_the_minimum(sharp_lm):
    model, tok = sharp_lm
    encoded = [[5, 6, 7, 8], [5, 6, 9]]
    assert SharedPrefix.build(model, encoded, torch.device("cpu")) is None
    gen = ContinuousGenerator(model, tok, batch_size=2, system="S")
    shapes, _ = _prefill_shapes(model, lambda: gen.generate(["Hi", "Hello there"], SamplingConfig(max_new_tokens=2)))
    assert shapes[0][0] == 1  # the template's system turn is long enough: shared


def test_prefill_refuses_a_prompt_without_the_shared_prefix(sharp_lm):
    model, tok = sharp_lm
    encoded = [chat_ids(tok, INSTRUCTION + p) for p in PROMPTS[:2]]
    prefix = SharedPrefix.build(model, encoded, torch.device("cpu"))
    assert prefix is not None and prefix.length == common_prefix_length(encoded)
    with torch.inference_mode(), pytest.raises(ValueError, match="shared prefix"):
        prefill(model, [chat_ids(tok, "Hi", "Other system")], 0, torch.device("cpu"), prefix)


@pytest.mark.slow
def test_greedy_matches_hf_on_the_embedded_model():
    """fp32 SmolLM2-135M on HumanEval-style prompts: identical completions expected; >= 95% is accepted
    because padded batches of different widths may sum attention in a different order and flip an exact tie."""
    from engines.models import ModelConfig, load_model

    model, tok = load_model(ModelConfig())
    prompts = ["Complete the following Python function. Return the full function in a ```python code block."
               f"\n\n```python\ndef {name}(xs: list[int]) -> int:\n    \"\"\"{doc}\"\"\"\n```"
               for name, doc in [("total", "Sum of xs."), ("largest", "Largest element of xs."),
                                 ("count_even", "How many even numbers xs holds."), ("first", "First element.")]]
    prompts += ["What is the capital of France?", "Say hi.", "Name three colours."]
    sampling = SamplingConfig(max_new_tokens=24, stop=r"```[^\n]*\n[\s\S]*?\n\s*```")
    ref = HFGenerator(model, tok, batch_size=3).generate(prompts, sampling)
    out = ContinuousGenerator(model, tok, batch_size=3).generate(prompts, sampling)
    assert sum(_same(ref, out)) >= 0.95 * len(prompts)
    assert any(c.finished for c in ref)
    full = ContinuousGenerator(model, tok, batch_size=3, share_prefix=False).generate(prompts, sampling)
    assert sum(_same(full, out)) >= 0.95 * len(prompts)


def test_prefill_groups_stay_within_the_budget_in_order():
    assert prefill_groups([50, 40, 30, 30, 10], 100) == [[0, 1], [2, 3, 4]]  # 2*50, then 3*30
    assert prefill_groups([200, 20, 20], 100) == [[0], [1, 2]]  # over the budget alone: its own group
    assert prefill_groups([], 100) == []
    lengths = [97, 60, 60, 33, 12, 12, 12, 5, 1]
    groups = prefill_groups(lengths, 128)
    assert [j for g in groups for j in g] == list(range(len(lengths)))
    assert all(len(g) == 1 or len(g) * max(lengths[j] for j in g) <= 128 for g in groups)


def test_prefill_in_groups_gives_the_same_tokens(sharp_lm, eos_tok, monkeypatch):
    """Joining prompts are prefilled a few at a time (a forward per group of ~PREFILL_TOKENS positions);
    every row still gets the tokens of one whole-batch prefill, with the same rows ending early."""
    import engines.continuous as continuous

    model, _ = sharp_lm
    prompts = [INSTRUCTION + p for p in PROMPTS]
    sampling = SamplingConfig(max_new_tokens=12)
    whole_shapes, whole = _prefill_shapes(
        model, lambda: ContinuousGenerator(model, eos_tok, batch_size=7).generate(prompts, sampling))
    monkeypatch.setattr(continuous, "PREFILL_TOKENS", 16)
    shapes, grouped = _prefill_shapes(
        model, lambda: ContinuousGenerator(model, eos_tok, batch_size=7).generate(prompts, sampling))
    assert len(whole_shapes) == 2 and len(shapes) > len(whole_shapes)  # the prefix, then the joins
    assert all(r == 1 or r * w <= 16 for r, w in shapes[1:])
    assert sum(r for r, _ in shapes[1:]) == len(prompts)
    assert all(_same(whole, grouped))
