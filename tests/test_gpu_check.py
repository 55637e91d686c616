"""The GPU check (scripts/gpu_check.sh): its CPU smoke mode runs the real train loop and prints sane
numbers, it refuses in one line without CUDA, its model is Qwen2.5-0.5B's shape, its peak table matches
device names to the right part."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check

COLUMNS = ["method", "step_s", "tok/s", "dec_tok/s", "TFLOP/step", "TFLOP/s", "MFU_spec", "MFU_meas", "peak_mem_MB"]


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout,
                          check=False)


def _table(stdout: str) -> dict[str, dict[str, str]]:
    """The method rows of the printed table, by method, keyed by column name."""
    lines = stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split() == COLUMNS)
    rows = [line.split() for line in lines[head + 1:] if line and not line.startswith("total wall")]
    return {r[0]: dict(zip(COLUMNS, r)) for r in rows}


def _check_row(row: dict[str, str], *, spec: bool) -> None:
    for col in ("step_s", "tok/s", "dec_tok/s", "TFLOP/step", "TFLOP/s", "peak_mem_MB"):
        assert float(row[col]) > 0, (col, row)
    for col in ("MFU_spec", "MFU_meas") if spec else ("MFU_meas",):
        assert 0 < float(row[col].rstrip("%")) <= 100, (col, row)
    if not spec:
        assert row["MFU_spec"] == "n/a"


@pytest.mark.slow  # ~25-35 s on 2 shared cores: imports, two methods through setup/fit
def test_cpu_smoke_prints_every_field_with_sane_values(tmp_path):
    out = tmp_path / "check.json"
    res = _run("--device", "cpu", "--tiny", "--steps", "2", "--batch", "2", "--max-new-tokens", "4",
               "--json", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "device: cpu" in res.stdout
    assert "vocab 151936 (SmolLM2 tokenizer, 49152 ids), attention sdpa" in res.stdout
    assert "bf16 dense peak: not in the table; measured" in res.stdout
    table = _table(res.stdout)
    assert sorted(table) == ["sd", "unisd_star"]
    for row in table.values():
        _check_row(row, spec=False)
    data = json.loads(out.read_text())
    assert data["header"]["measured_peak_tflops"] > 0 and data["header"]["spec_peak_tflops"] is None
    by_method = {r["method"]: r for r in data["results"]}
    for name, r in by_method.items():
        assert r["steps_timed"] == 1  # the first of two steps is the warm-up
        assert r["attention"] == "sdpa" and r["lora_r"] == 64
        assert 0 < r["mfu_measured"] <= 1 and r["mfu_spec"] is None
        assert r["tokens_per_s"] > 0 and r["step_s"] > 0 and r["peak_mem_mb"] > 0
        assert r["mfu_measured"] == pytest.approx(r["achieved_tflops"] / data["header"]["measured_peak_tflops"])
        assert float(table[name]["step_s"]) == pytest.approx(r["step_s"], abs=1e-3)
    # UniSD* scores K = 3 random-donor views, a negative view and the EMA teacher: more model work than sd
    assert by_method["unisd_star"]["tflop_per_step"] > 1.5 * by_method["sd"]["tflop_per_step"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_refuses_in_one_line_without_cuda():
    res = _run()
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "gpu_check: CUDA is not available on this machine (for a CPU smoke test: --device cpu --tiny)"]
    assert res.stdout == ""


def test_cpu_needs_the_tiny_shape():
    assert gpu_check.refusal("cpu", tiny=False) == "gpu_check: --device cpu runs only the tiny shape; add --tiny"
    assert gpu_check.refusal("cpu", tiny=True) is None
    assert "must be cuda or cpu" in gpu_check.refusal("cuda:1", tiny=False)


def test_model_is_qwen25_05b_shape():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**gpu_check.QWEN25_05B)
    assert cfg.rope_parameters["rope_theta"] == 1e6 and cfg.tie_word_embeddings
    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg)
    assert sum(p.numel() for p in model.parameters()) == 494_032_768  # Qwen2.5-0.5B's published count
    tiny = gpu_check.TINY
    assert tiny["vocab_size"] == cfg.vocab_size and tiny["num_hidden_layers"] < cfg.num_hidden_layers


@pytest.mark.parametrize(("name", "peak"), [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.0), ("NVIDIA GH200 480GB", 989.0), ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100 80GB PCIe", 312.0), ("NVIDIA L4", 121.0), ("NVIDIA L40S", 362.0), ("NVIDIA L40", 181.0),
    ("NVIDIA A10", 125.0), ("Tesla T4", None), ("NVIDIA GeForce RTX 3090", None),
])
def test_peak_table_matches_the_most_specific_name(name, peak):
    assert gpu_check.spec_peak_tflops(name) == peak


def test_first_step_is_excluded_and_mfu_divides_by_the_peak():
    steps = [{"seconds": 10.0, "completion_tokens": 8, "decoder_tokens": 100, "flops": 1e12, "loss": 1.0,
              "peak_mem_mb": 5.0},
             {"seconds": 2.0, "completion_tokens": 8, "decoder_tokens": 100, "flops": 4e12, "loss": 0.5,
              "peak_mem_mb": 5.0},
             {"seconds": 2.0, "completion_tokens": 8, "decoder_tokens": 100, "flops": 4e12, "loss": 0.25,
              "peak_mem_mb": 5.0}]
    r = gpu_check.add_mfu(gpu_check.summarize("sd", steps, 5.0), spec=10.0, measured=4.0)
    assert r["steps_timed"] == 2 and r["step_s"] == 2.0 and r["tokens_per_s"] == 4.0
    assert r["achieved_tflops"] == 2.0 and r["mfu_spec"] == 0.2 and r["mfu_measured"] == 0.5
    assert r["loss"] == 0.25
    assert gpu_check.add_mfu(gpu_check.summarize("sd", steps[:1], 5.0), None, 1.0)["mfu_spec"] is None


@pytest.mark.gpu
def test_gpu_check_on_cuda(tmp_path):
    res = _run("--steps", "2", "--batch", "8", "--max-new-tokens", "32", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    table = _table(res.stdout)
    for row in table.values():
        _check_row(row, spec=gpu_check.spec_peak_tflops(torch.cuda.get_device_name()) is not None)
