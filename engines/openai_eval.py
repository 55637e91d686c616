"""Evaluation through any OpenAI-compatible server (``evaluate.engine: openai``): `vllm serve`,
`transformers serve`, or another server with the legacy ``/v1/completions`` endpoint.

The prompt is built here, not on the server: `HFGenerator.encode` renders the chat template (or the
plain one) of the local tokenizer and applies ``max_prompt_tokens`` (an error, or a counted left
truncation), and those exact token ids, decoded back to text, are sent to the completions endpoint,
which tokenizes it again. When the tokenizer adds a BOS token of its own, a leading BOS in the rendered
text is dropped so the server does not see two; every prompt is checked to tokenize back to the same
ids, and prompts that do not are counted in one warning. So the server sees the same tokens the hf
engine feeds its model, whatever chat formatting the server would apply (it applies none here). The
chat endpoint is not used for that reason: hosted APIs that offer only chat completions are not
supported by this engine.

Greedy (temperature 0) by default, ``max_tokens`` = the family's ``max_new_tokens``. The server stops
on the EOS ids its model declares (``generation_config.json``; the hf engine also stops on the chat
template's end-of-turn token, which that file lists for common instruct models). A family's regex stop
cannot be sent (servers take literal stop strings): the request is streamed and closed as soon as the
text received so far matches, and the completion ends with the streamed piece that completed the match.
Both servers stream one token per piece, so that is the hf engine's rule (cut after the first token at
which the decoded completion matches). Requests run ``batch_size`` at a time; the server batches them.
Completion token counts are not returned by every server, so ``token_ids`` is empty.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Literal

from engines.generation import Completion, HFGenerator, PromptStats, SamplingConfig

log = logging.getLogger(__name__)

MISSING_CLIENT = "evaluate.engine=openai needs the openai package: pip install openai"
FATAL_STATUS = (400, 401, 403, 404, 422)
"""HTTP statuses a retry cannot fix (bad request, auth, unknown model, rejected fields)."""


def prompt_text(tokenizer, ids: list[int]) -> tuple[str, bool]:
    """The text whose tokenization by a completions server (special tokens added, as vLLM and
    transformers serve do) is ``ids``, and whether it round-trips exactly."""
    text = tokenizer.decode(ids, skip_special_tokens=False)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and _adds_bos(tokenizer):
        text = text[len(bos):]
    return text, list(tokenizer(text)["input_ids"]) == list(ids)


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def stream_cut(pieces, pattern: str) -> tuple[str, bool, str | None]:
    """(text, matched, finish_reason) of a stream of (text piece, finish reason) pairs: the text up to
    and including the piece at which it first matches ``pattern``, else all of it."""
    regex, text, reason = re.compile(pattern), "", None
    for piece, finish in pieces:
        text += piece
        reason = finish or reason
        if piece and regex.search(text):
            return text, True, reason
    return text, False, reason


class OpenAICompletions:
    """A `Generator` that sends rendered prompts to ``{base_url}/completions`` for ``served_model``."""

    encode = HFGenerator.encode  # same chat template, length check and counted left truncation

    def __init__(self, base_url: str, served_model: str, tokenizer, *, batch_size: int, max_prompt_tokens: int,
                 on_long_prompt: Literal["error", "truncate_left"], api_key_env: str = "OPENAI_API_KEY",
                 timeout_s: float = 600.0, retries: int = 4, system: str | None = None):
        try:
            from openai import OpenAI
        except ImportError as e:
            raise RuntimeError(MISSING_CLIENT) from e
        self.base_url, self.served_model, self.tokenizer, self.system = base_url, served_model, tokenizer, system
        self.batch_size, self.max_prompt_tokens, self.on_long_prompt = batch_size, max_prompt_tokens, on_long_prompt
        self.retries = retries
        self.client = OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or "unused",
                             timeout=timeout_s, max_retries=0)
        self.stats = PromptStats()
        self.mismatched = 0
        """Prompts whose text did not tokenize back to the same ids (the server saw other tokens)."""

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig,
                 progress: Callable[[int], None] | None = None) -> list[Completion]:
        encoded = self.encode(prompts)
        rendered = [prompt_text(self.tokenizer, ids) for ids in encoded]
        texts = [text for text, _ in rendered]
        if bad := sum(not exact for _, exact in rendered):
            self.mismatched += bad
            log.warning("evaluate: %d of %d prompts do not tokenize back to the rendered ids: the server sees "
                        "other tokens than the hf engine", bad, len(encoded))
        results: list[Completion | None] = [None] * len(encoded)
        with ThreadPoolExecutor(max_workers=max(1, min(self.batch_size, len(encoded)))) as pool:
            futures = {pool.submit(self._one, text, sampling): i for i, text in enumerate(texts)}
            for fut in as_completed(futures):
                i = futures[fut]
                text, finished, seconds = fut.result()
                results[i] = Completion(text, [], len(encoded[i]), finished, seconds)
                if progress:
                    progress(1)
        return results  # type: ignore[return-value]

    def _one(self, prompt: str, sampling: SamplingConfig) -> tuple[str, bool, float]:
        """(completion text, finished, seconds) of one prompt."""
        args = {"model": self.served_model, "prompt": prompt, "max_tokens": sampling.max_new_tokens,
                "temperature": sampling.temperature, "seed": sampling.seed}
        if sampling.temperature > 0:
            args["top_p"] = sampling.top_p
        t0 = time.perf_counter()
        if sampling.stop is None:
            choice = self._retrying(lambda: self.client.completions.create(**args)).choices[0]
            return choice.text or "", choice.finish_reason == "stop", time.perf_counter() - t0
        text, matched, reason = self._retrying(lambda: self._streamed(args, sampling.stop))
        return text, matched or reason == "stop", time.perf_counter() - t0

    def _streamed(self, args: dict, pattern: str) -> tuple[str, bool, str | None]:
        stream = self.client.completions.create(**args, stream=True)
        try:
            pieces = ((c.choices[0].text or "", c.choices[0].finish_reason) for c in stream if c.choices)
            return stream_cut(pieces, pattern)
        finally:
            stream.close()  # a matched stream is closed early: the server stops generating

    def _retrying(self, call):
        delay = 1.0
        for attempt in range(self.retries + 1):
            try:
                return call()
            except Exception as e:  # the client raises many types; retry transport and server errors
                status = getattr(e, "status_code", None)
                if attempt == self.retries or status in FATAL_STATUS:
                    raise RuntimeError(f"evaluate: {self.base_url} ({self.served_model}): {_reason(e)}") from e
                log.warning("evaluate: %s failed (%s); retrying in %.0fs", self.base_url, _reason(e), delay)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")


def _reason(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__
