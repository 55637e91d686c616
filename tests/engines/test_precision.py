"""Precision chosen by the machine: `auto` resolves by feature detection, explicit dtypes win, and every
evaluate artifact records which precision and kernel ISA produced it (manifest and `scores` rows)."""

from __future__ import annotations

import json

import pyarrow as pa
import torch

import schemas
from engines.models import ModelConfig, kernel_isa, native_bf16, precision_record, resolve_dtype
from stages import pipeline
from stages.evaluate import EvaluateConfig
from storage import Store


def test_auto_follows_native_bf16_on_this_cpu():
    expected = "bfloat16" if native_bf16("cpu") else "float32"
    assert resolve_dtype("auto", "cpu") == expected
    # the decision matches the CPU's own feature flags, whatever machine runs the test
    flags = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    assert (expected == "bfloat16") == bool(flags)


def test_explicit_dtype_wins():
    for dtype in ("float32", "bfloat16", "float16"):
        assert resolve_dtype(dtype, "cpu") == dtype


def test_default_model_config_is_auto_and_the_default_preset_too():
    from unisd.config import load_experiment

    assert ModelConfig().dtype == "auto"
    assert load_experiment(preset="default").model.dtype == "auto"


def test_precision_record_names_the_kernel_isa():
    rec = precision_record("auto", "cpu")
    assert rec["isa"] == torch.backends.cpu.get_cpu_capability() == kernel_isa("cpu")
    assert rec["dtype"] == resolve_dtype("auto", "cpu") and rec["device"] == "cpu"


def _examples() -> pa.Table:
    rows = [dict(id=f"mc/{i}", dataset="mc", split="test", family="mcqa", prompt=f"Question {i}? A or B",
                 reference="Answer: A", rationale=None, options=["yes", "no"], answer="A", tests=None,
                 meta="{}") for i in range(3)]
    return schemas.conform(rows, schemas.EXAMPLES)


def test_evaluate_manifest_and_scores_name_the_precision(tmp_path, tiny_model_dir):
    store = Store(tmp_path / "store")
    examples = store.materialize(pipeline.INGEST_SPEC, {"t": 1}, {}, lambda ws: {"examples": _examples()})
    cfg = EvaluateConfig(max_new_tokens={"mcqa": 3}, batch_size=2, limit=2)
    model = ModelConfig(path=str(tiny_model_dir), dtype="auto", device="cpu")
    art = pipeline.evaluate(store, model, cfg, examples)
    manifest = json.loads((art.path / "manifest.json").read_text())
    resolved = resolve_dtype("auto", "cpu")
    assert manifest["extra"]["precision"]["dtype"] == resolved
    assert manifest["extra"]["precision"]["isa"] == kernel_isa("cpu")
    assert manifest["config"]["dtype"] == resolved  # the key names the dtype actually used, not "auto"
    rows = art.table("scores").to_pylist()
    assert rows and all(r["precision"] == resolved and r["split"] == "test" and r["eval_limit"] == 2 for r in rows)
    # an explicit dtype is another artifact, told apart in SQL by its precision column
    other = "bfloat16" if resolved == "float32" else "float32"
    art2 = pipeline.evaluate(store, ModelConfig(path=str(tiny_model_dir), dtype=other, device="cpu"), cfg, examples)
    assert art2.key != art.key
    got = store.query("select distinct precision from scores order by 1").column("precision").to_pylist()
    assert got == sorted([resolved, other])
    # greedy outputs are identical between two runs on the same machine
    again = pipeline.evaluate(store, model, cfg, examples, force=True)
    assert again.table("predictions").column("completion").to_pylist() == \
        art.table("predictions").column("completion").to_pylist()
