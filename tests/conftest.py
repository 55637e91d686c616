"""Test defaults: offline, CPU, no sockets except loopback, small thread counts, markers."""

from __future__ import annotations

import os
import socket

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("UNISD_THREADS", "1")  # tiny models: the `threads` setting resolves to one thread in tests
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

_real_connect = socket.socket.connect


def _loopback_only(self, address):  # tests never reach the network; local servers are fine
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("/"):
        raise RuntimeError(f"network access blocked in tests: {address!r}")
    return _real_connect(self, address)


socket.socket.connect = _loopback_only  # type: ignore[method-assign]


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)  # tiny models: threading overhead dominates, and the suite runs on 2 cores


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir():
    from engines import assets

    return assets.tiny_model_path()


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir):
    from engines.models import ModelConfig, load_model

    return load_model(ModelConfig(path=str(tiny_model_dir)))


def build_qwen_style_model(out, *, chat_template: bool = True):
    """A tiny Qwen2 whose tokenizer's eos (``<|endoftext|>``) is not the chat template's end-of-turn
    (``<|im_end|>``), as in Qwen2 instruct models; its generation config lists both, end-of-turn first.

    Its residual writes are zero, so each next token depends on the current one alone (a bigram table in
    ``lm_head``): after the generation prompt it always answers "Hello world" then ``<|im_end|>``.
    Returns (folder, {"start", "hello", "world", "im_end", "endoftext"} ids)."""
    import itertools

    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from engines import assets

    tok = AutoTokenizer.from_pretrained(assets.tokenizer_dir())
    tok.eos_token, tok.pad_token = "<|endoftext|>", "<|endoftext|>"
    ids = {"im_end": tok.convert_tokens_to_ids("<|im_end|>"), "endoftext": tok.convert_tokens_to_ids("<|endoftext|>")}
    start = tok.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True,
                                    tokenize=True, return_dict=True)["input_ids"][-1]
    hello, world = tok("Hello world", add_special_tokens=False)["input_ids"]
    ids |= {"start": start, "hello": hello, "world": world}
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=False, eos_token_id=ids["endoftext"], pad_token_id=ids["endoftext"])
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        normed = emb / emb.pow(2).mean(-1, keepdim=True).add(cfg.rms_norm_eps).sqrt()
        model.lm_head.weight.zero_()
        for a, b in itertools.pairwise([start, hello, world, ids["im_end"]]):
            model.lm_head.weight[b] += 10 * normed[a]
    model.generation_config = GenerationConfig(eos_token_id=[ids["im_end"], ids["endoftext"]],
                                               pad_token_id=ids["endoftext"])
    if not chat_template:
        tok.chat_template = None
    model.save_pretrained(out)
    tok.save_pretrained(out)
    if not chat_template:
        for f in ("chat_template.jinja", "chat_template.json"):
            (out / f).unlink(missing_ok=True)
    return out, ids


@pytest.fixture(scope="session")
def qwen_style_model(tmp_path_factory):
    """(folder, token ids) of `build_qwen_style_model`."""
    return build_qwen_style_model(tmp_path_factory.mktemp("qwen-style"))
