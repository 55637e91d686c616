"""Experiment report: Table 1, retention, paired comparisons, signals and figures as Markdown and self-contained HTML.

A summary cell is the mean over training seeds of one per-seed value ± the half-width of its Student-t
confidence interval, t_{(1+c)/2, n−1} · s / √n (`objectives.stats.mean_ci`); a single value (the base model,
or a single seed) has no interval. Every table says which examples split its numbers come from (the scores'
`split` column; when one report mixes splits, each Table 1 column carries its split).
"""

from __future__ import annotations

import base64
import html
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from objectives.stats import mean_ci
from stages.analyze.compare import group_label as column_label
from stages.report import plots
from stages.report.base import base_sections
from stages.report.plots import Run
from stages.report.calibration import calibration_section
from stages.report.signals import signal_section

PRIMARY_METRICS = ("accuracy", "pass@1", "full_acc")
BASE = "base"
OVERALL = "Overall"
RETENTION_FIELDS = {"ppl_fit": "PPL_fit", "ppl_ret": "PPL_ret", "jsd": "JSD", "base_logp": "base log p"}
FIGURES = {
    "training.png": "Training curves, one line per (method, seed)",
    "score_vs_jsd.png": "Overall score against mean per-token JSD to the base model",
    "perplexity.png": "Mean PPL_fit (gold completions) and PPL_ret (own completions under the base model)",
}

Scores = pa.Table | Sequence[pa.Table]


@dataclass(frozen=True)
class Cell:
    """Mean over seeds, CI half-width (nan: one value, no interval) and the number of seeds behind it."""

    mean: float
    half: float
    n_seeds: int

    def text(self) -> str:
        return _num(self.mean) if math.isnan(self.half) else f"{_num(self.mean)} ± {_num(self.half)}"


def _num(x: float) -> str:
    return f"{x:.3f}" if abs(x) < 1000 else f"{x:.4g}"


def _finite(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _cell(values: Sequence[float | None], confidence: float) -> Cell | None:
    """mean_ci over the finite values; None when there is none."""
    finite = _finite(values)
    if not finite:
        return None
    mean, half = mean_ci(finite, confidence)
    return Cell(mean, half, len(finite))


def _score_rows(scores: Scores) -> list[dict]:
    return [r for t in ([scores] if isinstance(scores, pa.Table) else scores) for r in t.to_pylist()]


def _ordered(methods: Sequence[str]) -> list[str]:
    """Distinct methods, the base model first, then in order of first appearance."""
    seen = list(dict.fromkeys(methods))
    return [BASE] * (BASE in seen) + [m for m in seen if m != BASE]


def primary_metrics(scores: Scores) -> dict[str, str]:
    """Per evaluated dataset (first-appearance order), the first of PRIMARY_METRICS it was scored with."""
    return _primary(_score_rows(scores))


def _primary(rows: list[dict]) -> dict[str, str]:
    present: dict[str, set[str]] = {}
    for r in rows:
        present.setdefault(r["dataset"], set()).add(r["metric"])
    return {d: next(m for m in PRIMARY_METRICS if m in ms)
            for d, ms in present.items() if any(m in ms for m in PRIMARY_METRICS)}


def _seed_values(rows: list[dict]) -> tuple[dict[str, tuple[str, str | None]],
                                            dict[str, dict[str, dict[int | None, float]]]]:
    """(column label → (evaluated dataset, split), method → label → seed → value) over primary-metric rows.

    Columns come from the trained checkpoints, in-distribution ones first, each group in order of first
    appearance; a dataset only the base model was evaluated on gets its own column. The base model fills every column whose evaluated dataset it was scored on.
    """
    mixed = len({r.get("split") for r in rows}) > 1

    def where(r: dict) -> tuple[str, str | None]:
        return r["dataset"], r.get("split")

    def label_of(r: dict) -> str:
        return column_label(r["dataset"], r["trained_on"]) + (f" [{r.get('split')}]" if mixed else "")

    trained = {where(r) for r in rows if r["method"] != BASE}
    columns: dict[str, tuple[str, str | None]] = {}
    for r in rows:
        if r["method"] != BASE or where(r) not in trained:
            columns.setdefault(label_of(r), where(r))
    columns = dict(sorted(columns.items(), key=lambda kv: "→" in kv[0]))  # in-distribution columns first
    values: dict[str, dict[str, dict[int | None, float]]] = {}
    for r in rows:
        labels = [c for c, w in columns.items() if w == where(r)] if r["method"] == BASE else [label_of(r)]
        for label in labels:
            seeds = values.setdefault(r["method"], {}).setdefault(label, {})
            if seeds.get(r["seed"], r["value"]) != r["value"]:
                raise ValueError(f"two different {r['metric']} scores for method {r['method']!r}, "
                                 f"column {label!r}, seed {r['seed']}")
            seeds[r["seed"]] = r["value"]
    return columns, values


def summary_table(scores: Scores, confidence: float = 0.95) -> tuple[list[str], list[dict]]:
    """Table 1: (column labels + ["Overall"], one row per method, base first).

    A row is ``{"method": m, label: Cell | None, ..., "Overall": Cell | None}``. Each dataset contributes its
    primary metric; a cell is mean ± CI over the seeds' values. Overall: per seed s present in all of the row's
    columns C, o_s = (1/|C|) Σ_{c∈C} v_{c,s}; then mean ± CI over those seeds.
    """
    rows = _score_rows(scores)
    metric = _primary(rows)
    columns, values = _seed_values([r for r in rows if metric.get(r["dataset"]) == r["metric"]])
    out = []
    for method in _ordered([r["method"] for r in rows if r["method"] in values]):
        cols = values[method]
        row: dict = {"method": method}
        row.update({c: _cell(list(cols[c].values()), confidence) if c in cols else None for c in columns})
        common = set.intersection(*(set(s) for s in cols.values()))
        ordered = sorted(common, key=lambda s: (s is None, s or 0))
        row[OVERALL] = _cell([sum(s[seed] for s in cols.values()) / len(cols) for seed in ordered], confidence)
        out.append(row)
    return [*columns, OVERALL], out


def retention_summary(retention: pa.Table | None, confidence: float = 0.95, *,
                      by_dataset: bool = False) -> list[dict]:
    """One row per method (per method and dataset column with `by_dataset`):
    ``{"method", "dataset", "n_examples", "ppl_fit", "ppl_ret", "jsd", "base_logp"}``.

    For each field, per seed the mean over that seed's examples (null and non-finite values skipped;
    every evaluated dataset pooled unless `by_dataset`), then a Cell of mean ± CI over seeds (None when
    no value). `dataset` is the column label of Table 1, or None when pooled.
    """
    if retention is None:
        return []
    per: dict[tuple[str, str | None], dict[int | None, list[dict]]] = {}
    for r in retention.to_pylist():
        label = column_label(r["dataset"], r["trained_on"]) if by_dataset else None
        per.setdefault((r["method"], label), {}).setdefault(r["seed"], []).append(r)
    labels = list(dict.fromkeys(label for _, label in per))
    out = []
    for method in _ordered(list(dict.fromkeys(m for m, _ in per))):
        for label in labels:
            if (method, label) not in per:
                continue
            runs = per[(method, label)]
            row: dict = {"method": method, "dataset": label, "n_examples": sum(len(ex) for ex in runs.values())}
            for field in RETENTION_FIELDS:
                finite = [_finite([e[field] for e in ex]) for ex in runs.values()]
                row[field] = _cell([sum(v) / len(v) for v in finite if v], confidence)
            out.append(row)
    return out


@dataclass(frozen=True)
class _Section:
    heading: str
    note: str
    header: list[str]
    rows: list[list[str]]
    text_columns: int = 1
    """Leading columns holding names (left-aligned); the rest are numbers (right-aligned)."""


def _text(cell: Cell | None) -> str:
    return "–" if cell is None else cell.text()


def _seeds_phrase(rows: list[dict], columns: list[str]) -> str:
    counts = sorted({c.n_seeds for r in rows if r["method"] != BASE for k in columns if (c := r[k])})
    return f"{counts[0]} seed(s)" if len(counts) == 1 else f"{counts[0]}–{counts[-1]} seeds" if counts else "seeds"


def split_phrase(scores: Scores) -> str:
    """Which examples split the scores come from: "the test split", "the validation and test splits"."""
    splits = sorted({r.get("split") or "unrecorded" for r in _score_rows(scores)})
    if not splits:  # e.g. a calibration-only report: nothing was scored on a final split
        return "no split (nothing scored)"
    return f"the {splits[0]} split" if len(splits) == 1 else f"the {', '.join(splits[:-1])} and {splits[-1]} splits"


def _sections(scores: Scores, retention: pa.Table | None, comparisons: pa.Table | None,
              confidence: float, signals: pa.Table | None = None, predictions: Scores | None = None,
              calibration: pa.Table | None = None) -> list[_Section]:
    level = f"{confidence:.0%}"
    columns, rows = summary_table(scores, confidence)
    metrics = "; ".join(f"{d}: {m}" for d, m in primary_metrics(scores).items())
    split = split_phrase(scores)
    note = (f"Scores on {split} ([split] after a column name when several are shown). "
            f"Primary metric per dataset ({metrics}). Cells: mean ± {level} CI half-width (Student t) over "
            f"{_seeds_phrase(rows, columns)}; the base model has a single value. a→b: trained on a, evaluated "
            f"on b. Overall: per seed, the mean over the row's columns, then mean ± CI over seeds."
            if rows else "No scores.")
    out = [_Section("Table 1: results", note, ["method", *columns],
                    [[r["method"], *(_text(r[c]) for c in columns)] for r in rows])]
    out += [_Section(*section, text_columns=k) for section, k in base_sections(predictions, scores, confidence)]
    ret = retention_summary(retention, confidence, by_dataset=True)
    if ret:
        out.append(_Section(
            "Retention", f"On the examples of {split} that Table 1 scores. Per seed, the mean over examples; then mean ± {level} CI over seeds. PPL_fit: "
            "perplexity of gold completions under the adapted model; PPL_ret: of the adapted model's "
            "completions under the base model; JSD: per-token JSD(base ‖ adapted), ≤ ln 2.",
            ["method", "dataset", "examples", *RETENTION_FIELDS.values()],
            [[r["method"], r["dataset"], str(r["n_examples"]), *(_text(r[f]) for f in RETENTION_FIELDS)]
             for r in ret], text_columns=2))
    if comparisons is not None and comparisons.num_rows:
        def opt(x: float | None, fmt: str) -> str:
            return "–" if x is None else format(x, fmt)
        out.append(_Section(
            "Paired comparisons",
            f"Method against baseline on the examples of {split} both answered (each averaged over shared seeds). "
            "CI: bootstrap over examples; p: paired sign-flip test (accuracy only).",
            ["dataset", "method", "baseline", "statistic", "value", "CI", "p", "n"],
            [[r["dataset"], r["method"], r["baseline"], r["statistic"], f"{r['value']:+.3f}",
              "–" if r["ci_low"] is None else f"[{r['ci_low']:+.3f}, {opt(r['ci_high'], '+.3f')}]",
              opt(r["p_value"], ".3g"), str(r["n"])] for r in comparisons.to_pylist()],
            text_columns=4))
    if (section := signal_section(signals)) is not None:
        out.append(_Section(*section, text_columns=2))
    if (section := calibration_section(calibration)) is not None:
        out.append(_Section(*section, text_columns=4))
    return out


def _md_table(s: _Section) -> list[str]:
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
    align = ["---" if i < s.text_columns else "---:" for i in range(len(s.header))]
    return [row(s.header), "|" + "|".join(align) + "|", *(row(r) for r in s.rows)]


def report_markdown(title: str, scores: Scores, *, retention: pa.Table | None = None,
                    comparisons: pa.Table | None = None, figures: Mapping[str, str] | None = None,
                    confidence: float = 0.95, signals: pa.Table | None = None,
                    predictions: Scores | None = None, calibration: pa.Table | None = None) -> str:
    """The report as Markdown; ``figures`` maps a caption to an image path relative to the report;
    ``predictions`` (optional) adds the base model's section (`stages.report.base`)."""
    lines = [f"# {title}", ""]
    for s in _sections(scores, retention, comparisons, confidence, signals, predictions, calibration):
        lines += [f"## {s.heading}", "", s.note, ""]
        lines += [*_md_table(s), ""] if s.rows else []
    if figures:
        lines += ["## Figures", ""]
        for caption, path in figures.items():
            lines += [f"![{caption}]({path})", "", f"*{caption}*", ""]
    return "\n".join(lines)


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d2430;
  max-width:1150px;margin:1.5rem auto;padding:0 1rem;line-height:1.45}
h1{border-bottom:3px solid #2f5d8a;padding-bottom:.3rem}
h2{color:#2f5d8a;margin-top:2rem}
table{border-collapse:collapse;margin:.6rem 0 1.2rem;font-size:.92rem}
th,td{border:1px solid #c9d3df;padding:.35rem .7rem}
th{background:#2f5d8a;color:#fff;text-align:left}
tbody tr:nth-child(even){background:#eef3f8}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.note{color:#4c5866;font-size:.88rem;max-width:60rem}
figure{margin:1rem 0;padding:.6rem;border:1px solid #dde3ea;background:#f7f9fb}
figure img{max-width:100%;height:auto;display:block}
figcaption{color:#4c5866;font-size:.88rem;margin-top:.4rem}
"""


def _html_table(s: _Section) -> str:
    def row(cells: list[str], tag: str) -> str:
        return "<tr>" + "".join(f'<{tag}{"" if i < s.text_columns else " class=num"}>{html.escape(c)}</{tag}>'
                                for i, c in enumerate(cells)) + "</tr>"
    body = "\n".join(row(r, "td") for r in s.rows)
    return f"<table>\n<thead>{row(s.header, 'th')}</thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def report_html(title: str, scores: Scores, *, retention: pa.Table | None = None,
                comparisons: pa.Table | None = None, figures: Mapping[str, bytes] | None = None,
                confidence: float = 0.95, signals: pa.Table | None = None, predictions: Scores | None = None,
                calibration: pa.Table | None = None) -> str:
    """The report as one self-contained HTML page: inline CSS, ``figures`` (caption → PNG) as data URIs."""
    parts = [f"<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n<title>{html.escape(title)}</title>",
             f"<style>{CSS}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>"]
    for s in _sections(scores, retention, comparisons, confidence, signals, predictions, calibration):
        parts += [f"<h2>{html.escape(s.heading)}</h2>", f"<p class=note>{html.escape(s.note)}</p>"]
        parts += [_html_table(s)] if s.rows else []
    if figures:
        parts.append("<h2>Figures</h2>")
        for caption, png in figures.items():
            data = base64.b64encode(png).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    return "\n".join([*parts, "</body>\n</html>\n"])


def render_figures(scores: Scores, train_steps: Sequence[Run] = (), retention: pa.Table | None = None,
                   confidence: float = 0.95) -> dict[str, bytes]:
    """File name (a key of FIGURES) → PNG bytes, for every figure whose data is present."""
    overall = {r["method"]: r[OVERALL] for r in summary_table(scores, confidence)[1] if r[OVERALL]}
    ret = retention_summary(retention, confidence)
    points = [(r["method"], (r["jsd"].mean, r["jsd"].half), (overall[r["method"]].mean, overall[r["method"]].half))
              for r in ret if r["jsd"] and r["method"] in overall]
    bars = [(r["method"], {RETENTION_FIELDS[f]: (r[f].mean, r[f].half) for f in ("ppl_fit", "ppl_ret") if r[f]})
            for r in ret]
    pngs = {"training.png": plots.training_curves(train_steps), "score_vs_jsd.png": plots.score_vs_jsd(points),
            "perplexity.png": plots.perplexity_bars([b for b in bars if b[1]])}
    return {name: png for name, png in pngs.items() if png is not None}


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(out_dir: Path, *, title: str, scores: Scores, train_steps: Sequence[Run] = (),
                 retention: pa.Table | None = None, comparisons: pa.Table | None = None,
                 confidence: float = 0.95, signals: pa.Table | None = None,
                 predictions: Scores | None = None, calibration: pa.Table | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and ``figures/*.png`` under ``out_dir``; return them by relative name.

    Everything is rendered in memory before the first write and each file is replaced atomically, so a
    failure leaves the previous report (or none) rather than a half-written one. Figures this run does not
    produce are removed so the directory matches the report.
    """
    out_dir = Path(out_dir)
    pngs = render_figures(scores, train_steps, retention, confidence)
    kwargs = {"retention": retention, "comparisons": comparisons, "confidence": confidence, "signals": signals,
              "predictions": predictions, "calibration": calibration}
    md = report_markdown(title, scores, figures={FIGURES[n]: f"figures/{n}" for n in pngs}, **kwargs)
    page = report_html(title, scores, figures={FIGURES[n]: png for n, png in pngs.items()}, **kwargs)
    written = {}
    for name, png in pngs.items():
        atomic_write(out_dir / "figures" / name, png)
        written[f"figures/{name}"] = out_dir / "figures" / name
    for name in FIGURES.keys() - pngs.keys():
        (out_dir / "figures" / name).unlink(missing_ok=True)
    for name, text in (("report.md", md), ("report.html", page)):
        atomic_write(out_dir / name, text.encode("utf-8"))
        written[name] = out_dir / name
    return written
