import re

import pytest

from engines.generation import HFGenerator, PromptTooLong, SamplingConfig, chat_ids


def test_greedy_is_deterministic_and_batch_invariant(tiny_lm):
    model, tok = tiny_lm
    prompts = ["What is 2+2?", "Write a haiku about the sea, please, in English.", "Hi"]
    sampling = SamplingConfig(max_new_tokens=6)
    a = HFGenerator(model, tok, batch_size=3).generate(prompts, sampling)
    b = HFGenerator(model, tok, batch_size=1).generate(prompts, sampling)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]  # left padding does not change outputs
    assert all(len(x.token_ids) <= 6 for x in a)
    assert [x.prompt_tokens for x in a] == [len(chat_ids(tok, p)) for p in prompts]


def test_sampling_is_seeded(tiny_lm):
    model, tok = tiny_lm
    gen = HFGenerator(model, tok, batch_size=2)
    s = SamplingConfig(max_new_tokens=8, temperature=1.0, seed=3)
    assert [c.token_ids for c in gen.generate(["a", "b"], s)] == [c.token_ids for c in gen.generate(["a", "b"], s)]
    other = gen.generate(["a", "b"], SamplingConfig(max_new_tokens=8, temperature=1.0, seed=4))
    assert [c.token_ids for c in other] != [c.token_ids for c in gen.generate(["a", "b"], s)]


def test_long_prompt_is_an_error_or_a_counted_truncation(tiny_lm):
    model, tok = tiny_lm
    long = "word " * 200
    with pytest.raises(PromptTooLong, match="max_prompt_tokens=32"):
        HFGenerator(model, tok, max_prompt_tokens=32).generate([long], SamplingConfig(max_new_tokens=2))
    gen = HFGenerator(model, tok, max_prompt_tokens=32, on_long_prompt="truncate_left")
    out = gen.generate([long, "short"], SamplingConfig(max_new_tokens=2))
    assert gen.stats.truncated == 1 and out[0].prompt_tokens == 32


def test_sampling_config_validation():
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingConfig(max_new_tokens=0)


def test_regex_stop_ends_each_row_independently(tiny_lm):
    model, tok = tiny_lm
    gen = HFGenerator(model, tok, batch_size=3)
    free = gen.generate(["a", "bb", "ccc"], SamplingConfig(max_new_tokens=12))
    stopped = gen.generate(["a", "bb", "ccc"], SamplingConfig(max_new_tokens=12, stop=r"\n\n|\S"))
    for f, s in zip(free, stopped):
        assert s.finished
        assert s.token_ids == f.token_ids[:len(s.token_ids)]  # same greedy prefix, cut at the first match
        assert len(s.token_ids) <= len(f.token_ids)
        assert re.search(r"\n\n|\S", s.text)  # stopped when the pattern appeared
        assert not re.search(r"\n\n|\S", tok.decode(s.token_ids[:-1]))  # and not a token earlier
    assert any(len(s.token_ids) < len(f.token_ids) for f, s in zip(free, stopped))
