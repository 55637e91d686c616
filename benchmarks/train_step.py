"""Train-step cost of each method preset: step time, tokens/s, peak memory, MFU, ratio vs `sd`.

Every preset runs in a fresh subprocess (so peak memory is its own) on the same synthetic prompts,
with the same seed, batch and completion length; the first step is a warm-up and is excluded from
the time averages when more than one step runs. Presets that read retrieval/induction views are
run on random views (the cost is the same: K views of the same length scale).

    python benchmarks/train_step.py                       # sd, each mechanism, unisd_star, baselines
    python benchmarks/train_step.py --steps 1 --batch 2 --max-new-tokens 16 --methods sd unisd_star
    python benchmarks/train_step.py --model embedded:tiny-random-llama --full-finetune
    python benchmarks/train_step.py --methods sd unisd_star --set score_precision=float32
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from threads import cpu_model

METHODS = ("sd", "agreement_tok_random", "agreement_seq_random", "ema", "contrastive", "match_repr",
           "match_joint", "clip", "clip_quantile", "unisd_star", "sft", "ssd", "sdft", "gkd", "opsd")


def synthetic_examples(n: int):
    """n MCQA + n maths train items in the real `examples` schema (prompts of realistic length)."""
    import schemas

    rows = []
    for i in range(n):
        options = [f"{w} {i}" for w in ("mitochondria", "ribosome", "nucleus", "chloroplast")]
        letter = "ABCD"[i % 4]
        prompt = ("Answer the following multiple-choice question.\n\nQuestion: Which organelle is described "
                  f"by clue number {i}, a structure found in eukaryotic cells?\n\n"
                  + "\n".join(f"{L}. {o}" for L, o in zip("ABCD", options))
                  + '\n\nReason briefly, then give the final answer on the last line as "Answer: <letter>".')
        rationale = f"Clue {i} points to {options[i % 4]}, which matches option {letter}."
        rows.append({"id": f"mcqa-{i}", "dataset": "bench_mcqa", "split": "train", "family": "mcqa",
                     "prompt": prompt, "reference": f"Reasoning: {rationale}\nAnswer: {letter}",
                     "rationale": rationale, "options": options, "answer": letter})
        a, b = 17 + 3 * i, 29 + 5 * i
        rows.append({"id": f"math-{i}", "dataset": "bench_math", "split": "train", "family": "math",
                     "prompt": f"Solve the following problem.\n\nA shop sells {a} apples in the morning and {b} "
                               "in the afternoon. How many apples does it sell in total?\n\nReason step by step, "
                               'briefly, then give the final answer on the last line as "Answer: <number>".',
                     "reference": f"Reasoning: {a} + {b} = {a + b}.\nAnswer: {a + b}",
                     "rationale": f"{a} + {b} = {a + b}.", "answer": str(a + b)})
    return schemas.conform(rows, schemas.EXAMPLES)


def worker(args: argparse.Namespace) -> dict:
    """Run one preset for `args.steps` steps and return its averaged numbers."""
    import dataclasses

    import torch
    import yaml
    from mfu import FlopCounter, matmul_peak_gflops

    from engines.models import ModelConfig
    from stages import contexts
    from stages.negatives import LLMSource, NegativesConfig, WordNetSource
    from stages.negatives import run as build_negatives
    from stages.train import TrainConfig
    from stages.train.loop import fit, setup
    from storage import Workspace
    from unisd.configtools import apply_overrides, build

    if args.threads:
        torch.set_num_threads(args.threads)
    raw = yaml.safe_load((ROOT / "configs" / "methods" / f"{args.worker}.yaml").read_text()) or {}
    overrides = [f"steps={args.steps}", f"batch_size={args.batch}", f"grad_accum={args.grad_accum}",
                 f"rollout.max_new_tokens={args.max_new_tokens}", f"checkpoint_every={10**6}",
                 f"lora.enabled={str(not args.full_finetune).lower()}"]
    overrides += args.set
    if "agreement" in raw:
        overrides.append("agreement.strategy=random")
    cfg = build(TrainConfig, apply_overrides(raw, overrides))
    examples = synthetic_examples(max(8, args.batch * args.steps))
    negatives = build_negatives(NegativesConfig(llm=LLMSource(num_per_item=0), wordnet=WordNetSource(num_per_item=0)), examples)["negatives"]
    views = contexts.run(contexts.ContextsConfig(num_views=cfg.agreement.num_views), examples, negatives)["contexts"]
    from stages.train import loop

    with tempfile.TemporaryDirectory() as tmp:
        run = setup(cfg, ModelConfig(path=args.model), examples, views, negatives, Workspace.create(Path(tmp)),
                    args.worker)
        counter = FlopCounter(lora=cfg.lora.enabled).attach(run.student, *vars(run.teachers).values())
        step_flops, plain_step = [], loop.train_step

        def counted_step(r, step):  # model FLOPs of each step, to pair with its time
            before = counter.flops
            out = plain_step(r, step)
            step_flops.append(counter.flops - before)
            return out

        loop.train_step = counted_step
        try:
            fit(run)
        finally:
            loop.train_step = plain_step
            counter.detach()
    peak = matmul_peak_gflops(torch.bfloat16 if run.score_bf16 and args.peak_bf16 else torch.float32)
    rows = run.rows[1:] if len(run.rows) > 1 else run.rows
    flops = step_flops[1:] if len(step_flops) > 1 else step_flops
    metrics = [dict(r["metrics"]) for r in rows]
    mfu = statistics.fmean([f / r["step_seconds"] / 1e9 for f, r in zip(flops, rows)]) / peak
    return {"method": args.worker, "step_s": statistics.fmean([r["step_seconds"] for r in rows]),
            "gflop_per_step": statistics.fmean(flops) / 1e9, "peak_gflops": peak, "mfu": mfu,
            "tokens_per_s": statistics.fmean([r["tokens_per_s"] or float("nan") for r in rows]),
            "peak_mem_mb": max(r["peak_mem_mb"] for r in run.rows),
            "generate_s": statistics.fmean([m["train/time/generate_s"] for m in metrics]),
            "teachers_s": statistics.fmean([m["train/time/teachers_s"] for m in metrics]),
            "student_s": statistics.fmean([m["train/time/student_s"] for m in metrics]),
            "loss": run.rows[-1]["loss"], "config": dataclasses.asdict(cfg)["divergence"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="presets from configs/methods/")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per preset (first is warm-up)")
    parser.add_argument("--batch", type=int, default=8, help="prompts per optimizer step")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--full-finetune", action="store_true", help="train every weight instead of LoRA")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a TrainConfig override applied to every preset (repeatable)")
    parser.add_argument("--peak-bf16", action="store_true",
                        help="MFU against the bf16 matmul peak when scoring runs in bf16 (default: fp32 peak)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return
    results = []
    for method in args.methods:
        cmd = [sys.executable, __file__, "--worker", method, "--steps", str(args.steps), "--batch", str(args.batch),
               "--grad-accum", str(args.grad_accum), "--max-new-tokens", str(args.max_new_tokens),
               "--model", args.model, "--threads", str(args.threads)] + (["--full-finetune"] * args.full_finetune)
        cmd += ["--peak-bf16"] * args.peak_bf16
        cmd += [f"--set={kv}" for kv in args.set]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((x for x in res.stdout.splitlines() if x.startswith("RESULT ")), None)
        if res.returncode != 0 or line is None:
            print(f"{method}: failed\n{res.stderr[-2000:]}", file=sys.stderr)
            continue
        results.append(json.loads(line[len("RESULT "):]))
        print(f"  {method}: {results[-1]['step_s']:.2f} s/step", file=sys.stderr)
    base = next((r for r in results if r["method"] == "sd"), None)
    if results:
        print(f"CPU: {cpu_model()}; matmul peak {results[0]['peak_gflops']:.0f} GFLOP/s (measured in each "
              "worker; MFU = model FLOPs per step / step time / that peak, formula in benchmarks/mfu.py)")
    print(f"{'method':<22} {'step s':>8} {'× sd':>6} {'tok/s':>8} {'peak MB':>9} {'× sd':>6} "
          f"{'gen s':>7} {'teach s':>8} {'stud s':>7} {'GFLOP':>7} {'MFU':>6}")
    for r in results:
        t_ratio = r["step_s"] / base["step_s"] if base else float("nan")
        m_ratio = r["peak_mem_mb"] / base["peak_mem_mb"] if base else float("nan")
        print(f"{r['method']:<22} {r['step_s']:>8.2f} {t_ratio:>6.2f} {r['tokens_per_s']:>8.1f} "
              f"{r['peak_mem_mb']:>9.0f} {m_ratio:>6.2f} {r['generate_s']:>7.2f} {r['teachers_s']:>8.2f} "
              f"{r['student_s']:>7.2f} {r['gflop_per_step']:>7.0f} {100 * r['mfu']:>5.1f}%")


if __name__ == "__main__":
    main()
