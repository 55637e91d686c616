"""Text generation backends behind one interface.

`HFGenerator` (default, CPU/GPU) batches prompts by length with left padding and runs
``model.generate``; `OpenAIGenerator` talks to any OpenAI-compatible chat endpoint (a `vllm serve`,
`transformers serve`, llama.cpp server, or a hosted API). Prompts are user turns; each backend applies
the chat template. A prompt longer than ``max_prompt_tokens`` is an error, or — when the caller asks for
``on_long_prompt="truncate_left"`` — a counted, logged truncation, never a silent one.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from engines.stops import stop_ids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 256
    """Maximum completion length in tokens."""
    temperature: float = 0.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass (ignored when greedy)."""
    seed: int = 0
    """Seed for sampling; each batch reseeds deterministically from it."""
    stop: str | None = None
    """Regex: a completion ends as soon as its text matches (e.g. a closed code fence); None = EOS only."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finished: bool
    """True when the model emitted EOS; False when it hit max_new_tokens."""
    seconds: float
    """Wall time of the batch divided by its size."""
    stop_id: int | None = None
    """The end-of-sequence id the model emitted (stripped from ``token_ids``); None: none was emitted."""


@dataclass
class PromptStats:
    truncated: int = 0
    longest: int = 0


class Generator(Protocol):
    stats: PromptStats

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig,
                 progress: Callable[[int], None] | None = None) -> list[Completion]: ...


class PromptTooLong(ValueError):
    pass


def chat_ids(tokenizer, prompt: str, system: str | None = None) -> list[int]:
    """Token ids of a one-turn chat prompt with the generation prompt appended."""
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    out = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(out["input_ids"])


@dataclass
class HFGenerator:
    model: object
    tokenizer: object
    batch_size: int = 16
    max_prompt_tokens: int = 2048
    on_long_prompt: Literal["error", "truncate_left"] = "error"
    system: str | None = None
    stats: PromptStats = field(default_factory=PromptStats)

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        out = []
        for i, p in enumerate(prompts):
            ids = chat_ids(self.tokenizer, p, self.system)
            self.stats.longest = max(self.stats.longest, len(ids))
            if len(ids) > self.max_prompt_tokens:
                if self.on_long_prompt == "error":
                    raise PromptTooLong(f"prompt {i} has {len(ids)} tokens > max_prompt_tokens="
                                        f"{self.max_prompt_tokens} (raise the limit or allow truncate_left)")
                self.stats.truncated += 1
                log.warning("prompt %d truncated from %d to %d tokens (left)", i, len(ids), self.max_prompt_tokens)
                ids = ids[-self.max_prompt_tokens:]
            out.append(ids)
        return out

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig,
                 progress: Callable[[int], None] | None = None) -> list[Completion]:
        import torch

        encoded = self.encode(prompts)
        order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
        results: list[Completion | None] = [None] * len(encoded)
        for b, start in enumerate(range(0, len(order), self.batch_size)):
            idx = order[start:start + self.batch_size]
            t0 = time.perf_counter()
            outs = self._generate_batch([encoded[i] for i in idx], sampling, seed=sampling.seed * 100003 + b)
            dt = (time.perf_counter() - t0) / len(idx)
            for i, (ids, finished, stop) in zip(idx, outs):
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                results[i] = Completion(text, ids, len(encoded[i]), finished, dt, stop)
            if progress:
                progress(len(idx))
        del torch
        return results  # type: ignore[return-value]

    def _generate_batch(self, batch: list[list[int]], sampling: SamplingConfig, seed: int):
        import torch

        pad = self.tokenizer.pad_token_id
        width = max(len(x) for x in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        for r, ids in enumerate(batch):
            input_ids[r, width - len(ids):] = torch.tensor(ids)
            attn[r, width - len(ids):] = 1
        device = next(self.model.parameters()).device
        stops = stop_ids(self.tokenizer)
        kwargs = {"max_new_tokens": sampling.max_new_tokens, "pad_token_id": pad, "eos_token_id": list(stops)}
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        stopper = RegexStop(self.tokenizer, sampling.stop, width) if sampling.stop else None
        if stopper:
            kwargs["stopping_criteria"] = [stopper]
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids.to(device), attention_mask=attn.to(device), **kwargs)
        new = out[:, width:].tolist()
        res = []
        for r, row in enumerate(new):
            end = next((j for j, t in enumerate(row) if t in stops), None)
            if end is not None:
                res.append((row[:end], True, row[end]))
            elif stopper is not None and stopper.stopped_at[r] is not None:
                res.append((row[:stopper.stopped_at[r]], True, None))
            else:
                res.append((row, False, None))
        return res


class RegexStop:
    """Per-row stopping criterion: a row is done once its decoded completion matches ``pattern``."""

    def __init__(self, tokenizer, pattern: str, prompt_width: int):
        import re

        self.tokenizer, self.regex, self.width = tokenizer, re.compile(pattern), prompt_width
        self.stopped_at: dict[int, int | None] = {}

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for r in range(input_ids.shape[0]):
            if self.stopped_at.get(r) is not None:
                done[r] = True
                continue
            self.stopped_at.setdefault(r, None)
            text = self.tokenizer.decode(input_ids[r, self.width:], skip_special_tokens=True)
            if self.regex.search(text):
                self.stopped_at[r] = input_ids.shape[1] - self.width
                done[r] = True
        return done


@dataclass
class OpenAIGenerator:
    """Any OpenAI-compatible chat-completions endpoint (used by induction and negatives when configured)."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    max_retries: int = 4
    timeout_s: float = 120.0
    system: str | None = None
    stats: PromptStats = field(default_factory=PromptStats)

    def _client(self):
        from openai import OpenAI

        key = os.environ.get(self.api_key_env, "unused")
        return OpenAI(base_url=self.base_url, api_key=key, timeout=self.timeout_s, max_retries=0)

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig,
                 progress: Callable[[int], None] | None = None) -> list[Completion]:
        client = self._client()
        out = []
        for p in prompts:
            msgs = ([{"role": "system", "content": self.system}] if self.system else [])
            msgs.append({"role": "user", "content": p})
            t0 = time.perf_counter()
            resp = self._with_retries(lambda: client.chat.completions.create(
                model=self.model, messages=msgs, max_tokens=sampling.max_new_tokens,
                temperature=sampling.temperature, top_p=sampling.top_p, seed=sampling.seed))
            choice = resp.choices[0]
            usage = getattr(resp, "usage", None)
            out.append(Completion(choice.message.content or "", [],
                                  getattr(usage, "prompt_tokens", 0) or 0,
                                  choice.finish_reason == "stop", time.perf_counter() - t0))
            if progress:
                progress(1)
        return out

    def _with_retries(self, call):
        delay = 1.0
        for attempt in range(self.max_retries + 1):
            try:
                return call()
            except Exception as e:  # openai raises many types; retry transport/server errors
                if attempt == self.max_retries or getattr(e, "status_code", 500) in (400, 401, 403, 404):
                    raise
                log.warning("endpoint %s failed (%s); retrying in %.0fs", self.base_url, e, delay)
                time.sleep(delay)
                delay *= 2
