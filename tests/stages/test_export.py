"""`unisd export`: a trained checkpoint leaves the store as a folder that plain transformers (merged) and
peft (adapter) load, with a model card naming its scores, retention and store key."""

from __future__ import annotations

import json
from collections import Counter

import torch

from storage import Store
from unisd.cli import main


def _export(t, out, *extra) -> int:
    return main(["export", "sd", "--seed", "0", "--out", str(out), "--preset", "smoke_train",
                 f"store={t.root / 'store'}", *t.overrides, *extra])


def test_merged_export_loads_in_transformers_and_card_names_scores(trained, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, train, ev = trained.root, trained.train, trained.evaluation
    out = tmp_path / "merged"
    assert _export(trained, out, "--merged") == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("2 + 2 =", return_tensors="pt").input_ids
    assert model(ids).logits.shape[-1] == model.config.vocab_size
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert train.key in card and "## Results measured by this pipeline" in card
    for row in ev.table("scores").to_pylist():
        assert f"| math | {row['metric']} | {row['value']:.4g} |" in card
    assert "95% CI" in card and "### Retention" in card and "jsd" in card
    assert "### Paired comparisons" in card and "| math | base |" in card
    examples = Store(root / "store").get("ingest", train.manifest["inputs"]["examples"]).table("examples")
    splits = sorted(Counter(examples.column("split").to_pylist()).items())
    assert "- examples per split: " + ", ".join(f"{k} {v}" for k, v in splits) in card
    assert "- completion tokens trained on: " in card and "1 × 2 prompts" in card
    assert json.loads((out / "unisd.json").read_text())["train_key"] == train.key


def test_adapter_export_loads_in_peft_with_the_trained_weights(trained, tmp_path):
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    train = trained.train
    out = tmp_path / "adapter"
    assert _export(trained, out) == 0
    assert (out / "adapter_config.json").exists() and (out / "README.md").read_text().startswith(
        "---\nlibrary_name: peft\n")
    peft_model = AutoPeftModelForCausalLM.from_pretrained(out)
    merged = AutoModelForCausalLM.from_pretrained(train.file("checkpoint/merged"))
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        a = peft_model(ids).logits
        b = merged(ids).logits
    assert torch.allclose(a, b, atol=1e-4)  # the adapter over its base is the merged model
    base_path = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), out)
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, b, atol=1e-4)


def test_export_errors_are_one_line(trained, tmp_path, capsys):
    out = tmp_path / "x"
    out.mkdir()
    (out / "keep").write_text("mine")
    assert _export(trained, out) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert _export(trained, tmp_path / "y", "train.lr=0.5") == 2  # a config never trained: no such checkpoint
    err = capsys.readouterr().err
    assert "no checkpoint of sd (seed 0) for this config" in err and "1 checkpoint(s) of sd with other settings" in err
    assert (out / "keep").read_text() == "mine" and not (tmp_path / "y").exists()
