"""Export a trained checkpoint out of the store as a Hub-style folder with a model card.

`find_checkpoint` picks the train artifact of (method, seed, dataset) whose training config is the
experiment's own (so a stale checkpoint from an older config is never exported by mistake);
`gather` collects what the store measured about it (scores of every evaluation of that checkpoint,
retention, paired comparisons, the data's splits, the training budget); `export` copies the adapter
(LoRA) or the merged model into a new folder that `transformers` / `peft` load as is, with the card
as its ``README.md``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engines.models import ModelConfig, fingerprint
from stages.export.card import render_card
from stages.train import TrainConfig
from stages.train import checkpoint as ckpt
from storage import Artifact, Store, canonical_json

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


@dataclass
class CardData:
    """Everything the model card states, as plain values (see `card.render_card`)."""

    method: str
    seed: int
    dataset: str
    kind: str
    """adapter | merged"""
    base_model: str
    base_fingerprint: str
    train_key: str
    train_config: dict[str, Any]
    experiment: str
    confidence: float
    data: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    scores: list[dict[str, Any]] = field(default_factory=list)
    retention: list[dict[str, Any]] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    evaluation_keys: list[str] = field(default_factory=list)


def _comparable(train: dict) -> dict:
    """A training config without what the device resolves (the key holds the resolved precision)."""
    return {k: v for k, v in train.items() if k != "score_precision"}


def _trained_on(art: Artifact) -> str:
    return ",".join(sorted(set(art.table("train_steps").column("dataset").drop_null().to_pylist())))


def find_checkpoint(store: Store, model: ModelConfig, cfg: TrainConfig, method: str, *,
                    dataset: str | None = None) -> Artifact:
    """The train artifact of `method` with exactly `cfg` (seed included) on `model`; one-line errors name
    what is missing or ambiguous."""
    want = _comparable(json.loads(canonical_json(asdict(cfg))))
    weights = fingerprint(model.path)
    same = [a for a in store.list("train") if a.manifest["config"].get("method") == method
            and a.manifest["config"].get("model") == weights]
    matches = [a for a in same if _comparable(a.manifest["config"]["train"]) == want]
    if dataset is not None:
        matches = [a for a in matches if _trained_on(a) == dataset]
    if not matches:
        other = f"; the store has {len(same)} checkpoint(s) of {method} with other settings" if same else ""
        on = f" on {dataset}" if dataset else ""
        raise FileNotFoundError(f"no checkpoint of {method} (seed {cfg.seed}{on}) for this config in {store.root}"
                                f"{other}; run `unisd run` with the same preset/overrides first")
    if len(matches) > 1:
        names = ", ".join(sorted(_trained_on(a) for a in matches))
        raise ValueError(f"{method} seed {cfg.seed} was trained on several datasets ({names}): pick one with --dataset")
    return matches[0]


def _examples_info(store: Store, train: Artifact) -> dict[str, Any]:
    examples = store.get("ingest", train.manifest["inputs"]["examples"])
    table = examples.table("examples")
    splits = Counter(table.column("split").to_pylist())
    source = examples.manifest["config"].get("ingest", {})
    return {"source": {k: v for k, v in source.items() if v not in (None, {}, [])}, "splits": dict(sorted(splits.items())),
            "examples_key": examples.key, "contexts_key": train.manifest["inputs"].get("contexts"),
            "negatives_key": train.manifest["inputs"].get("negatives")}


def _budget(train: Artifact, cfg: dict) -> dict[str, Any]:
    steps = train.table("train_steps").to_pylist()
    tokens = sum(dict(r["metrics"] or []).get("train/tokens/completion", 0.0) for r in steps)
    return {"steps": len(steps), "batch_size": cfg.get("batch_size"), "grad_accum": cfg.get("grad_accum"),
            "lr": cfg.get("lr"), "completion_tokens": int(tokens),
            "max_new_tokens": (cfg.get("rollout") or {}).get("max_new_tokens"),
            "lora": cfg.get("lora"), "seconds": train.manifest.get("timings", {}).get("seconds"),
            "peak_mem_mb": max((r["peak_mem_mb"] or 0.0 for r in steps), default=None),
            "final_loss": steps[-1]["loss"] if steps else None}


def gather(store: Store, train: Artifact, *, method: str, seed: int, kind: str, base_model: str,
           experiment: str, confidence: float) -> CardData:
    """What the store measured about the checkpoint in `train` (scores, retention, comparisons)."""
    cfg = train.manifest["config"]["train"]
    evals = [a for a in store.list("evaluate") if a.manifest["inputs"].get("checkpoint") == train.key]
    analyses = [a for a in store.list("analyze") if a.manifest["inputs"].get("checkpoint") == train.key]
    eval_keys = {a.key for a in evals}
    comparisons = []
    for a in store.list("compare"):
        if eval_keys & set(a.manifest["inputs"].values()):
            comparisons += [r for r in a.table("comparisons").to_pylist() if r["method"] == method]
    return CardData(
        method=method, seed=seed, dataset=_trained_on(train), kind=kind, base_model=base_model,
        base_fingerprint=train.manifest["config"]["model"], train_key=train.key, train_config=cfg,
        experiment=experiment, confidence=confidence, data=_examples_info(store, train), budget=_budget(train, cfg),
        scores=[r for a in evals for r in a.table("scores").to_pylist()],
        retention=[r for a in analyses for r in a.table("retention").to_pylist()],
        comparisons=comparisons, evaluation_keys=sorted(eval_keys))


def export(store: Store, train: Artifact, data: CardData, out: Path) -> Path:
    """Copy the adapter (``data.kind == "adapter"``) or the merged model of `train` into `out` (a new or
    empty folder, written beside it and renamed into place) with the model card as README.md."""
    source = train.file(ckpt.CHECKPOINT)
    has_adapter = (source / "adapter_config.json").exists()
    if data.kind == "adapter" and not has_adapter:
        raise ValueError(f"checkpoint {train.key[:12]} is a full fine-tune and has no adapter: export it with --merged")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not empty; remove it or choose another folder")
    tmp = out.with_name(f".{out.name}.export-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged = source / ckpt.MERGED
    if data.kind == "merged":
        shutil.copytree(merged, tmp)
    else:
        tmp.mkdir(parents=True)
        for name in ADAPTER_FILES:
            if (source / name).exists():
                shutil.copy2(source / name, tmp / name)
        for f in merged.iterdir():  # the tokenizer travels with the adapter, so the folder is self-contained
            if f.is_file() and ("token" in f.name or f.name in ("chat_template.jinja", "special_tokens_map.json")):
                shutil.copy2(f, tmp / f.name)
    (tmp / "README.md").write_text(render_card(data))
    (tmp / "unisd.json").write_text(json.dumps({"train_key": data.train_key, "method": data.method, "seed": data.seed,
                                                "dataset": data.dataset, "kind": data.kind,
                                                "evaluations": data.evaluation_keys}, indent=1) + "\n")
    if out.exists():
        out.rmdir()
    out.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, out)
    return out
