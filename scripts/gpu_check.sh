#!/usr/bin/env bash
# GPU check: a few `sd` and `unisd_star` train steps of a random Qwen2.5-0.5B-shaped model in bf16 with
# SDPA through the real train loop; prints step time, tokens/s, MFU and peak memory (benchmarks/gpu_check.py).
# Offline: the model is random, the tokenizer is the embedded one. Needs CUDA, or `--device cpu --tiny`.
#   scripts/gpu_check.sh                         # on a CUDA machine, under 5 minutes
#   scripts/gpu_check.sh --device cpu --tiny     # smoke test of the same path on CPU
# PYTHON picks the interpreter (default: .venv/bin/python when it exists, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PYTHON" benchmarks/gpu_check.py "$@"
