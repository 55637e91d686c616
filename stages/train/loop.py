"""The train loop: setup → fit → save, one explicit loop for every method and ablation.

Per optimizer step: pick the step's prompts (seeded order), sample completions from the student,
score them with every teacher view without gradient (phase A), compute agreement weights over the
step, then for each micro-batch run the student and back-propagate the weighted sum of terms (phase
B), clip gradients, step AdamW and the warmup+cosine schedule, and move the EMA teacher. Everything
a loss divides by (token and sequence counts, Σw, the quantile-clip threshold) is fixed over the whole
step before the first student backward, so the micro-batch split never changes the step. `accelerate`
places the model and, under `accelerate launch`, runs DDP: each process takes its share of the step's
prompts, the denominators are summed over processes (the clip threshold is the quantile over every
process's tokens), and the loss is scaled by the process count because DDP averages gradients.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import pyarrow as pa
import torch
from torch import nn

from engines.models import ModelConfig, load_model, pick_device, resolve_dtype, resolve_path
from engines.stops import end_of_turn
from stages.train import checkpoint as ckpt
from stages.train.batches import BatchContext, completion_ids, generate, micro_batches
from stages.train.config import LoraSettings, TrainConfig
from stages.train.data import PromptEncoder, TrainItem, attach_views, select_examples, step_indices
from stages.train.step import (
    DENOMINATORS,
    Normalizers,
    agreement_weights,
    clip_threshold,
    clip_values,
    denominators,
    loss_terms,
    score,
)
from stages.train.teachers import Teachers, head_weight
from storage import Workspace
from storage.attempts import reset_rss_peak, rss_peak_mb

log = logging.getLogger(__name__)

StepCallback = Callable[[int, dict, nn.Module], None]
"""Called after every optimizer step (and its checkpoint) with (step, train_steps row, student)."""


@dataclass
class Run:
    """Everything the loop holds between steps."""

    cfg: TrainConfig
    method: str
    accelerator: object
    model: nn.Module
    """The prepared student (DDP-wrapped under multi-process)."""
    student: nn.Module
    """The unwrapped student (a PeftModel under LoRA)."""
    tokenizer: object
    teachers: Teachers
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    items: list[TrainItem]
    encoder: PromptEncoder
    workspace: Workspace
    step: int = 0
    rows: list[dict] = field(default_factory=list)
    rollouts: list[dict] = field(default_factory=list)
    score_bf16: bool = False
    """Whether the no-grad decoder passes run under bfloat16 autocast (resolved score_precision)."""
    vllm: object | None = None
    """The vLLM rollout engine under rollout.backend=vllm."""


def _wrap_lora(base: nn.Module, lora: LoraSettings) -> nn.Module:
    if not lora.enabled:
        return base
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(base, config)


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warmup over warmup_ratio·steps, then cosine decay to 0 (multiplier of cfg.lr)."""
    import math

    warmup = round(cfg.warmup_ratio * cfg.steps)

    def factor(i: int) -> float:
        if i < warmup:
            return (i + 1) / (warmup + 1)
        progress = (i - warmup) / max(1, cfg.steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def setup(cfg: TrainConfig, model: ModelConfig, examples: pa.Table, contexts: pa.Table,
          negatives: pa.Table | None, workspace: Workspace, method: str) -> Run:
    """Load the model, wrap it, build teachers, optimizer and schedule; resume if a state exists."""
    from accelerate import Accelerator

    reset_peak_memory()  # peak_mem_mb is this run's own, not an earlier method's in the same process
    acc = Accelerator(cpu=pick_device(model.device) == "cpu", mixed_precision=cfg.mixed_precision)
    if cfg.batch_size % (cfg.grad_accum * acc.num_processes):
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by grad_accum × processes "
                         f"= {cfg.grad_accum * acc.num_processes}")
    items = attach_views(cfg, select_examples(cfg, examples), contexts, negatives)
    torch.manual_seed(cfg.seed)
    base, tokenizer = load_model(replace(model, dtype="float32", device=str(acc.device)), trainable=True)
    if cfg.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    student = _wrap_lora(base, cfg.lora)
    teachers = Teachers(student, lora=cfg.lora.enabled, kind=cfg.teacher.kind, beta=cfg.teacher.beta,
                        every=cfg.teacher.every)
    encoder = PromptEncoder(tokenizer, cfg.rollout.max_prompt_tokens, cfg.rollout.on_long_prompt)
    encoder.prepare([t for it in items for t in (it.prompt, it.privileged, *it.aux, *it.negatives)])
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    prepared, optimizer = acc.prepare(student, optimizer)
    run = Run(cfg, method, acc, prepared, student, tokenizer, teachers, optimizer, scheduler, items, encoder,
              workspace)
    if cfg.rollout.backend == "vllm":
        from engines.vllm_rollouts import VLLMRollouts

        r = cfg.rollout
        run.vllm = VLLMRollouts(str(resolve_path(model.path)), tokenizer, lora_rank=cfg.lora.r,
                                max_prompt_tokens=r.max_prompt_tokens, on_long_prompt=r.on_long_prompt,
                                max_new_tokens=r.max_new_tokens, gpu_memory_utilization=r.vllm_gpu_memory)
    run.score_bf16 = resolve_dtype(cfg.score_precision, str(acc.device)) == "bfloat16"
    _resume(run)
    log.info("train %s: %d examples, %d steps × %d prompts (%d micro-batches), %.2fM trainable params, "
             "starting at step %d", method, len(items), cfg.steps, cfg.batch_size, cfg.grad_accum,
             sum(p.numel() for p in params) / 1e6, run.step + 1)
    return run


def fit(run: Run, on_step: StepCallback | None = None) -> None:
    """Run the remaining optimizer steps, checkpointing and logging as configured."""
    cfg = run.cfg
    for step in range(run.step + 1, cfg.steps + 1):
        row, samples = train_step(run, step)
        run.step = step
        run.rows.append(row)
        run.rollouts.extend(samples)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            _save_state(run)
        if step % cfg.log_every == 0 or step == cfg.steps:
            _log_line(run, row)
        if on_step is not None:
            on_step(step, row, run.student)


def save(run: Run) -> None:
    """Export the adapter and the merged model (main process only); the student is merged in place."""
    run.accelerator.wait_for_everyone()
    if run.accelerator.is_main_process:
        ckpt.export(run.student, run.tokenizer, run.workspace.files / ckpt.CHECKPOINT, lora=run.cfg.lora.enabled)
    run.accelerator.wait_for_everyone()


def train_step(run: Run, step: int) -> tuple[dict, list[dict]]:
    """One optimizer step; returns its train_steps row and its rollout samples."""
    cfg, acc = run.cfg, run.accelerator
    started = time.perf_counter()
    is_log = step % cfg.log_every == 0 or step == cfg.steps
    truncated_before = run.encoder.uses_truncated
    indices = step_indices(len(run.items), cfg.batch_size, step, cfg.seed)
    items = [run.items[i] for i in indices[acc.process_index::acc.num_processes]]
    ctx = BatchContext(cfg, run.student, run.tokenizer, run.encoder, acc.device, acc.process_index,
                       start=run.teachers.start, vllm=run.vllm)
    completions = generate(ctx, items, step) if cfg.on_policy else None
    generated = time.perf_counter()
    batches = micro_batches(ctx, items, completions, step)
    weight = head_weight(run.student)
    run.student.eval()
    with acc.autocast():
        scores = [score(mb, run.teachers, cfg, is_log, run.score_bf16) if cfg.needs_teacher else None
                  for mb in batches]
    weights, metrics = (agreement_weights(cfg, batches, scores) if cfg.needs_teacher
                        else ([(None, None)] * len(batches), {}))
    norm = step_normalizers(acc, cfg, batches, weights)
    if cfg.needs_teacher and cfg.clip.quantile is not None:
        with acc.autocast():
            values = clip_values(run.student, weight, batches, scores, cfg)
        norm.clip_threshold = clip_threshold(cfg, [_gather_values(acc, torch.cat(values))])
    scored = time.perf_counter()
    run.student.train()
    parts, loss_value = [], 0.0
    for i, (mb, sc, w) in enumerate(zip(batches, scores, weights)):
        sync = acc.no_sync(run.model) if i < len(batches) - 1 else nullcontext()
        with sync, acc.autocast():
            loss, m = loss_terms(run.model, weight, mb, sc, w, cfg, norm)
            acc.backward(loss * acc.num_processes)
        loss_value += float(loss.detach())
        parts.append((m, float(mb.mask.sum()) if mb.mask is not None else 1.0))
    grad_norm = _clip(run)
    lr = run.scheduler.get_last_lr()[0]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.teachers.update(step)
    finished = time.perf_counter()
    metrics.update(_merge(parts))
    metrics.update({"train/grad_norm": grad_norm, "train/tokens/completion": norm.count,
                    "train/prompt/truncated": float(run.encoder.uses_truncated - truncated_before),
                    "train/time/generate_s": generated - started, "train/time/teachers_s": scored - generated,
                    "train/time/student_s": finished - scored})
    if completions is not None:
        metrics["train/rollout/truncated_fraction"] = sum(not c.finished for c in completions) / len(completions)
        metrics["train/rollout/mean_tokens"] = sum(len(c.token_ids) for c in completions) / len(completions)
    metrics, loss_value = _reduce(acc, metrics, loss_value)
    seconds = finished - started
    row = {"step": step, "method": run.method, "metrics": metrics, "loss": loss_value, "lr": lr,
           "tokens_per_s": norm.count / seconds if completions is not None else None,
           "step_seconds": seconds, "peak_mem_mb": peak_memory_mb()}
    samples = _samples(run, step, items, completions) if is_log else []
    return row, samples


def step_normalizers(acc, cfg: TrainConfig, batches, weights) -> Normalizers:
    """The step's loss denominators (`step.denominators`), summed over processes."""
    local = denominators(cfg, batches, weights)
    sums = torch.tensor([local[k] for k in DENOMINATORS], dtype=torch.float64, device=acc.device)
    if acc.num_processes > 1:
        sums = acc.reduce(sums, reduction="sum")
    return Normalizers.from_sums(dict(zip(DENOMINATORS, sums.tolist())))


def _gather_values(acc, values: torch.Tensor) -> torch.Tensor:
    """Every process's 1-D `values`, concatenated (lengths may differ between processes)."""
    if acc.num_processes == 1:
        return values
    from accelerate.utils import pad_across_processes

    padded = pad_across_processes(values.double()[None], dim=1, pad_index=float("nan"))[0]
    gathered = acc.gather(padded)
    return gathered[~torch.isnan(gathered)]


def _clip(run: Run) -> float:
    params = [p for p in run.student.parameters() if p.requires_grad]
    max_norm = run.cfg.max_grad_norm if run.cfg.max_grad_norm is not None else float("inf")
    return float(run.accelerator.clip_grad_norm_(params, max_norm))


def _merge(parts: list[tuple[dict[str, float], float]]) -> dict[str, float]:
    """Micro-batch metrics -> step metrics: loss terms add up, minima take the min, the rest are
    token-weighted means."""
    out: dict[str, float] = {}
    total = sum(n for _, n in parts) or 1.0
    for key in {k for m, _ in parts for k in m}:
        values = [(m[key], n) for m, n in parts if key in m]
        if key.startswith("train/loss/"):
            out[key] = sum(v for v, _ in values)
        elif key.endswith("_min"):
            out[key] = min(v for v, _ in values)
        else:
            out[key] = sum(v * n for v, n in values) / (sum(n for _, n in values) or total)
    return out


def _reduce(acc, metrics: dict[str, float], loss: float) -> tuple[dict[str, float], float]:
    """Across processes: loss terms and token counts add up, everything else is averaged."""
    if acc.num_processes == 1:
        return metrics, loss
    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys] + [loss], dtype=torch.float64, device=acc.device)
    summed = acc.reduce(values, reduction="sum").tolist()
    additive = {"train/tokens/completion"}
    out = {k: v if (k.startswith("train/loss/") or k in additive) else v / acc.num_processes
           for k, v in zip(keys, summed)}
    out["train/tokens/completion"] = metrics["train/tokens/completion"]  # already a global count
    return out, summed[-1]


def reset_peak_memory() -> None:
    """Start this run's peak-memory window: CUDA peak statistics, else the RSS high-water mark."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()
    reset_rss_peak()


def peak_memory_mb() -> float:
    """Peak memory since `reset_peak_memory`: CUDA max allocated on GPU, else the RSS high-water mark."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return rss_peak_mb()


def _samples(run: Run, step: int, items: list[TrainItem], completions) -> list[dict]:
    if completions is None or not run.accelerator.is_main_process:
        return []
    eos = end_of_turn(run.tokenizer)
    return [{"step": step, "id": it.id, "completion": c.text, "num_tokens": len(completion_ids(c, eos)),
             "truncated": not c.finished}
            for it, c in list(zip(items, completions))[: run.cfg.rollout.log_samples]]


def _save_state(run: Run) -> None:
    acc = run.accelerator
    if acc.is_main_process:
        ckpt.save_state(run.workspace.dir / ckpt.STATE_FILE, {
            "step": run.step, "params": ckpt.trainable_state(run.student),
            "teachers": run.teachers.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "rng": ckpt.rng_state(),
            "rows": run.rows, "rollouts": run.rollouts,
        })
    acc.wait_for_everyone()


def _resume(run: Run) -> None:
    state = ckpt.load_state(run.workspace.dir / ckpt.STATE_FILE)
    if state is None:
        return
    ckpt.restore_trainable(run.student, state["params"])
    run.teachers.load_state_dict(state["teachers"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    ckpt.set_rng_state(state["rng"])
    run.step, run.rows, run.rollouts = state["step"], state["rows"], state["rollouts"]
    log.info("train %s: resuming after step %d of %d", run.method, run.step, run.cfg.steps)


def _log_line(run: Run, row: dict) -> None:
    terms = " ".join(f"{k.rsplit('/', 1)[-1]} {v:.4g}" for k, v in sorted(row["metrics"].items())
                     if k.startswith("train/loss/"))
    tps = row["tokens_per_s"]
    log.info("step %d/%d loss %.4g (%s) lr %.3g tok/s %s step %.2fs mem %.0fMB", row["step"], run.cfg.steps,
             row["loss"], terms, row["lr"], f"{tps:.1f}" if tps is not None else "-", row["step_seconds"],
             row["peak_mem_mb"])
