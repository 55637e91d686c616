"""Any HF causal LM stops where it says it does: every eos id of its generation config and the chat
template's end-of-turn token, tested on a tiny Qwen2-style model whose tokenizer eos is not its end-of-turn."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import build_qwen_style_model

from engines.continuous import ContinuousGenerator
from engines.generation import HFGenerator, SamplingConfig, chat_ids
from engines.models import ModelConfig, load_model
from engines.stops import NoChatTemplate, end_of_turn, prepare_tokenizer, stop_ids
from engines.vllm_rollouts import completion_tokens, sampling_kwargs

PROMPTS = ["Say hello.", "A longer prompt, to pad the batch on the left."]


@pytest.fixture(scope="module")
def qwen(qwen_style_model):
    folder, ids = qwen_style_model
    model, tok = load_model(ModelConfig(path=str(folder)))
    return model, tok, ids


def test_stop_ids_put_the_end_of_turn_token_first(qwen) -> None:
    _, tok, ids = qwen
    assert tok.eos_token_id == ids["endoftext"] != ids["im_end"]
    assert stop_ids(tok) == (ids["im_end"], ids["endoftext"])
    assert end_of_turn(tok) == ids["im_end"]


def test_the_fixture_runs_past_end_of_turn_when_only_the_tokenizer_eos_stops(qwen) -> None:
    model, tok, ids = qwen
    prompt = torch.tensor([chat_ids(tok, PROMPTS[0])])
    out = model.generate(input_ids=prompt, max_new_tokens=6, do_sample=False, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)[0, prompt.shape[1]:].tolist()
    assert out[:3] == [ids["hello"], ids["world"], ids["im_end"]] and len(out) > 3


@pytest.mark.parametrize("engine", [HFGenerator, ContinuousGenerator])
def test_generation_stops_at_end_of_turn(qwen, engine) -> None:
    model, tok, ids = qwen
    outs = engine(model, tok, batch_size=2).generate(PROMPTS, SamplingConfig(max_new_tokens=8))
    for c in outs:
        assert (c.text, c.token_ids, c.finished, c.stop_id) == ("Hello world", [ids["hello"], ids["world"]],
                                                                True, ids["im_end"])


def test_vllm_stops_on_the_same_ids(qwen) -> None:
    _, tok, ids = qwen
    assert sampling_kwargs(SamplingConfig(), stop_ids(tok), 0)["stop_token_ids"] == [ids["im_end"], ids["endoftext"]]
    assert completion_tokens([7, ids["im_end"]], "length", stop_ids(tok)) == ([7], True)
    assert completion_tokens([7, ids["endoftext"]], "stop", stop_ids(tok)) == ([7], True)


def test_every_generation_config_eos_id_stops(qwen) -> None:
    _, tok, ids = qwen
    prepare_tokenizer(tok, model_eos=[ids["im_end"], 77, ids["endoftext"]])
    try:
        assert stop_ids(tok) == (ids["im_end"], 77, ids["endoftext"])
    finally:
        prepare_tokenizer(tok, model_eos=[ids["im_end"], ids["endoftext"]])


def test_a_model_without_a_chat_template_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    folder, ids = build_qwen_style_model(tmp_path / "base", chat_template=False)
    with pytest.raises(NoChatTemplate, match=r"has no chat template: set model.chat_template=plain"):
        load_model(ModelConfig(path=str(folder)))
    _, tok = load_model(ModelConfig(path=str(folder), chat_template="plain"))
    assert tok.decode(chat_ids(tok, "Say hello.")) == "Say hello.\n\n"
    assert stop_ids(tok) == (ids["im_end"], ids["endoftext"]) and end_of_turn(tok) == ids["endoftext"]


def test_unknown_chat_template_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="model.chat_template must be one of auto, plain"):
        ModelConfig(chat_template="jinja")
