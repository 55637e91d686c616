"""On-policy rollouts with vLLM: the LoRA-wrapped student sampled through a vLLM engine on a CUDA machine.

This backend is written against vLLM's documented offline API (``vllm.LLM``, ``SamplingParams``,
``LoRARequest``, ``TokensPrompt``, ``LLM.generate``) and has not been run with a real vLLM engine: the
machine it was written on has neither a GPU nor vLLM, and its tests drive it with a stand-in engine.

One engine holds the frozen base weights (``base_model_path``) for the whole run. At every optimizer step
the student's current adapter is written with PEFT's ``save_pretrained`` to a fresh directory and sent as
a new `LoRARequest`. vLLM caches loaded adapters by integer id and compares requests by name, so each
save gets an id never used before (1, 2, 3, ...) and the name ``student-{step}-{id}``; a reused id would
silently sample with stale weights. The directory of the previous save is removed.

Prompts are encoded exactly as `HFGenerator` encodes them (chat template, ``max_prompt_tokens`` with an
error or a counted left truncation) and passed as token ids, so vLLM never re-tokenizes. Stopping follows
`HFGenerator`: a completion ends on any id of `engines.stops.stop_ids` (the chat template's end-of-turn
token, every EOS id of the model's ``generation_config``, the tokenizer's EOS). vLLM's own EOS handling is
turned off (``ignore_eos=True``) and that exact set is passed as ``stop_token_ids``, so both backends stop
on the same ids. A completion ending in one of them is returned without it, with ``finished=True`` and
``stop_id`` set (``completion_ids`` puts it back), whatever vLLM's ``finish_reason`` (a stop id drawn as
the last allowed token may be reported as "length"); otherwise ``finished`` is ``finish_reason == "stop"``.

Each prompt gets its own sampling seed derived from (seed, prompt index), so a sample does not depend on
its batch neighbours and repeated prompts draw different samples.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Literal

from engines.generation import Completion, HFGenerator, PromptStats, SamplingConfig
from engines.stops import stop_ids

if TYPE_CHECKING:
    from peft import PeftModel

log = logging.getLogger(__name__)

LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
"""Values vLLM accepts for ``max_lora_rank``."""

MISSING_VLLM = "rollout.backend=vllm needs the vllm package (pip install vllm) on a CUDA machine"


def vllm_api(missing: str = MISSING_VLLM) -> SimpleNamespace:
    """The vLLM classes the vLLM backends use; a one-line RuntimeError (`missing`) when vllm is not
    installed."""
    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest
    except ImportError as e:
        raise RuntimeError(missing) from e
    return SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams, TokensPrompt=TokensPrompt,
                           LoRARequest=LoRARequest)


def max_lora_rank(rank: int) -> int:
    """Smallest value of `LORA_RANKS` that is >= ``rank``."""
    for allowed in LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"lora rank {rank} exceeds the largest rank vLLM serves ({LORA_RANKS[-1]})")


def request_seed(seed: int, index: int) -> int:
    """Sampling seed of prompt ``index``: the first 31 bits of sha256("unisd-vllm:{seed}:{index}")."""
    digest = hashlib.sha256(f"unisd-vllm:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1


def _ids(eos: int | Sequence[int]) -> list[int]:
    return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]


def sampling_kwargs(sampling: SamplingConfig, eos: int | Sequence[int], seed: int) -> dict:
    """``SamplingParams`` arguments of one prompt: greedy when temperature is 0, only the ``eos`` ids stop."""
    greedy = sampling.temperature == 0
    return {"n": 1, "temperature": sampling.temperature, "top_p": 1.0 if greedy else sampling.top_p,
            "max_tokens": sampling.max_new_tokens, "seed": seed, "ignore_eos": True,
            "stop_token_ids": _ids(eos), "detokenize": False}


def completion_tokens(token_ids: Sequence[int], finish_reason: str | None,
                      eos: int | Sequence[int]) -> tuple[list[int], bool]:
    """(ids without a final stop id, finished): finished when the last id is one of ``eos`` or vLLM
    reports "stop"."""
    ids = [int(t) for t in token_ids]
    if ids and ids[-1] in _ids(eos):
        return ids[:-1], True
    return ids, finish_reason == "stop"


class VLLMRollouts:
    """Samples the student through one vLLM engine (created on first use) with its adapter of the step.

    Construction only checks that vllm imports (one clear line otherwise); the engine starts at the first
    `generate`. ``llm_factory`` replaces ``vllm.LLM`` (same keyword arguments) to inject a stand-in engine.
    """

    encode = HFGenerator.encode  # same chat template, length check and counted left truncation

    def __init__(self, base_model_path: str, tokenizer, *, lora_rank: int, max_prompt_tokens: int,
                 on_long_prompt: Literal["error", "truncate_left"], max_new_tokens: int,
                 dtype: str = "bfloat16", gpu_memory_utilization: float = 0.5,
                 llm_factory: Callable[..., object] | None = None, system: str | None = None):
        self.api = vllm_api()
        self.base_model_path, self.tokenizer = base_model_path, tokenizer
        self.max_prompt_tokens, self.on_long_prompt, self.system = max_prompt_tokens, on_long_prompt, system
        self.max_new_tokens = max_new_tokens
        self.engine_kwargs = {"model": base_model_path, "dtype": dtype, "seed": 0,
                              "gpu_memory_utilization": gpu_memory_utilization,
                              "max_model_len": max_prompt_tokens + max_new_tokens, "enable_lora": True,
                              "max_lora_rank": max_lora_rank(lora_rank), "max_loras": 1}
        """Keyword arguments of ``vllm.LLM`` (and of ``llm_factory``)."""
        self.llm_factory = llm_factory or self.api.LLM
        self.stats = PromptStats()
        self.loads = 0
        """Adapters sent so far; the last one has LoRA int id ``loads``."""
        self.adapter_dir: Path | None = None
        """Directory of the adapter sent last (removed at the next save)."""
        self._llm = None
        self._root = tempfile.TemporaryDirectory(prefix="unisd-vllm-lora-")

    @property
    def truncated(self) -> int:
        """Prompts cut from the left so far."""
        return self.stats.truncated

    @property
    def llm(self):
        """The vLLM engine, created on first use."""
        if self._llm is None:
            log.info("starting vLLM on %s (%s)", self.base_model_path, self.engine_kwargs)
            self._llm = self.llm_factory(**self.engine_kwargs)
        return self._llm

    def save_adapter(self, adapter: PeftModel, step: int):
        """Write the student's active adapter to a fresh directory; returns its `LoRARequest`."""
        name = adapter.active_adapter
        previous = Path(self._root.name) / f"{self.loads:06d}"
        self.loads += 1
        out = Path(self._root.name) / f"{self.loads:06d}"
        adapter.save_pretrained(str(out), selected_adapters=[name])
        if previous.exists():
            shutil.rmtree(previous)
        self.adapter_dir = out if name == "default" else out / name  # PEFT puts other adapters in a subfolder
        return self.api.LoRARequest(f"student-{step}-{self.loads}", self.loads, str(self.adapter_dir))

    def generate(self, prompts: list[str], sampling: SamplingConfig, adapter: PeftModel | None,
                 step: int) -> list[Completion]:
        """One completion per prompt, in prompt order, sampled with ``adapter``'s current weights
        (None: the base model itself, no LoRA request)."""
        if sampling.stop is not None:
            raise ValueError("VLLMRollouts does not support SamplingConfig.stop (regex stops)")
        if sampling.max_new_tokens > self.max_new_tokens:
            raise ValueError(f"max_new_tokens={sampling.max_new_tokens} exceeds the engine's limit "
                             f"{self.max_new_tokens} (max_model_len = max_prompt_tokens + max_new_tokens)")
        if not prompts:
            return []
        encoded = self.encode(prompts)
        eos = list(stop_ids(self.tokenizer))
        request = self.save_adapter(adapter, step) if adapter is not None else None
        params = [self.api.SamplingParams(**sampling_kwargs(sampling, eos, request_seed(sampling.seed, i)))
                  for i in range(len(encoded))]
        t0 = time.perf_counter()
        outputs = self.llm.generate([self.api.TokensPrompt(prompt_token_ids=ids) for ids in encoded], params,
                                    lora_request=request, use_tqdm=False)
        share = (time.perf_counter() - t0) / len(encoded)
        if len(outputs) != len(encoded):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(encoded)} prompts")
        results = []
        for ids, out in zip(encoded, outputs):
            sample = out.outputs[0]
            tokens, finished = completion_tokens(sample.token_ids, sample.finish_reason, eos)
            stop = int(sample.token_ids[-1]) if len(tokens) < len(sample.token_ids) else None
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            results.append(Completion(text, tokens, len(ids), finished, share, stop))
        return results

    def close(self) -> None:
        """Drop the engine and remove the saved adapters."""
        self._llm = None
        self.adapter_dir = None
        self._root.cleanup()
