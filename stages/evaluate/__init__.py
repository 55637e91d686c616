"""Evaluate stage: generate completions for the test split and score them.

Generation goes through any `engines.generation.Generator` (greedy by default). Completions are
scored per task family (MCQA letter, maths number, code pass@1 in the sandboxed subprocess, tool-use
action/argument match). Progress is saved in chunks inside the artifact's partial directory, so a
killed run resumes where it stopped and never duplicates a row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import pyarrow as pa
from tqdm.auto import tqdm

import schemas
from engines.generation import Completion, Generator, PromptTooLong, SamplingConfig
from engines.sandbox import SandboxLimits, require_sandbox
from stages.evaluate.scoring import score_rows
from storage import StageSpec, Workspace

log = logging.getLogger(__name__)

SPEC = StageSpec(name="evaluate", version=2, inputs={"examples": schemas.EXAMPLES},
                 outputs={"predictions": schemas.PREDICTIONS, "scores": schemas.SCORES})

SPLITS = ("train", "validation", "test")
DEFAULT_MAX_NEW = {"mcqa": 256, "math": 256, "code": 384, "tool": 256, "free": 256}
STOP_PATTERNS = {
    "code": r"```[^\n]*\n[\s\S]*?\n\s*```",  # a closed fenced code block
    "mcqa": r"(?i)answer\s*(?:is)?\s*[:：]\s*\**\s*\(?[A-Z]\b[^\n]*\n",  # a finished "Answer: X" line
    "math": r"(?i)answer\s*[:：][^\n]*\d[^\n]*\n",
}


@dataclass(frozen=True)
class EvaluateConfig:
    split: str = "test"
    """Which split of `examples` to evaluate: test (the final table, read once), validation (choosing
    hyperparameters and checkpoints) or train. The scores table records it in its `split` column."""
    limit: int | None = None
    """Evaluate at most this many examples per dataset (first by id order); None = all."""
    batch_size: int = 16
    """Generation batch size (rows decoded together); engine=openai: requests in flight at once (the server
    batches them); engine=vllm: unused (vLLM schedules each chunk's prompts itself)."""
    engine: Literal["hf", "continuous", "vllm", "openai"] = "continuous"
    """`continuous`: rows leave the batch when done and pending prompts join (no waiting for the longest
    row); `hf`: static batches through `model.generate`; `vllm`: an offline vLLM engine on a CUDA machine
    (`pip install vllm`; base model + each checkpoint's LoRA adapter); `openai`: the completions endpoint
    of a running OpenAI-compatible server (`vllm serve`, `transformers serve`) at `base_url`. All send the
    same prompt tokens and stop on the same ids and patterns; greedy outputs agree up to float rounding."""
    base_url: str = ""
    """engine=openai: the server's OpenAI-compatible base URL, e.g. `http://127.0.0.1:8000/v1`."""
    served_model: str = ""
    """engine=openai: the model id sent with each request, as the server names it (the path or hub id given
    to `vllm serve` / `transformers serve`, or vLLM's `--served-model-name`). Part of the result key, with
    `base_url`. `model.path` must be the same model (or its tokenizer): prompts are rendered with it."""
    api_key_env: str = "OPENAI_API_KEY"
    """engine=openai: environment variable holding the server's API key (unset: no key is sent)."""
    request_timeout_s: float = 600.0
    """engine=openai: seconds one request may take before it is retried."""
    request_retries: int = 4
    """engine=openai: retries of a failed request (connection or server error), 1 s apart then doubling."""
    vllm_gpu_memory: float = 0.9
    """engine=vllm: fraction of the GPU's memory the vLLM engine may take (weights and KV cache)."""
    vllm_max_lora_rank: int = 64
    """engine=vllm: largest LoRA rank the engine serves (one of 8, 16, 32, 64, 128, 256, 320, 512); a
    checkpoint trained with a larger `lora.r` is refused, naming this setting."""
    max_new_tokens: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MAX_NEW))
    """Completion limit per task family (mcqa, math, code, tool, free)."""
    temperature: float = 0.0
    """Sampling temperature; 0 = greedy."""
    top_p: float = 1.0
    """Nucleus mass when sampling."""
    num_samples: int = 1
    """Completions per example (pass@1 / accuracy are averaged over them)."""
    seed: int = 0
    """Sampling seed."""
    max_prompt_tokens: int = 2048
    """Prompts longer than this are an error unless on_long_prompt=truncate_left."""
    on_long_prompt: Literal["error", "truncate_left"] = "error"
    """What to do with an over-long prompt; truncations are counted in the scores table."""
    chunk_size: int = 64
    """Examples scored and saved together (resume granularity). The continuous engine decodes all of a
    family's prompts in one batch stream and saves each chunk as its examples finish; other engines are
    called one chunk at a time."""
    sandbox_timeout_s: float = 10.0
    """Wall-clock limit per code test program."""
    sandbox_memory_mb: int = 1024
    """Address-space limit per code test program."""
    sandbox_workers: int = 2
    """Test programs run in parallel."""
    allow_unsandboxed: bool = False
    """Run generated code without isolation where bubblewrap is missing or cannot create namespaces
    (a plain subprocess with rlimits, logged as a warning). Off: code evaluation then refuses to start
    with one line naming what to install. Only for code you trust."""
    max_prompt_chars: int = 200_000
    """Prompts longer than this many characters are rejected (an error naming the example) before any
    tokenization; with on_long_prompt=truncate_left they are cut to their last max_prompt_chars
    characters instead, then truncated to max_prompt_tokens as usual."""
    max_completion_chars: int = 100_000
    """Completions longer than this many characters are not scored (score 0, status ``too_long`` in the
    detail): no extraction, no compilation, no sandbox."""
    early_stop: bool = True
    """End a completion once it holds a complete answer (closed code block, `Answer: X` line) instead of
    letting the model ramble to max_new_tokens; scores are unaffected, generation is much faster."""

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        unknown = set(self.max_new_tokens) - set(DEFAULT_MAX_NEW)
        if unknown:
            raise ValueError(f"max_new_tokens: unknown family {sorted(unknown)[0]!r}")
        for name in ("batch_size", "num_samples", "chunk_size", "max_prompt_tokens", "sandbox_workers",
                     "max_prompt_chars", "max_completion_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.num_samples > 1 and self.temperature == 0:
            raise ValueError("num_samples > 1 needs temperature > 0 (greedy samples are identical)")
        self._check_engine()

    def _check_engine(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.engine == "openai":
            if not self.base_url.startswith(("http://", "https://")):
                raise ValueError(f"base_url: engine=openai needs the server's URL (http://host:port/v1), "
                                 f"got {self.base_url!r}")
            if not self.served_model.strip():
                raise ValueError("served_model: engine=openai needs the model id the server serves (the path "
                                 "or name given to `vllm serve` / `transformers serve`)")
        if self.engine == "vllm":
            from engines.vllm_eval import check_installed
            from engines.vllm_rollouts import LORA_RANKS

            if self.vllm_max_lora_rank not in LORA_RANKS:
                raise ValueError(f"vllm_max_lora_rank must be one of {', '.join(map(str, LORA_RANKS))}, "
                                 f"got {self.vllm_max_lora_rank}")
            if not 0 < self.vllm_gpu_memory < 1:
                raise ValueError(f"vllm_gpu_memory must be in (0, 1), got {self.vllm_gpu_memory}")
            check_installed()

    @property
    def remote(self) -> bool:
        """Whether generation runs outside this process's torch model (engine vllm or openai)."""
        return self.engine in ("vllm", "openai")

    def key(self) -> dict:
        """The settings that decide the outputs (the result key): the engine's own, none of another's, and
        nothing about timeouts, retries, keys or memory."""
        out = asdict(self)
        for name in ENGINE_FIELDS:
            out.pop(name)
        if self.engine == "openai":
            out.update(base_url=self.base_url, served_model=self.served_model)
        return out

    def local(self) -> EvaluateConfig:
        """These settings on a local engine (`continuous` in place of vllm/openai): for stages that decode
        with the loaded model itself."""
        if not self.remote:
            return self
        defaults = EvaluateConfig()
        return replace(self, engine="continuous", **{n: getattr(defaults, n) for n in ENGINE_FIELDS})

    def sampling(self, family: str) -> SamplingConfig:
        max_new = self.max_new_tokens.get(family, DEFAULT_MAX_NEW[family])
        return SamplingConfig(max_new_tokens=max_new, temperature=self.temperature, top_p=self.top_p,
                              seed=self.seed, stop=STOP_PATTERNS.get(family) if self.early_stop else None)


ENGINES = ("hf", "continuous", "vllm", "openai")
ENGINE_FIELDS = ("base_url", "served_model", "api_key_env", "request_timeout_s", "request_retries",
                 "vllm_gpu_memory", "vllm_max_lora_rank")
"""Settings of the vllm and openai engines only (left out of the result key of the other engines)."""


def select(examples: pa.Table, cfg: EvaluateConfig) -> list[dict]:
    rows = [r for r in examples.to_pylist() if r["split"] == cfg.split]
    if not rows:
        raise ValueError(f"evaluate: no examples in split {cfg.split!r}")
    rows.sort(key=lambda r: r["id"])
    if cfg.limit is not None:
        by_ds: dict[str, list[dict]] = {}
        for r in rows:
            by_ds.setdefault(r["dataset"], []).append(r)
        rows = [r for rs in by_ds.values() for r in rs[: cfg.limit]]
    return rows


def run(cfg: EvaluateConfig, examples: pa.Table, generator: Generator, workspace: Workspace,
        model: str, method: str) -> dict[str, pa.Table]:
    """Generate, score and aggregate; resumes from chunks saved in ``workspace``."""
    rows = check_prompt_sizes(select(examples, cfg), cfg)
    if any(r["family"] == "code" for r in rows):  # before any generation: one line if code cannot run
        require_sandbox(cfg.allow_unsandboxed, "evaluate.allow_unsandboxed")
    done = workspace.load_progress()
    done_ids = {i for t in done for i in t.column("id").to_pylist()}
    todo = [r for r in rows if r["id"] not in done_ids]
    if done_ids:
        log.info("evaluate: resuming, %d of %d examples already done", len(rows) - len(todo), len(rows))
    by_family: dict[str, list[dict]] = {}
    for r in todo:
        by_family.setdefault(r["family"], []).append(r)
    with tqdm(total=len(rows) * cfg.num_samples, initial=(len(rows) - len(todo)) * cfg.num_samples,
              desc=f"evaluate {model}/{method}", unit="completion") as bar:

        def save(family: str, chunk: list[tuple[dict, list[Completion]]]) -> None:
            table = _score(cfg, family, chunk, model, method)
            digest = hashlib.sha1("\n".join(r["id"] for r, _ in chunk).encode()).hexdigest()[:16]
            workspace.save_progress(f"chunk-{digest}", table)
            done.append(table)

        for family, rs in sorted(by_family.items()):
            _generate(cfg, family, rs, generator, bar.update, save)
    preds = pa.concat_tables(done) if done else schemas.PREDICTIONS.empty()
    keep = {r["id"] for r in rows}
    preds = preds.filter(pa.compute.is_in(preds.column("id"), pa.array(sorted(keep))))
    preds = preds.sort_by([("id", "ascending"), ("sample", "ascending")])
    return {"predictions": preds, "scores": aggregate(preds, rows, model, method, cfg)}


def check_prompt_sizes(rows: list[dict], cfg: EvaluateConfig) -> list[dict]:
    """``rows`` with every prompt within ``max_prompt_chars``: an over-long one is an error naming its
    example, or (on_long_prompt=truncate_left) cut to its last max_prompt_chars characters."""
    out = []
    for r in rows:
        n = len(r["prompt"])
        if n > cfg.max_prompt_chars:
            if cfg.on_long_prompt == "error":
                raise ValueError(f"evaluate: example {r['id']!r}: prompt of {n} characters is above "
                                 f"evaluate.max_prompt_chars={cfg.max_prompt_chars} (raise it, or set "
                                 "evaluate.on_long_prompt: truncate_left)")
            log.warning("evaluate: example %r: prompt cut from %d to its last %d characters", r["id"], n,
                        cfg.max_prompt_chars)
            r = {**r, "prompt": r["prompt"][-cfg.max_prompt_chars:]}
        out.append(r)
    return out


def _generate(cfg: EvaluateConfig, family: str, rows: list[dict], generator: Generator,
              progress: Callable[[int], None],
              emit: Callable[[str, list[tuple[dict, list[Completion]]]], None]) -> None:
    """Generate every sample of ``rows`` (one task family) and hand them to ``emit(family, chunk)`` in
    chunks of ``chunk_size`` examples, each with all its samples. A streaming engine (`ContinuousGenerator`)
    gets all the prompts in one call and reports completions as they end, so its batch never drains at a
    chunk boundary; other engines are called one chunk at a time."""
    ns = cfg.num_samples
    owners = [(r, s) for r in rows for s in range(ns)]
    prompts = [r["prompt"] for r, _ in owners]
    sampling = cfg.sampling(family)
    got: dict[int, dict[int, Completion]] = {}  # example position -> sample -> completion
    ready: list[int] = []

    def complete(i: int, completion: Completion) -> None:
        pos = i // ns
        got.setdefault(pos, {})[i % ns] = completion
        if len(got[pos]) == ns:
            ready.append(pos)
            if len(ready) == cfg.chunk_size:
                flush()

    def flush() -> None:
        emit(family, [(rows[pos], [got[pos][s] for s in range(ns)]) for pos in ready])
        for pos in ready:
            del got[pos]
        ready.clear()

    def call(first: int, part: list[str], **kwargs) -> list[Completion]:
        try:
            return generator.generate(part, sampling, progress=progress, **kwargs)
        except PromptTooLong as e:  # the engine counts prompts of this call: name the example instead
            m = re.match(r"prompt (\d+) ", str(e))
            if m is None or first + int(m[1]) >= len(owners):
                raise
            raise PromptTooLong(f"evaluate: example {owners[first + int(m[1])][0]['id']!r}: {e}") from None

    if getattr(generator, "streams", False):
        call(0, prompts, on_complete=complete)
    else:
        step = cfg.chunk_size * ns
        for first in range(0, len(prompts), step):
            for j, completion in enumerate(call(first, prompts[first:first + step])):
                complete(first + j, completion)
    if ready:
        flush()


def _score(cfg: EvaluateConfig, family: str, chunk: list[tuple[dict, list[Completion]]], model: str,
           method: str) -> pa.Table:
    """Score one chunk of examples (every sample of each) into `predictions` rows."""
    limits = SandboxLimits(timeout_s=cfg.sandbox_timeout_s, cpu_s=max(1, math.ceil(cfg.sandbox_timeout_s)),
                           memory_mb=cfg.sandbox_memory_mb)
    flat = [(r, s, g) for r, gens in chunk for s, g in enumerate(gens)]
    scored = score_rows([(family, g.text, r) for r, _, g in flat], limits, workers=cfg.sandbox_workers,
                        allow_unsandboxed=cfg.allow_unsandboxed, max_completion_chars=cfg.max_completion_chars)
    out = []
    for (r, s, g), (extracted, correct, score, detail) in zip(flat, scored):
        out.append(dict(id=r["id"], dataset=r["dataset"], model=model, method=method, sample=s,
                        prompt_tokens=g.prompt_tokens, completion_tokens=len(g.token_ids) if g.token_ids else None,
                        completion=g.text, extracted=extracted,
                        correct=bool(correct), score=float(score), latency=g.seconds,
                        truncated=not g.finished, detail=json.dumps(detail, sort_keys=True)))
    return schemas.conform(out, schemas.PREDICTIONS)


PRIMARY = {"mcqa": "accuracy", "math": "accuracy", "code": "pass@1", "tool": "full_acc", "free": "accuracy"}


def aggregate(preds: pa.Table, rows: list[dict], model: str, method: str, cfg: EvaluateConfig) -> pa.Table:
    """Per dataset: the primary metric (mean score), extraction and truncation rates, mean length."""
    family = {r["id"]: r["family"] for r in rows}
    groups: dict[str, list[dict]] = {}
    for p in preds.to_pylist():
        groups.setdefault(p["dataset"], []).append(p)
    out = []
    for ds, ps in sorted(groups.items()):
        fam = family[ps[0]["id"]]
        n = len(ps)
        metrics: dict[str, float] = {PRIMARY[fam]: sum(p["score"] for p in ps) / n,
                                     "extracted_rate": sum(p["extracted"] is not None for p in ps) / n,
                                     "truncated_rate": sum(p["truncated"] for p in ps) / n,
                                     "mean_prompt_tokens": sum(p["prompt_tokens"] for p in ps) / n}
        if fam == "tool":
            for m in ("action_acc", "arg_acc"):
                metrics[m] = sum(json.loads(p["detail"] or "{}").get(m, 0.0) for p in ps) / n
        for metric, value in metrics.items():
            se = math.sqrt(value * (1 - value) / n) if 0 <= value <= 1 and metric != "mean_prompt_tokens" else None
            out.append(dict(dataset=ds, model=model, method=method, metric=metric, value=value, n=n, stderr=se))
        cut = sum(p["prompt_tokens"] >= cfg.max_prompt_tokens for p in ps) if cfg.on_long_prompt != "error" else 0
        out.append(dict(dataset=ds, model=model, method=method, metric="prompts_truncated",
                        value=float(cut), n=n, stderr=None))
    return schemas.conform(out, schemas.SCORES)
