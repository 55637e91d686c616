"""Analyze stage: how far a trained model moved from the base model, example by example.

For one evaluated run (a method's checkpoint, or the base model itself) on one dataset's test split,
each example gets (REFERENCE §5 "Retention", plus the metrics the reference lacks):

* ``ppl_fit``   = exp(−mean_t log p_adapted(g_t | x, g_<t)) on the gold reference g (with its rationale);
* ``base_logp`` = mean_t log p_base(y_t | x, y_<t) on the adapted model's own completion y (sample 0 of
  its `predictions`), and ``ppl_ret`` = exp(−base_logp);
* ``jsd``       = mean_t JSD(p_base ‖ p_adapted) at the positions of y (β = 0.5, nats, ≤ ln 2).

All positions are teacher-forced under the chat-templated prompt the evaluation used. Completions are
re-tokenised from their text (plus EOS unless they hit the length limit). Under LoRA one model is
loaded and the base model is the same weights with the adapter disabled; a full fine-tune loads the
base model beside the merged checkpoint. The base run itself scores ppl_fit and its own completions
(jsd = 0). Each model runs a prompt once for both of its continuations (`shared.py`: KV cache, cropped
between them). Decoder passes run in length groups, in bfloat16 where the device has native bf16 (hidden
states return to float32 before the LM head); log-probs and divergences are float32 and chunked, so
no (rows × T × V) logits are held.
"""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import pyarrow as pa
import torch
from tqdm.auto import tqdm

import schemas
from engines.generation import chat_ids
from engines.models import ModelConfig, load_model, resolve_dtype
from engines.stops import end_of_turn
from objectives import chunked_gather_logps, chunked_token_divergence
from objectives.retention import masked_row_mean
from stages.analyze.shared import shared_prompt_hidden
from stages.train.data import pad_completions
from stages.train.teachers import head_weight
from storage import StageSpec

log = logging.getLogger(__name__)

SPEC = StageSpec(name="analyze", version=2,  # 2: one prompt pass per model (shared_prompt_hidden)
                 inputs={"examples": schemas.EXAMPLES, "predictions": schemas.PREDICTIONS},
                 outputs={"retention": schemas.RETENTION})

__all__ = ["SPEC", "AnalyzeConfig", "run"]


@dataclass(frozen=True)
class AnalyzeConfig:
    """Retention metrics of every evaluated run and paired comparisons between methods."""

    enabled: bool = True
    """After evaluation, compute retention tables and comparisons (when a method is trained) and the report."""
    baseline: str = "sft"
    """Method the paired statistics compare every other method with (also always compared with base)."""
    confidence: float = 0.95
    """Level of every confidence interval (over seeds in tables; bootstrap in comparisons)."""
    bootstrap: int = 2000
    """Bootstrap resamples of the paired comparisons."""
    max_examples: int | None = None
    """Score at most this many test examples per run (first by id; None = all)."""
    batch_size: int = 16
    """Examples per scoring batch."""
    batch_tokens: int = 8192
    """Padded-token budget of one decoder pass (rows are grouped by length)."""
    max_prompt_tokens: int = 2048
    """Longer prompts are cut from the left (counted in the log)."""
    max_completion_tokens: int = 512
    """Gold references and completions are scored up to this many tokens."""
    chunk_size: int = 64
    """Tokens per LM-head chunk."""
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    """Decoder passes: auto = bfloat16 where the device computes it natively, else float32."""

    def __post_init__(self) -> None:
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"analyze.confidence must be in (0, 1), got {self.confidence}")
        for name in ("bootstrap", "batch_size", "batch_tokens", "max_prompt_tokens", "max_completion_tokens",
                     "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"analyze.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError("analyze.max_examples must be >= 1 or null")


@dataclass
class _Models:
    adapted: torch.nn.Module
    base: torch.nn.Module | None
    """A separate base model (full fine-tune); None when it is `adapted` with its adapter disabled."""
    tokenizer: object
    lora: bool

    def base_view(self):
        """Context in which `base_model()` computes the base model (the adapter off under LoRA)."""
        return self.adapted.disable_adapter() if self.lora else nullcontext()

    def base_model(self) -> torch.nn.Module:
        return self.adapted if self.lora else self.base  # type: ignore[return-value]


def load_models(model: ModelConfig, checkpoint: Path | None) -> _Models:
    """The adapted model and a view of the base model (float32 weights)."""
    fp32 = replace(model, dtype="float32")
    base, tok = load_model(fp32)
    if checkpoint is None:
        return _Models(base, None, tok, lora=False)
    if (checkpoint / "adapter_config.json").exists():
        from peft import PeftModel

        adapted = PeftModel.from_pretrained(base, str(checkpoint)).eval()
        adapted.requires_grad_(False)
        return _Models(adapted, None, tok, lora=True)
    merged, _ = load_model(replace(fp32, path=str(checkpoint / "merged")))
    return _Models(merged, base, tok, lora=False)


def run(cfg: AnalyzeConfig, examples: pa.Table, predictions: pa.Table, model: ModelConfig,
        checkpoint: Path | None, *, method: str, seed: int | None = None,
        trained_on: str | None = None) -> dict[str, pa.Table]:
    """Retention rows of one evaluated run; `checkpoint` is the train artifact's `checkpoint/` folder."""
    gold = {r["id"]: r for r in examples.select(["id", "dataset", "prompt", "reference"]).to_pylist()}
    preds = sorted((p for p in predictions.to_pylist() if p["sample"] == 0), key=lambda p: p["id"])
    missing = [p["id"] for p in preds if p["id"] not in gold]
    if missing:
        raise ValueError(f"analyze: prediction id {missing[0]!r} is not in the examples table")
    if cfg.max_examples is not None:
        preds = preds[:cfg.max_examples]
    if not preds:
        return {"retention": schemas.RETENTION.empty()}
    models = load_models(model, checkpoint)
    device = next(models.adapted.parameters()).device
    bf16 = resolve_dtype(cfg.precision, str(device)) == "bfloat16"
    rows, cut = [], 0
    bar = tqdm(total=len(preds), desc=f"analyze {method}", unit="ex", disable=None)
    for start in range(0, len(preds), cfg.batch_size):
        batch = preds[start:start + cfg.batch_size]
        part, n_cut = _score_batch(cfg, models, [gold[p["id"]] for p in batch], batch, device, bf16,
                                   scored_run=checkpoint is not None)
        cut += n_cut
        rows += [{"id": p["id"], "dataset": gold[p["id"]]["dataset"], "model": model.label, "method": method,
                  "seed": seed,
                  "trained_on": trained_on, **values} for p, values in zip(batch, part)]
        bar.update(len(batch))
    bar.close()
    if cut:
        log.warning("analyze %s: %d prompts longer than %d tokens were cut from the left", method, cut,
                    cfg.max_prompt_tokens)
    return {"retention": schemas.conform(rows, schemas.RETENTION)}


def _encode(cfg: AnalyzeConfig, tok, texts: list[str], eos: list[bool]) -> list[list[int]]:
    """Token ids of answers; a finished one ends with the chat template's end-of-turn token, as replies do."""
    end, out = end_of_turn(tok), []
    for text, add_eos in zip(texts, eos):
        ids = tok(text, add_special_tokens=False)["input_ids"][:cfg.max_completion_tokens]
        if add_eos and len(ids) < cfg.max_completion_tokens:
            ids = ids + [end]
        out.append(ids or [end])
    return out


@torch.no_grad()
def _score_batch(cfg: AnalyzeConfig, models: _Models, items: list[dict], preds: list[dict],
                 device: torch.device, bf16: bool, *, scored_run: bool) -> tuple[list[dict], int]:
    tok = models.tokenizer
    pad = tok.pad_token_id
    prompts, cut = [], 0
    for it in items:
        ids = chat_ids(tok, it["prompt"])
        if len(ids) > cfg.max_prompt_tokens:
            ids, cut = ids[-cfg.max_prompt_tokens:], cut + 1
        prompts.append(ids)

    def selected(hidden: torch.Tensor, seqs: list[list[int]]):
        tokens, lengths = pad_completions(seqs, pad)
        mask = (torch.arange(tokens.shape[1])[None, :] < lengths[:, None]).to(device)
        return hidden[mask], tokens.to(device)[mask], mask

    adapted = models.adapted
    gold = _encode(cfg, tok, [it["reference"] for it in items], [True] * len(items))
    own = _encode(cfg, tok, [p["completion"] for p in preds], [not p["truncated"] for p in preds])
    # one prompt pass per model serves both continuations (the prompt is usually the longer part)
    h_gold, h_own = shared_prompt_hidden(adapted, prompts, [gold, own], pad, bf16=bf16, budget=cfg.batch_tokens)
    h, t, m = selected(h_gold, gold)
    fit = masked_row_mean(chunked_gather_logps(h, head_weight(adapted), t, chunk_size=cfg.chunk_size), m)
    h_own, t, m = selected(h_own, own)
    w_own = head_weight(adapted)
    if scored_run:
        with models.base_view():
            base = models.base_model()
            (h_base,) = shared_prompt_hidden(base, prompts, [own], pad, bf16=bf16, budget=cfg.batch_tokens)
            h_base = selected(h_base, own)[0]
            w_base = head_weight(base)
    else:  # the base run: its own completions under itself
        h_base, w_base = h_own, w_own
    base_logp = masked_row_mean(chunked_gather_logps(h_base, w_base, t, chunk_size=cfg.chunk_size), m)
    jsd = (masked_row_mean(chunked_token_divergence(h_base, w_base, h_own, w_own, kind="jsd", beta=0.5,
                                                    chunk_size=cfg.chunk_size), m)
           if scored_run else torch.zeros_like(base_logp))
    counts = m.sum(-1)
    return [{"ppl_fit": math.exp(-float(f)), "base_logp": float(b), "ppl_ret": math.exp(-float(b)),
             "jsd": max(0.0, float(j)), "num_tokens": int(n)}
            for f, b, j, n in zip(fit, base_logp, jsd, counts)], cut
