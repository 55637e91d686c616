"""The pure parts of the vllm and openai evaluation engines (no server, no vLLM: vLLM is not installed
here, so `VLLMEvaluator` itself never runs in these tests).

The post-processing of a vLLM sample (`vllm_eval.finish`) is checked against the hf engine on a real
model: fed the tokens the hf engine decodes without a stop pattern, it must return exactly the
completion the hf engine returns with one (same tokens, text, finished flag).
"""

from __future__ import annotations

import importlib.util
import re

import pytest
from test_openai_eval import PROMPTS, build_random_chat_model

from engines.generation import HFGenerator, SamplingConfig
from engines.models import ModelConfig, load_model
from engines.openai_eval import stream_cut
from engines.stops import stop_ids
from engines.vllm_eval import (
    MISSING_VLLM,
    VLLMEvaluator,
    adapter_rank,
    check_installed,
    engine_kwargs,
    finish,
    lora_id,
    regex_cut,
)
from engines.vllm_rollouts import sampling_kwargs

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.fixture(scope="module")
def random_lm(tmp_path_factory):
    folder = build_random_chat_model(tmp_path_factory.mktemp("random-chat"))
    return load_model(ModelConfig(path=str(folder), dtype="float32", device="cpu"))


def test_finish_reproduces_the_hf_engine_with_and_without_a_stop(random_lm):
    model, tok = random_lm
    eos = list(stop_ids(tok))
    plain = HFGenerator(model, tok, batch_size=1).generate(PROMPTS, SamplingConfig(max_new_tokens=16))
    assert {c.finished for c in plain} == {True, False}
    for c in plain:  # as vLLM reports them: the stop id included, "stop" or "length"
        ids = c.token_ids + ([c.stop_id] if c.stop_id is not None else [])
        got = finish(tok, c.prompt_tokens, ids, "stop" if c.finished else "length", eos, None, 0.0)
        assert (got.text, got.token_ids, got.finished, got.stop_id) == (c.text, c.token_ids, c.finished, c.stop_id)
    long = next(c for c in plain if not c.finished)
    i = plain.index(long)
    pattern = re.escape(long.text[6:9])
    stopped = HFGenerator(model, tok, batch_size=1).generate([PROMPTS[i]], SamplingConfig(max_new_tokens=16,
                                                                                          stop=pattern))[0]
    got = finish(tok, long.prompt_tokens, long.token_ids, "length", eos, pattern, 0.0)
    assert (got.text, got.token_ids, got.finished) == (stopped.text, stopped.token_ids, True)
    assert len(got.token_ids) < len(long.token_ids)


def test_regex_cut_is_the_first_matching_prefix(random_lm):
    _, tok = random_lm
    ids = tok("Reasoning first. Answer: B\nthen more text", add_special_tokens=False)["input_ids"]
    k = regex_cut(tok, ids, r"Answer: [A-D]\b[^\n]*\n")
    assert tok.decode(ids[:k]).endswith("B\n") and not re.search(r"Answer: [A-D]\b[^\n]*\n", tok.decode(ids[:k - 1]))
    assert regex_cut(tok, ids, r"Answer: Z") is None


def test_sampling_arguments_are_greedy_with_the_hf_stop_ids(random_lm):
    _, tok = random_lm
    kwargs = sampling_kwargs(SamplingConfig(max_new_tokens=7, top_p=0.5), list(stop_ids(tok)), 3)
    assert kwargs["temperature"] == 0 and kwargs["top_p"] == 1.0 and kwargs["max_tokens"] == 7
    assert kwargs["ignore_eos"] and kwargs["stop_token_ids"] == list(stop_ids(tok))


def test_engine_arguments_and_lora_ranks():
    kw = engine_kwargs("/m", dtype="bfloat16", max_model_len=2304, gpu_memory=0.8, max_lora_rank=64)
    assert kw["enable_lora"] and kw["max_lora_rank"] == 64 and kw["max_model_len"] == 2304
    assert "enable_lora" not in engine_kwargs("/m", dtype="bfloat16", max_model_len=9, gpu_memory=0.8,
                                              max_lora_rank=None)
    with pytest.raises(ValueError, match="vllm_max_lora_rank must be one of"):
        engine_kwargs("/m", dtype="bfloat16", max_model_len=9, gpu_memory=0.8, max_lora_rank=48)


def test_adapter_rank_and_id_of_a_real_peft_adapter(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, _ = load_model(ModelConfig(path=str(tiny_model_dir), dtype="float32", device="cpu"), trainable=True)
    get_peft_model(model, LoraConfig(r=16, target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path / "a")
    assert adapter_rank(tmp_path / "a") == 16 and adapter_rank(tmp_path) is None
    first = lora_id(tmp_path / "a")
    assert lora_id(tmp_path / "a") == first
    weights = tmp_path / "a" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")  # a rewritten adapter must not reuse vLLM's cached copy
    assert lora_id(tmp_path / "a") != first
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="adapter_config.json: no integer LoRA rank"):
        adapter_rank(tmp_path / "b")


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed")
def test_without_vllm_the_engine_is_one_line_naming_pip(random_lm):
    _, tok = random_lm
    with pytest.raises(ValueError, match=re.escape("pip install vllm")):
        check_installed()
    with pytest.raises(RuntimeError) as e:
        VLLMEvaluator("/m", tok, adapter=None, max_prompt_tokens=8, on_long_prompt="error", max_new_tokens=8,
                      dtype="bfloat16", gpu_memory=0.5, max_lora_rank=64)
    assert str(e.value) == MISSING_VLLM and "\n" not in MISSING_VLLM


def test_stream_cut_keeps_the_piece_that_completes_the_match():
    pieces = [("Ans", None), ("wer: ", None), ("B.\n", None), ("more", None), ("", "length")]
    assert stream_cut(iter(pieces), r"Answer: [A-D]") == ("Answer: B.\n", True, None)
    assert stream_cut(iter(pieces), r"Answer: Z") == ("Answer: B.\nmore", False, "length")
