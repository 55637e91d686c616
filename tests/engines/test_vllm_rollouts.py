"""VLLMRollouts against a stand-in engine: vLLM itself needs CUDA and is not installed here.

`fake_vllm` registers modules ``vllm``, ``vllm.inputs`` and ``vllm.lora.request`` whose classes accept only
argument names the real classes have. `StandIn` plays ``vllm.LLM``: at each ``generate`` it loads the
adapter from ``lora_request.lora_path`` with PEFT (as vLLM would), records the call, and answers with
objects shaped like ``RequestOutput`` from a script of (prompt ids) -> (token ids, finish_reason).
"""

from __future__ import annotations

import copy
import subprocess
import sys
from collections import namedtuple
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import ClassVar

import pytest
import torch

from engines.generation import HFGenerator, PromptTooLong, SamplingConfig, chat_ids
from engines.vllm_rollouts import MISSING_VLLM, VLLMRollouts, completion_tokens, max_lora_rank, request_seed
from stages.train.batches import completion_ids

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["Hi", "What is 2+2?", "Write a haiku about the sea, please.", "a", "Explain recursion."]

SAMPLING_FIELDS = {"n", "presence_penalty", "frequency_penalty", "repetition_penalty", "temperature",
                   "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids", "ignore_eos", "max_tokens",
                   "min_tokens", "logprobs", "prompt_logprobs", "detokenize", "skip_special_tokens",
                   "spaces_between_special_tokens", "include_stop_str_in_output"}
"""Some fields of vllm.SamplingParams."""
ENGINE_FIELDS = {"model", "tokenizer", "dtype", "seed", "gpu_memory_utilization", "max_model_len",
                 "enable_lora", "max_lora_rank", "max_loras", "max_cpu_loras", "tensor_parallel_size",
                 "enforce_eager"}
"""Some keyword arguments of vllm.LLM (EngineArgs)."""


def echo_script(prompt_ids: list[int], params) -> tuple[list[int], str]:
    """Last three prompt ids reversed; even-length prompts end with the stop token ("stop"), odd ones
    hit "length"."""
    ids = prompt_ids[-3:][::-1]
    return (ids + params.stop_token_ids, "stop") if len(prompt_ids) % 2 == 0 else (ids, "length")


class StandIn:
    """A stand-in for ``vllm.LLM``: records its arguments and every ``generate`` call."""

    instances: ClassVar[list[StandIn]] = []

    def __init__(self, script=echo_script, **kwargs):
        unknown = set(kwargs) - ENGINE_FIELDS
        if unknown:
            raise TypeError(f"vllm.LLM has no argument {unknown}")
        self.script, self.kwargs, self.calls = script, kwargs, []
        StandIn.instances.append(self)

    def generate(self, prompts, sampling_params, *, lora_request=None, use_tqdm=True):
        from peft import LoraConfig
        from peft.utils import load_peft_weights

        assert len(prompts) == len(sampling_params)
        path = lora_request.lora_path if lora_request is not None else None
        self.calls.append(SimpleNamespace(prompts=prompts, params=sampling_params, lora=lora_request,
                                          use_tqdm=use_tqdm, weights=load_peft_weights(path) if path else None,
                                          config=LoraConfig.from_pretrained(path) if path else None))
        outs = [self.script(p["prompt_token_ids"], sp) for p, sp in zip(prompts, sampling_params)]
        return [SimpleNamespace(prompt_token_ids=p["prompt_token_ids"],
                                outputs=[SimpleNamespace(token_ids=tuple(ids), finish_reason=reason)])
                for p, (ids, reason) in zip(prompts, outs)]


class SamplingParams:
    def __init__(self, **kwargs):
        unknown = set(kwargs) - SAMPLING_FIELDS
        if unknown:
            raise TypeError(f"vllm.SamplingParams has no field {unknown}")
        self.__dict__.update(kwargs)


@pytest.fixture
def fake_vllm(monkeypatch):
    StandIn.instances = []
    names = ("vllm", "vllm.inputs", "vllm.lora", "vllm.lora.request")
    vllm, inputs, lora, request = (ModuleType(n) for n in names)
    vllm.LLM, vllm.SamplingParams = StandIn, SamplingParams
    inputs.TokensPrompt = dict  # a TypedDict in vLLM: calling it builds a plain dict
    request.LoRARequest = namedtuple("LoRARequest", "lora_name lora_int_id lora_path")
    for m in (vllm, inputs, lora, request):
        monkeypatch.setitem(sys.modules, m.__name__, m)
    return vllm


@pytest.fixture(scope="module")
def student(tiny_lm):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny_lm
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                        init_lora_weights=False)
    return get_peft_model(copy.deepcopy(model), config), tok


def rollouts(tok, script=echo_script, **kwargs) -> VLLMRollouts:
    args = {"lora_rank": 4, "max_prompt_tokens": 64, "on_long_prompt": "error", "max_new_tokens": 16} | kwargs
    return VLLMRollouts("/models/base", tok, llm_factory=lambda **kw: StandIn(script, **kw), **args)


def test_module_imports_without_vllm():
    code = ("import sys; sys.modules['vllm'] = None; import engines.vllm_rollouts as m; "
            "assert m.VLLMRollouts and 'vllm' not in [k for k in sys.modules if sys.modules[k]]")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_missing_vllm_is_one_clear_line(monkeypatch, tiny_lm):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm now fails, installed or not
    with pytest.raises(RuntimeError) as err:
        rollouts(tiny_lm[1])
    assert str(err.value) == MISSING_VLLM
    assert MISSING_VLLM == "rollout.backend=vllm needs the vllm package (pip install vllm) on a CUDA machine"


def test_max_lora_rank_rounds_up_to_a_rank_vllm_accepts():
    assert [max_lora_rank(r) for r in (1, 4, 8, 9, 16, 33, 64, 200, 300, 320, 321, 512)] == \
        [8, 8, 8, 16, 16, 64, 64, 256, 320, 320, 512, 512]
    with pytest.raises(ValueError, match="513"):
        max_lora_rank(513)


def test_engine_starts_once_on_first_use_with_lora_enabled(fake_vllm, student):
    model, tok = student
    gen = VLLMRollouts("/models/base", tok, lora_rank=20, max_prompt_tokens=100, on_long_prompt="error",
                       max_new_tokens=28, dtype="float16", gpu_memory_utilization=0.3)
    assert StandIn.instances == []  # nothing started at construction
    for step in range(3):
        gen.generate(PROMPTS, SamplingConfig(max_new_tokens=4), model, step=step)
    (engine,) = StandIn.instances  # vllm.LLM itself (no llm_factory), started once
    assert engine.kwargs == {"model": "/models/base", "dtype": "float16", "seed": 0,
                             "gpu_memory_utilization": 0.3, "max_model_len": 128, "enable_lora": True,
                             "max_lora_rank": 32, "max_loras": 1}
    assert len(engine.calls) == 3


def test_each_step_sends_the_students_current_adapter_under_a_new_id(fake_vllm, student, tiny_lm):
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    model, tok = student
    gen = rollouts(tok)
    dirs = []
    for step in (3, 4, 5):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.add_(0.01 * torch.randn_like(p))  # the optimizer moved the adapter
        gen.generate(PROMPTS, SamplingConfig(max_new_tokens=4), model, step=step)
        call = gen.llm.calls[-1]
        current = get_peft_model_state_dict(model)
        assert set(call.weights) == set(current) and len(current) == 2 * 2 * model.config.num_hidden_layers
        assert all(torch.equal(call.weights[k].cpu(), v.cpu()) for k, v in current.items())
        assert call.config.r == 4 and set(call.config.target_modules) == {"q_proj", "v_proj"}
        assert call.lora.lora_name == f"student-{step}-{step - 2}" and call.use_tqdm is False
        dirs.append(Path(call.lora.lora_path))
        assert dirs[-1].is_dir() and all(not d.exists() for d in dirs[:-1])  # only the last save is kept
    assert [c.lora.lora_int_id for c in gen.llm.calls] == [1, 2, 3]  # new id every step: vLLM reloads
    reloaded = PeftModel.from_pretrained(copy.deepcopy(tiny_lm[0]), str(dirs[-1])).eval()
    ids = torch.tensor([chat_ids(tok, PROMPTS[2])])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits,
                                   rtol=0, atol=1e-6)
        assert not torch.allclose(tiny_lm[0](input_ids=ids).logits, reloaded(input_ids=ids).logits, atol=1e-4)
    gen.generate(PROMPTS, SamplingConfig(max_new_tokens=4), model, step=5)  # a repeated step still reloads
    last = gen.llm.calls[-1].lora
    assert last[:2] == ("student-5-4", 4) and not dirs[-1].exists() and Path(last.lora_path).is_dir()
    gen.close()
    assert gen.adapter_dir is None and not Path(last.lora_path).exists()


def test_only_the_active_adapter_is_sent(fake_vllm, student):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    model, tok = student
    two = copy.deepcopy(model)
    two.add_adapter("other", LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    gen = rollouts(tok)
    for name in ("default", "other"):
        two.set_adapter(name)
        gen.generate(PROMPTS, SamplingConfig(max_new_tokens=4), two, step=0)
        sent, want = gen.llm.calls[-1].weights, get_peft_model_state_dict(two, adapter_name=name)
        assert set(sent) == set(want) and all(torch.equal(sent[k], want[k]) for k in want)
    first, second = (c.weights for c in gen.llm.calls)
    assert not all(torch.equal(first[k], second[k]) for k in first)


def test_prompt_ids_are_what_hf_generator_feeds(fake_vllm, student):
    model, tok = student
    gen = rollouts(tok)
    gen.generate(PROMPTS, SamplingConfig(max_new_tokens=4), model, step=0)
    sent = gen.llm.calls[-1].prompts
    hf = HFGenerator(model, tok, max_prompt_tokens=64).encode(PROMPTS)
    assert sent == [{"prompt_token_ids": ids} for ids in hf]


def test_long_prompt_is_an_error_or_a_counted_left_truncation(fake_vllm, student):
    model, tok = student
    long = "word " * 200
    strict = rollouts(tok, max_prompt_tokens=32)
    with pytest.raises(PromptTooLong, match="max_prompt_tokens=32"):
        strict.generate([long, "short"], SamplingConfig(max_new_tokens=4), model, step=0)
    assert strict.loads == 0 and strict._llm is None  # failed before saving or starting anything
    lenient = rollouts(tok, max_prompt_tokens=32, on_long_prompt="truncate_left")
    out = lenient.generate([long, "short"], SamplingConfig(max_new_tokens=4), model, step=0)
    assert lenient.truncated == 1 == lenient.stats.truncated
    sent = lenient.llm.calls[-1].prompts
    assert sent[0]["prompt_token_ids"] == chat_ids(tok, long)[-32:] and out[0].prompt_tokens == 32
    assert sent[1]["prompt_token_ids"] == chat_ids(tok, "short")


def test_sampling_config_maps_to_sampling_params(fake_vllm, student):
    model, tok = student
    gen = rollouts(tok)
    for step, sampling in enumerate((SamplingConfig(max_new_tokens=7, temperature=0.0, top_p=0.5, seed=11),
                                     SamplingConfig(max_new_tokens=9, temperature=0.7, top_p=0.9, seed=12))):
        gen.generate(PROMPTS, sampling, model, step=step)
    greedy, sampled = (c.params for c in gen.llm.calls)
    for p in greedy:
        assert (p.temperature, p.top_p, p.max_tokens, p.n) == (0.0, 1.0, 7, 1)
    for p in sampled:
        assert (p.temperature, p.top_p, p.max_tokens, p.n) == (0.7, 0.9, 9, 1)
    for params, seed in ((greedy, 11), (sampled, 12)):
        assert [p.seed for p in params] == [request_seed(seed, i) for i in range(len(PROMPTS))]
        assert len({p.seed for p in params}) == len(PROMPTS)  # repeated prompts would still differ
        assert all(p.stop_token_ids == [tok.eos_token_id] for p in params)  # the tokenizer's EOS alone stops
        assert all(p.ignore_eos and not p.detokenize for p in params)
    assert request_seed(11, 0) != request_seed(12, 0) and 0 <= request_seed(11, 0) < 2**31


def test_completions_follow_finish_reason_eos_and_prompt_order(fake_vllm, student):
    model, tok = student
    eos = tok.eos_token_id

    def script(prompt_ids, params):  # kind 0: EOS + "stop", 1: "length", 2: EOS as the last allowed token
        ids = prompt_ids[-3:]
        kinds = [(ids + [eos], "stop"), (ids, "length"), (ids + [eos], "length")]
        return kinds[script.kinds[tuple(prompt_ids)]]

    prompts = ["first prompt", "second one", "third, longer prompt here", "fourth"]
    encoded = HFGenerator(model, tok, max_prompt_tokens=64).encode(prompts)
    script.kinds = {tuple(ids): i % 3 for i, ids in enumerate(encoded)}
    gen = rollouts(tok, script=script)
    out = gen.generate(prompts, SamplingConfig(max_new_tokens=8), model, step=0)
    assert [c.finished for c in out] == [True, False, True, True]
    for c, ids in zip(out, encoded):
        assert c.token_ids == ids[-3:] and c.prompt_tokens == len(ids)
        assert c.text == tok.decode(ids[-3:], skip_special_tokens=True)
        assert completion_ids(c, eos) == ids[-3:] + ([eos] if c.finished else [])
        assert c.seconds >= 0


def test_completion_tokens_strip_a_final_eos_only():
    eos = 2
    assert completion_tokens((5, 6, eos), "stop", eos) == ([5, 6], True)
    assert completion_tokens([5, 6, eos], "length", eos) == ([5, 6], True)  # EOS as the last allowed token
    assert completion_tokens([5, eos, 6], "length", eos) == ([5, eos, 6], False)
    assert completion_tokens([5, 6], "stop", eos) == ([5, 6], True)
    assert [completion_tokens([5], reason, eos)[1] for reason in ("length", "abort", None)] == [False] * 3
    assert completion_tokens([], "length", eos) == ([], False)


def test_unsupported_requests_are_rejected(fake_vllm, student):
    model, tok = student
    gen = rollouts(tok, max_new_tokens=16)
    with pytest.raises(ValueError, match="regex"):
        gen.generate(PROMPTS, SamplingConfig(max_new_tokens=4, stop=r"\n"), model, step=0)
    with pytest.raises(ValueError, match="max_new_tokens=17"):
        gen.generate(PROMPTS, SamplingConfig(max_new_tokens=17), model, step=0)
    assert gen.generate([], SamplingConfig(max_new_tokens=4), model, step=0) == [] and gen.loads == 0


def test_no_adapter_samples_the_base_model_without_a_lora_request(fake_vllm, student):
    model, tok = student
    gen = rollouts(tok)
    out = gen.generate(PROMPTS[:2], SamplingConfig(max_new_tokens=4), None, step=0)
    (engine,) = StandIn.instances
    assert engine.calls[0].lora is None and len(out) == 2 and gen.loads == 0
