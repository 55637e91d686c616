"""The model card (README.md) of an exported checkpoint: Hub-style YAML front matter, then the base model,
the method and its config, the data and its splits, the training budget, the scores and retention
this pipeline measured (with their confidence intervals) and the store key that reproduces it."""

from __future__ import annotations

from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import yaml

from storage.tracking import RETENTION_COLUMNS, retention_metrics

if TYPE_CHECKING:
    from stages.export import CardData

KEY_SETTINGS = ("divergence", "teacher", "agreement", "contrastive", "features", "clip", "sft", "on_policy")


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_num(v) if not isinstance(v, str) else v for v in row) + " |" for row in rows]


def _front_matter(d: CardData) -> list[str]:
    meta = {"library_name": "peft" if d.kind == "adapter" else "transformers", "base_model": d.base_model,
            "pipeline_tag": "text-generation", "tags": ["unisd", "self-distillation", d.method],
            "datasets": [d.dataset]}
    return ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", ""]


def _scores(d: CardData, z: float) -> list[str]:
    pct = round(100 * d.confidence)
    if not d.scores:
        return ["Not evaluated yet: `unisd run` with the same preset evaluates it, then export again.", ""]
    rows = []
    for r in sorted(d.scores, key=lambda r: (r["dataset"], r["metric"])):
        ci = (f"[{r['value'] - z * r['stderr']:.4g}, {r['value'] + z * r['stderr']:.4g}]"
              if r.get("stderr") is not None else "–")
        rows.append([r["dataset"], r["metric"], r["value"], ci, r["n"], r.get("split") or "–",
                     r.get("precision") or "–"])
    lines = _table(["evaluated on", "metric", "value", f"{pct}% CI (normal)", "n", "split", "precision"], rows)
    return lines + ["", ("The CI is value ± z·stderr of the per-example scores (one seed; the experiment report "
                        "pools seeds)."), ""]


def _retention(d: CardData, z: float) -> list[str]:
    if not d.retention:
        return []
    flat = retention_metrics(d.retention, z)
    rows = []
    for dataset in sorted({r["dataset"] for r in d.retention}):
        cells: list[Any] = [dataset]
        for col in RETENTION_COLUMNS:
            base = f"retention/{dataset}/{col}"
            if base not in flat:
                cells.append("–")
                continue
            lo, hi = flat.get(f"{base}_ci_low"), flat.get(f"{base}_ci_high")
            cells.append(f"{flat[base]:.4g}" + (f" [{lo:.4g}, {hi:.4g}]" if lo is not None else ""))
        rows.append(cells + [int(flat[f"retention/{dataset}/n"])])
    pct = round(100 * d.confidence)
    return (["### Retention (against the base model)", "",
             (f"Per-example means with a {pct}% normal CI: ppl_fit = perplexity of the gold answer under this "
             "model, ppl_ret = perplexity of this model's answers under the base model, base_logp = their mean "
             "token log-prob, jsd = mean per-token JSD(base ‖ this model) on them."), ""]
            + _table(["evaluated on", *RETENTION_COLUMNS, "n"], rows) + [""])


def _comparisons(d: CardData) -> list[str]:
    if not d.comparisons:
        return []
    rows = [[r["dataset"], r["baseline"], r["statistic"], r["value"],
             f"[{_num(r.get('ci_low'))}, {_num(r.get('ci_high'))}]", _num(r.get("p_value"), 3), r["n"]]
            for r in sorted(d.comparisons, key=lambda r: (r["dataset"], r["baseline"], r["statistic"]))]
    return (["### Paired comparisons (bootstrap, every seed of this method)", ""]
            + _table(["dataset", "baseline", "statistic", "value", "CI", "p", "n"], rows) + [""])


def _budget(d: CardData) -> list[str]:
    b = d.budget
    lora = b.get("lora") or {}
    lines = [(f"- optimizer steps: {b.get('steps')} × {b.get('batch_size')} prompts "
             f"({b.get('grad_accum')} micro-batch(es) each), lr {_num(b.get('lr'))}"),
             (f"- completion tokens trained on: {b.get('completion_tokens')} "
             f"(rollouts of at most {b.get('max_new_tokens')} new tokens)"),
             f"- weights: {'LoRA r=' + str(lora.get('r')) + ', alpha=' + str(lora.get('alpha')) if lora.get('enabled') else 'full fine-tuning'}",
             (f"- wall time: {_num(b.get('seconds'))} s, peak memory {_num(b.get('peak_mem_mb'))} MB, "
             f"final loss {_num(b.get('final_loss'))}")]
    return lines + [""]


def _load_snippet(d: CardData) -> list[str]:
    if d.kind == "adapter":
        code = ["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer", "",
                'model = AutoPeftModelForCausalLM.from_pretrained("PATH")  # loads the base model, then this adapter',
                'tokenizer = AutoTokenizer.from_pretrained("PATH")']
    else:
        code = ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                'model = AutoModelForCausalLM.from_pretrained("PATH")',
                'tokenizer = AutoTokenizer.from_pretrained("PATH")']
    return ["```python", *code, "```", ""]


def render_card(d: CardData) -> str:
    """The README.md of an exported checkpoint."""
    z = NormalDist().inv_cdf(0.5 + d.confidence / 2)
    cfg = d.train_config
    settings = {k: cfg[k] for k in KEY_SETTINGS if k in cfg}
    kind = "LoRA adapter" if d.kind == "adapter" else "merged model (adapter folded into the base weights)"
    lines = [*_front_matter(d), f"# {d.method} · {d.dataset} · seed {d.seed}", "",
             (f"A {kind} self-distilled with the UniSD pipeline (method `{d.method}`, experiment `{d.experiment}`): "
             "the student samples answers to the plain prompt and learns from the same model reading a "
             "privileged prompt (the reference answer in context), with no stronger teacher."), "",
             "## Base model", "", f"- `{d.base_model}` (weights fingerprint `{d.base_fingerprint}`)", "",
             "## Method", "", f"`{d.method}` — its main settings:", "", "```yaml",
             yaml.safe_dump(settings, sort_keys=False).strip(), "```", "",
             "<details><summary>Full training config</summary>", "", "```yaml",
             yaml.safe_dump(cfg, sort_keys=False).strip(), "```", "", "</details>", "",
             "## Data and splits", "", f"- dataset: `{d.dataset}`, source: "
             + ", ".join(f"`{k}={v}`" for k, v in (d.data.get("source") or {}).items()),
             "- examples per split: " + ", ".join(f"{k} {v}" for k, v in d.data.get("splits", {}).items()),
             ("- trained on the train split; hyperparameters and checkpoints are chosen on validation; scores "
             "below are on the split named in each row"), "",
             "## Training budget", "", *_budget(d),
             "## Results measured by this pipeline", "", *_scores(d, z), *_retention(d, z), *_comparisons(d),
             "## Reproduce", "",
             f"- store key of the training artifact: `{d.train_key}` (`STORE/train/{d.train_key}/`)",
             f"- examples artifact: `{d.data.get('examples_key')}`, contexts: `{d.data.get('contexts_key')}`"
             + (f", negatives: `{d.data.get('negatives_key')}`" if d.data.get("negatives_key") else ""),
             f"- evaluations: {', '.join(f'`{k[:16]}`' for k in d.evaluation_keys) or 'none'}",
             "- the same preset and overrides rerun to the same key (served from the store unless `--force`)", "",
             "## Load", "", *_load_snippet(d)]
    return "\n".join(lines)
