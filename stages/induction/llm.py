"""LLM access shared by the induction and negatives stages: backend config, backoff, JSON parsing.

Both stages talk to a model through any `engines.generation.Generator`: the local HF model by default,
or an OpenAI-compatible endpoint (`GeneratorConfig`, `build_generator`), with generation errors retried
with exponential backoff (`generate_with_backoff`). Negatives ask for a JSON object; small models wrap
it in prose or code fences, use single quotes, leave trailing commas or stop mid-object, so
`parse_json_object` recovers what it can and the callers fall back to plain-text patterns before
counting a failure.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from engines import assets
from engines.generation import Completion, Generator, PromptTooLong, SamplingConfig

log = logging.getLogger(__name__)

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class GeneratorConfig:
    """Which model writes the text: the local HF model, or an OpenAI-compatible endpoint."""

    backend: Literal["hf", "openai"] = "hf"
    """hf: a local causal LM through `HFGenerator`; openai: any OpenAI-compatible chat endpoint."""
    model: str | None = None
    """hf: a model reference (embedded:..., a local HF folder, a cached hub id), None = the experiment's
    model (the embedded model outside an experiment); openai: the served model name (required)."""
    base_url: str | None = None
    """openai: the endpoint, e.g. http://127.0.0.1:8000/v1 (required for that backend)."""
    api_key_env: str = "OPENAI_API_KEY"
    """openai: NAME of the environment variable holding the API key (never the key itself)."""
    batch_size: int = 8
    """hf: prompts generated together."""
    max_prompt_tokens: int = 2048
    """hf: longer prompts are an error (never silently truncated)."""
    max_new_tokens: int = 256
    """Completion limit in tokens."""
    temperature: float = 0.7
    """Sampling temperature (0 = greedy; retries then repeat themselves, so keep it > 0)."""
    top_p: float = 0.95
    """Nucleus mass."""
    timeout_s: float = 120.0
    """openai: per-request timeout in seconds."""

    def __post_init__(self) -> None:
        if self.backend not in ("hf", "openai"):
            raise ValueError(f"generator.backend must be hf or openai, got {self.backend!r}")
        if self.backend == "openai" and not self.base_url:
            raise ValueError("generator.base_url is required with backend openai")
        if not _ENV_NAME.match(self.api_key_env):
            raise ValueError("generator.api_key_env must be the NAME of an environment variable "
                             "(e.g. OPENAI_API_KEY), not the key itself")
        if self.backend == "openai" and not self.model:
            raise ValueError("generator.model (the served model name) is required with backend openai")
        if self.batch_size < 1 or self.max_new_tokens < 1 or self.max_prompt_tokens < 1:
            raise ValueError("generator: batch_size, max_new_tokens and max_prompt_tokens must be >= 1")
        SamplingConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p)

    @property
    def model_ref(self) -> str:
        """The model actually used: `model`, or the embedded model when it is unset."""
        return self.model or assets.EMBEDDED_MODEL

    @property
    def label(self) -> str:
        """The model name written into output tables."""
        if self.backend == "openai":
            return self.model_ref
        from engines.models import ModelConfig

        return ModelConfig(path=self.model_ref).label

    def sampling(self, seed: int) -> SamplingConfig:
        return SamplingConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                              top_p=self.top_p, seed=seed)


def build_generator(cfg: GeneratorConfig) -> Generator:
    """A ready `Generator` for ``cfg`` (loads the HF model, or connects lazily to the endpoint)."""
    from engines.generation import HFGenerator, OpenAIGenerator

    if cfg.backend == "openai":
        assert cfg.base_url is not None
        return OpenAIGenerator(base_url=cfg.base_url, model=cfg.model_ref, api_key_env=cfg.api_key_env,
                               timeout_s=cfg.timeout_s)
    from engines.models import ModelConfig, load_model

    model, tokenizer = load_model(ModelConfig(path=cfg.model_ref))
    return HFGenerator(model, tokenizer, batch_size=cfg.batch_size, max_prompt_tokens=cfg.max_prompt_tokens)


def generate_with_backoff(generator: Generator, prompts: Sequence[str], sampling: SamplingConfig,
                          retries: int = 3, backoff_s: float = 2.0,
                          sleep: Callable[[float], None] = time.sleep) -> list[Completion]:
    """``generator.generate`` retried ``retries`` times on an error (not on an over-long prompt), waiting
    backoff_s·2^attempt between attempts."""
    for attempt in range(retries + 1):
        try:
            out = generator.generate(list(prompts), sampling)
        except PromptTooLong:
            raise  # a configuration problem: retrying cannot help
        except Exception as e:  # backends raise transport, server and CUDA errors alike
            if attempt == retries:
                raise
            delay = backoff_s * 2 ** attempt
            log.warning("generation of %d prompt(s) failed (%s: %s); retry %d/%d in %.1fs",
                        len(prompts), type(e).__name__, e, attempt + 1, retries, delay)
            sleep(delay)
            continue
        if len(out) != len(prompts):
            raise RuntimeError(f"generator returned {len(out)} completions for {len(prompts)} prompts")
        return out
    raise AssertionError("unreachable")


_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})


def _balanced(text: str, start: int) -> str:
    """The ``{...}`` object starting at ``start`` (respecting strings), or the rest if it never closes."""
    depth, quote, escaped = 0, "", False
    for i in range(start, len(text)):
        c = text[i]
        if quote:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
    return text[start:]


def _loads(candidate: str) -> Any:
    for attempt in (candidate, _TRAILING_COMMA.sub(r"\1", candidate)):
        try:
            return json.loads(attempt, strict=False)
        except json.JSONDecodeError:
            pass
        try:
            value = ast.literal_eval(attempt)  # single quotes, True/False/None
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        return value
    return None


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text`` (fenced or not, lenient about quotes and commas), else None."""
    text = text.translate(_QUOTES)
    pieces = [m[1] for m in _FENCE.finditer(text)] + [text]
    for piece in pieces:
        for m in re.finditer(r"\{", piece):
            obj = _loads(_balanced(piece, m.start()))
            if isinstance(obj, dict):
                return obj
    return None


def string_field(text: str, key: str) -> str | None:
    """The value of ``"key": "..."`` in possibly broken JSON (a cut-off string is taken to its end)."""
    m = re.search(rf"[\"']{re.escape(key)}[\"']\s*:\s*\"((?:[^\"\\]|\\.)*)(\"|\Z)", text, re.DOTALL)
    if not m:
        return None
    try:
        return json.loads(f'"{m[1]}"', strict=False)
    except json.JSONDecodeError:
        return m[1]


def field_text(obj: dict[str, Any] | None, raw: str, *keys: str) -> str | None:
    """The first non-empty string under any of ``keys`` in ``obj``, else in the raw text's broken JSON."""
    for key in keys:
        value = (obj or {}).get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and value.strip():
            return value.strip()
    for key in keys:
        value = string_field(raw, key)
        if value and value.strip():
            return value.strip()
    return None
