"""Our `gkd` preset against TRL's GKDTrainer: step time, completion tokens/s and peak memory, same run.

Both sides train SmolLM2-135M-Instruct in float32 on the CPU with full fine-tuning, fully on-policy
(λ = 1), generalized JSD with β = 0.5, sampling temperature 0.9, the same prompts, batch size and
completion length, no gradient checkpointing; each runs in its own subprocess and its first step is a
warm-up excluded from the averages. TRL's teacher reads the student's own prompt; ours reads the
privileged prompt (question + reference), which is longer, as self-distillation requires.

TRL is not a dependency of this project; its side runs under another Python that has it:

    python3 -m venv .venv-trl
    .venv-trl/bin/pip install torch==2.13.0 trl==1.16.0 transformers==5.23.0 peft==0.21.2 accelerate==1.15.0
    .venv/bin/python benchmarks/trl_gkd.py --trl-python .venv-trl/bin/python
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def trl_worker(args: argparse.Namespace) -> dict:
    """Run TRL's GKDTrainer for `args.steps` steps on the prompts in `args.data` (runs under TRL's Python)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = json.loads(Path(args.data).read_text())
    data = Dataset.from_list([{"messages": [{"role": "user", "content": r["prompt"]},
                                            {"role": "assistant", "content": r["reference"]}]} for r in rows])
    tok = AutoTokenizer.from_pretrained(args.model_path)
    student = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=torch.float32)

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.started, self.seconds = 0.0, []

        def on_step_begin(self, *a, **k):
            self.started = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.seconds.append(time.perf_counter() - self.started)

    timer = Timer()
    with tempfile.TemporaryDirectory() as out:
        cfg = GKDConfig(output_dir=out, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
                        max_steps=args.steps, learning_rate=2e-5, lmbda=1.0, beta=0.5, temperature=0.9,
                        max_new_tokens=args.max_new_tokens, use_cpu=True, bf16=False, report_to="none",
                        save_strategy="no", logging_steps=1, gradient_checkpointing=False, seed=0,
                        dataloader_num_workers=0)
        trainer = GKDTrainer(model=student, teacher_model=teacher, args=cfg, train_dataset=data,
                             processing_class=tok, callbacks=[timer])
        trainer.train()
    timed = timer.seconds[1:] if len(timer.seconds) > 1 else timer.seconds
    step_s = statistics.fmean(timed)
    return {"method": "trl GKDTrainer", "step_s": step_s, "tokens_per_s": float("nan"),
            "peak_mem_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trl-python", help="a Python interpreter with trl installed")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per side (first is warm-up)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    parser.add_argument("--trl-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_worker:
        print("RESULT " + json.dumps(trl_worker(args)))
        return
    if not args.trl_python:
        parser.error("--trl-python is required (see the instructions at the top of this file)")
    sys.path.insert(0, str(ROOT.parent))
    sys.path.insert(0, str(ROOT))
    from train_step import synthetic_examples

    from engines.models import resolve_path

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "prompts.json"
        rows = synthetic_examples(max(8, args.batch * args.steps)).select(["prompt", "reference"]).to_pylist()
        data.write_text(json.dumps(rows))
        common = ["--steps", str(args.steps), "--batch", str(args.batch), "--max-new-tokens", str(args.max_new_tokens),
                  "--threads", str(args.threads)]
        ours = [sys.executable, str(ROOT / "train_step.py"), "--worker", "gkd", "--full-finetune", *common,
                "--set=rollout.on_policy_fraction=1.0", "--set=rollout.temperature=0.9",
                "--set=divergence.temperature=0.9"]
        theirs = [args.trl_python, __file__, "--trl-worker", "--data", str(data), "--model-path",
                  str(resolve_path("embedded:smollm2-135m-instruct")), *common]
        for name, cmd in (("unisd gkd", ours), ("trl GKDTrainer", theirs)):
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = next((x for x in res.stdout.splitlines() if x.startswith("RESULT ")), None)
            if res.returncode != 0 or line is None:
                sys.exit(f"{name}: failed\n{res.stderr[-3000:]}")
            results.append({**json.loads(line[len("RESULT "):]), "method": name})
            print(f"  {name}: {results[-1]['step_s']:.2f} s/step", file=sys.stderr)
    ours_r, trl_r = results
    print(f"{'side':<16} {'step s':>8} {'peak MB':>9}")
    for r in results:
        print(f"{r['method']:<16} {r['step_s']:>8.2f} {r['peak_mem_mb']:>9.0f}")
    print(f"TRL step time / ours: {trl_r['step_s'] / ours_r['step_s']:.2f}x; "
          f"peak memory ours / TRL: {ours_r['peak_mem_mb'] / trl_r['peak_mem_mb']:.2f}")


if __name__ == "__main__":
    main()
