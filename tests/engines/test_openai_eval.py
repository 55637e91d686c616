"""`evaluate.engine: openai` against a real `transformers serve` on loopback, compared with the hf engine.

The model is a small random Llama with the embedded SmolLM2 tokenizer and chat template, initialised
wide enough that greedy decoding emits varied tokens (the tiny fixture model only repeats newlines,
which would compare nothing) and with an end-of-turn row that wins after one common token, so some
completions end on EOS and others at max_new_tokens. Both engines run it in float32 on the CPU; the
openai engine renders the prompt with the local tokenizer and sends it to the completions endpoint, so
the server sees the same tokens and greedy text is expected to be identical, character for character.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pytest
from test_openai_server import start_server, stop_server

import schemas
from engines.generation import HFGenerator, SamplingConfig, chat_ids
from engines.models import ModelConfig, load_model
from engines.openai_eval import OpenAICompletions, prompt_text
from stages import pipeline
from stages.evaluate import EvaluateConfig
from storage import Store

pytestmark = pytest.mark.integration

PROMPTS = ["Which gas do plants absorb?", "Count to three.", "Write f returning 1", "What is 2+3?",
           "Name a prime number.", "Which planet is red?"]


def build_random_chat_model(out: Path) -> Path:
    """A seeded random 2-layer Llama (hidden 64) with the SmolLM2 tokenizer, saved to ``out``; its
    end-of-turn row copies (scaled up) the row of the 4th token it greedily emits for ``PROMPTS[0]``."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    from engines import assets

    tok = AutoTokenizer.from_pretrained(assets.tokenizer_dir())
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=False, initializer_range=0.3, bos_token_id=tok.bos_token_id,
                      eos_token_id=eos, pad_token_id=eos)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.tensor([chat_ids(tok, PROMPTS[0])])
    with torch.no_grad():
        first = model.generate(ids, max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=eos)
        model.lm_head.weight[eos] = 1.5 * model.lm_head.weight[int(first[0, -1])]
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=eos)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base_url, model folder, (model, tokenizer) loaded for the hf engine) of a live server."""
    folder = build_random_chat_model(tmp_path_factory.mktemp("random-chat"))
    proc, url = start_server(folder)
    try:
        yield url, folder, load_model(ModelConfig(path=str(folder), dtype="float32", device="cpu"))
    finally:
        stop_server(proc)


def _openai(url: str, folder: Path, tok, batch_size: int = 3) -> OpenAICompletions:
    return OpenAICompletions(url, str(folder), tok, batch_size=batch_size, max_prompt_tokens=512,
                             on_long_prompt="error", api_key_env="UNISD_TEST_NO_KEY", retries=0)


def test_prompt_text_round_trips_to_the_rendered_ids(served):
    _, _, (_, tok) = served
    for p in PROMPTS:
        text, exact = prompt_text(tok, chat_ids(tok, p))
        assert exact and text.endswith("<|im_start|>assistant\n")


def test_greedy_outputs_equal_the_hf_engine(served):
    url, folder, (model, tok) = served
    sampling = SamplingConfig(max_new_tokens=16)
    hf = HFGenerator(model, tok, batch_size=1).generate(PROMPTS, sampling)
    gen = _openai(url, folder, tok)
    out = gen.generate(PROMPTS, sampling)
    assert [c.text for c in out] == [c.text for c in hf]
    assert [c.finished for c in out] == [c.finished for c in hf]
    assert {c.finished for c in hf} == {True, False}  # some end on EOS, some at max_new_tokens
    assert [c.prompt_tokens for c in out] == [len(chat_ids(tok, p)) for p in PROMPTS] and gen.mismatched == 0


def test_regex_stop_ends_where_the_hf_engine_ends(served):
    url, folder, (model, tok) = served
    full = HFGenerator(model, tok, batch_size=1).generate(PROMPTS[1:2], SamplingConfig(max_new_tokens=16))[0]
    assert not full.finished and len(full.text) > 20
    stop = re.escape(full.text[8:11])  # first matches in the middle of the completion
    sampling = SamplingConfig(max_new_tokens=16, stop=stop)
    hf = HFGenerator(model, tok, batch_size=1).generate(PROMPTS[1:2], sampling)[0]
    got = _openai(url, folder, tok).generate(PROMPTS[1:2], sampling)[0]
    assert hf.finished and got.finished and got.text == hf.text
    assert 11 <= len(got.text) < len(full.text) and full.text.startswith(got.text)


def _examples() -> pa.Table:
    options = ["Oxygen", "Carbon dioxide", "Nitrogen", "Helium"]
    rows = [{"id": f"mc/{i}", "dataset": "mc", "split": "test", "family": "mcqa",
             "prompt": f"{q}\nA. Oxygen\nB. Carbon dioxide\nC. Nitrogen\nD. Helium", "reference": "Answer: B",
             "rationale": None, "options": options, "answer": "B", "tests": None, "meta": "{}"}
            for i, q in enumerate(PROMPTS[:4])]
    return schemas.conform(rows, schemas.EXAMPLES)


def test_evaluate_stage_scores_the_server_like_the_hf_engine(served, tmp_path):
    url, folder, _ = served
    store = Store(tmp_path / "store")
    examples = store.materialize(pipeline.INGEST_SPEC, {"t": 1}, {}, lambda ws: {"examples": _examples()})
    model = ModelConfig(path=str(folder), dtype="float32", device="cpu")
    hf_cfg = EvaluateConfig(engine="hf", max_new_tokens={"mcqa": 12}, batch_size=2)
    oa_cfg = EvaluateConfig(engine="openai", base_url=url, served_model=str(folder), api_key_env="UNISD_TEST_NO_KEY",
                            max_new_tokens={"mcqa": 12}, batch_size=2, request_retries=0)
    hf = pipeline.evaluate(store, model, hf_cfg, examples)
    oa = pipeline.evaluate(store, model, oa_cfg, examples)
    assert oa.key != hf.key
    key = json.loads((oa.path / "manifest.json").read_text())["config"]
    assert key["evaluate"]["base_url"] == url and key["evaluate"]["served_model"] == str(folder)
    assert "api_key_env" not in key["evaluate"] and "base_url" not in hf.manifest["config"]["evaluate"]
    cols = ["id", "completion", "extracted", "correct", "score", "truncated", "prompt_tokens"]
    assert oa.table("predictions").select(cols).to_pylist() == hf.table("predictions").select(cols).to_pylist()
    strip = ["dataset", "metric", "value", "n"]
    assert oa.table("scores").select(strip).to_pylist() == hf.table("scores").select(strip).to_pylist()
    assert set(oa.table("scores").column("precision").to_pylist()) == {"served"}
    assert pipeline.evaluate(store, model, oa_cfg, examples).key == oa.key  # cached: same key, no server call


def test_a_wrong_model_id_is_one_line_naming_the_server(served):
    url, _, (_, tok) = served
    gen = OpenAICompletions(url, "no/such-model", tok, batch_size=1, max_prompt_tokens=512, on_long_prompt="error",
                            api_key_env="UNISD_TEST_NO_KEY", retries=0)
    with pytest.raises(RuntimeError, match=re.escape(url)) as e:
        gen.generate(["Hi"], SamplingConfig(max_new_tokens=2))
    assert "\n" not in str(e.value)

