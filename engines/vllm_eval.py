"""Evaluation through an offline vLLM engine (``evaluate.engine: vllm``) on a CUDA machine.

Written against vLLM's documented offline API (``vllm.LLM``, ``SamplingParams``, ``TokensPrompt``,
``vllm.lora.request.LoRARequest``, ``LLM.generate(prompts, params, lora_request=...)``) and never run
with a real vLLM engine: the machine it was written on has neither a GPU nor vLLM. Only its pure parts
(sampling arguments, the regex-stop cut, adapter discovery, the missing-package error) are tested.

What it evaluates: the base model is the engine's model; a trained LoRA checkpoint is the same engine
with the checkpoint's adapter folder (``files/checkpoint`` of the train artifact, the PEFT
``save_pretrained`` output) sent as a `LoRARequest`, so one engine serves the base model and every
checkpoint of a sweep without reloading weights or fighting over GPU memory. A full fine-tuning
checkpoint has no adapter: its merged folder becomes the engine's model (a second engine; the first is
dropped). The engine lives for the process and is replaced only when its arguments change.

Same prompts and stops as the hf engine: prompts are encoded by `HFGenerator.encode` (chat template or
plain, ``max_prompt_tokens`` error or counted left truncation) and sent as token ids; vLLM's own EOS
handling is off and the ids of `engines.stops.stop_ids` are its ``stop_token_ids``; completions are
decoded here with ``skip_special_tokens=True``. vLLM has no regex stops, so the family's stop pattern is
applied afterwards: the completion is cut after the first token at which its decoded text matches, the
rule `RegexStop` applies while the hf engine decodes. Greedy outputs therefore agree with the hf engine
up to vLLM's kernels' float rounding.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

from engines.generation import Completion, HFGenerator, PromptStats, SamplingConfig
from engines.stops import stop_ids
from engines.vllm_rollouts import LORA_RANKS, completion_tokens, request_seed, sampling_kwargs

log = logging.getLogger(__name__)

MISSING_VLLM = "evaluate.engine=vllm needs the vllm package: pip install vllm (on a CUDA machine)"
_ENGINE: dict[str, object] = {}
"""The process's one vLLM engine, under the JSON of its arguments."""
_LORA_IDS: dict[tuple[str, int, int], int] = {}
"""LoRA int id per adapter (folder, weights size, weights mtime): a rewritten adapter gets a new id."""


def check_installed() -> None:
    """One-line ValueError when vllm is not importable (cheap: nothing is imported)."""
    if importlib.util.find_spec("vllm") is None:
        raise ValueError(MISSING_VLLM)


def vllm_api() -> SimpleNamespace:
    """The vLLM classes used here (shared with the rollout backend); a one-line RuntimeError when vllm
    is not installed."""
    from engines.vllm_rollouts import vllm_api as api

    return api(MISSING_VLLM)


def adapter_rank(folder: Path) -> int | None:
    """The LoRA rank of the PEFT adapter in ``folder``; None when it holds no adapter (full fine-tuning)."""
    cfg = folder / "adapter_config.json"
    if not cfg.is_file():
        return None
    try:
        return int(json.loads(cfg.read_text())["r"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{cfg}: no integer LoRA rank 'r' ({e})") from None


def engine_kwargs(model_path: str, *, dtype: str, max_model_len: int, gpu_memory: float,
                  max_lora_rank: int | None) -> dict:
    """Keyword arguments of ``vllm.LLM``: LoRA on (at ``max_lora_rank``) unless it is None."""
    kwargs = {"model": model_path, "dtype": dtype, "seed": 0, "gpu_memory_utilization": gpu_memory,
              "max_model_len": max_model_len}
    if max_lora_rank is not None:
        if max_lora_rank not in LORA_RANKS:
            raise ValueError(f"evaluate.vllm_max_lora_rank must be one of {LORA_RANKS}, got {max_lora_rank}")
        kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
    return kwargs


def regex_cut(tokenizer, tokens: Sequence[int], pattern: str) -> int | None:
    """The fewest leading ``tokens`` whose decoded text matches ``pattern`` (None: no prefix matches)."""
    regex = re.compile(pattern)
    if not regex.search(tokenizer.decode(list(tokens), skip_special_tokens=True)):
        return None
    for k in range(1, len(tokens) + 1):
        if regex.search(tokenizer.decode(list(tokens[:k]), skip_special_tokens=True)):
            return k
    return len(tokens)


def shared_engine(api: SimpleNamespace, kwargs: dict):
    """The process's vLLM engine for ``kwargs``; an engine with other arguments is dropped first."""
    key = json.dumps(kwargs, sort_keys=True)
    if key not in _ENGINE:
        if _ENGINE:
            _ENGINE.clear()
            gc.collect()
            _empty_cuda_cache()
        log.info("starting vLLM: %s", kwargs)
        _ENGINE[key] = api.LLM(**kwargs)
    return _ENGINE[key]


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def lora_id(folder: Path) -> int:
    """A LoRA int id for the adapter in ``folder``, new whenever its weights file changes."""
    weights = next((folder / n for n in ("adapter_model.safetensors", "adapter_model.bin")
                    if (folder / n).exists()), folder / "adapter_config.json")
    st = weights.stat()
    return _LORA_IDS.setdefault((str(folder.resolve()), st.st_size, st.st_mtime_ns), len(_LORA_IDS) + 1)


class VLLMEvaluator:
    """A `Generator` over one vLLM engine: the base model at ``base_path``, with the LoRA adapter in
    ``adapter`` when given. The engine starts at the first `generate`."""

    encode = HFGenerator.encode  # same chat template, length check and counted left truncation

    def __init__(self, base_path: str, tokenizer, *, adapter: Path | None, max_prompt_tokens: int,
                 on_long_prompt: Literal["error", "truncate_left"], max_new_tokens: int, dtype: str,
                 gpu_memory: float, max_lora_rank: int, system: str | None = None):
        self.api = vllm_api()
        self.tokenizer, self.system = tokenizer, system
        self.max_prompt_tokens, self.on_long_prompt, self.max_new_tokens = max_prompt_tokens, on_long_prompt, max_new_tokens
        rank = adapter_rank(adapter) if adapter is not None else None
        if rank is not None and rank > max_lora_rank:
            raise ValueError(f"evaluate.vllm_max_lora_rank={max_lora_rank} is below the checkpoint's LoRA rank "
                             f"{rank} ({adapter}): raise it to one of {[r for r in LORA_RANKS if r >= rank]}")
        self.adapter = adapter if rank is not None else None
        self.kwargs = engine_kwargs(base_path, dtype=dtype, max_model_len=max_prompt_tokens + max_new_tokens,
                                    gpu_memory=gpu_memory, max_lora_rank=max_lora_rank)
        self.stats = PromptStats()

    def request(self):
        """The `LoRARequest` of the checkpoint's adapter, or None for the base model itself."""
        if self.adapter is None:
            return None
        ident = lora_id(self.adapter)
        return self.api.LoRARequest(f"checkpoint-{ident}", ident, str(self.adapter))

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig,
                 progress: Callable[[int], None] | None = None) -> list[Completion]:
        if sampling.max_new_tokens > self.max_new_tokens:
            raise ValueError(f"max_new_tokens={sampling.max_new_tokens} exceeds the engine's limit {self.max_new_tokens}")
        if not prompts:
            return []
        encoded = self.encode(prompts)
        eos = list(stop_ids(self.tokenizer))
        params = [self.api.SamplingParams(**sampling_kwargs(sampling, eos, request_seed(sampling.seed, i)))
                  for i in range(len(encoded))]
        llm = shared_engine(self.api, self.kwargs)
        t0 = time.perf_counter()
        outputs = llm.generate([self.api.TokensPrompt(prompt_token_ids=ids) for ids in encoded], params,
                               lora_request=self.request(), use_tqdm=False)
        share = (time.perf_counter() - t0) / len(encoded)
        if len(outputs) != len(encoded):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(encoded)} prompts")
        results = [finish(self.tokenizer, len(ids), out.outputs[0].token_ids, out.outputs[0].finish_reason, eos,
                          sampling.stop, share) for ids, out in zip(encoded, outputs)]
        if progress:
            progress(len(results))
        return results


def finish(tokenizer, prompt_tokens: int, token_ids: Sequence[int], finish_reason: str | None, eos: list[int],
           stop: str | None, seconds: float) -> Completion:
    """The `Completion` of one vLLM sample as the hf engine reports it: a final stop id stripped (and
    kept as ``stop_id``), cut after the first token at which the text matches ``stop``, decoded without
    special tokens."""
    tokens, finished = completion_tokens(token_ids, finish_reason, eos)
    stop_id = int(token_ids[-1]) if len(tokens) < len(token_ids) else None
    cut = regex_cut(tokenizer, tokens, stop) if stop else None
    if cut is not None:
        tokens, finished, stop_id = tokens[:cut], True, None
    return Completion(tokenizer.decode(tokens, skip_special_tokens=True), tokens, prompt_tokens, finished, seconds,
                      stop_id)
