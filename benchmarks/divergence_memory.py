"""Peak extra memory and time of the per-token divergence: dense (N, V) logits vs token chunks.

Each variant runs forward + backward in a fresh subprocess; the extra memory is the growth of the
process's peak RSS (`resource.getrusage`) over the peak measured after inputs were built and a tiny
warm-up ran. Default sizes follow DESIGN.md (512 tokens × 49,152 vocab, SmolLM2 hidden size 576).

    python benchmarks/divergence_memory.py [--tokens 512] [--vocab 49152] [--hidden 576] [--chunk 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from objectives.divergence import chunked_token_divergence, token_divergence

VARIANTS = ("dense", "chunked", "chunked_trainable_head")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _loss(
    variant: str, student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor, chunk: int
) -> torch.Tensor:
    if variant == "dense":
        with torch.no_grad():
            teacher_logits = teacher @ weight.T
        return token_divergence(
            student @ weight.T, teacher_logits, kind="jsd", beta=0.5, temperature=0.7
        ).sum()
    return chunked_token_divergence(
        student, weight, teacher, kind="jsd", beta=0.5, temperature=0.7, chunk_size=chunk
    ).sum()


def run_one(variant: str, tokens: int, vocab: int, hidden: int, chunk: int) -> dict[str, float]:
    """Forward + backward once; returns extra peak RSS (MB) and wall time (s)."""
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(tokens, hidden, generator=generator).requires_grad_()
    teacher = torch.randn(tokens, hidden, generator=generator)
    weight = torch.randn(vocab, hidden, generator=generator) * 0.05
    weight.requires_grad_(variant == "chunked_trainable_head")
    small = slice(0, 2)
    _loss(variant, student[small], teacher[small], weight, chunk).backward()  # warm-up kernels
    student.grad = None
    weight.grad = None
    baseline = _peak_rss_mb()
    start = time.perf_counter()
    _loss(variant, student, teacher, weight, chunk).backward()
    elapsed = time.perf_counter() - start
    return {"extra_peak_mb": _peak_rss_mb() - baseline, "seconds": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_one(args.variant, args.tokens, args.vocab, args.hidden, args.chunk)))
        return
    results = {}
    for variant in VARIANTS:
        command = [
            sys.executable,
            __file__,
            "--variant",
            variant,
            "--tokens",
            str(args.tokens),
            "--vocab",
            str(args.vocab),
            "--hidden",
            str(args.hidden),
            "--chunk",
            str(args.chunk),
        ]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(output.strip().splitlines()[-1])
    print(f"N={args.tokens} V={args.vocab} H={args.hidden} chunk={args.chunk} (JSD β=0.5, τ=0.7, fwd+bwd)")
    dense = results["dense"]["extra_peak_mb"]
    for variant, result in results.items():
        ratio = result["extra_peak_mb"] / dense if dense > 0 else float("nan")
        extra, seconds = result["extra_peak_mb"], result["seconds"]
        print(f"{variant:>24}: +{extra:8.1f} MB peak  {seconds:6.2f} s  ratio {ratio:.3f}")


if __name__ == "__main__":
    main()
