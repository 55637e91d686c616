"""Report figures as PNG bytes (matplotlib, Agg canvas, no pyplot state): training curves and retention.

Every function returns None when its data is absent, so a report never shows empty axes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import pyarrow as pa
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 110
LOSS_TERMS = ("divergence", "contrastive", "features", "sft")
"""Known `train/loss/<term>` keys in panel order; other `train/loss/*` keys follow alphabetically."""
AGREEMENT_MEAN, AGREEMENT_MIN = "train/agreement/weight_mean", "train/agreement/weight_min"
SINGLE_PANELS = (("train/clip/fraction", "clipped fraction"), ("train/kl_to_start", "KL to start (k3)"))
LINESTYLES = ("-", "--", ":", "-.")

Run = tuple[str, int | None, pa.Table]
Estimate = tuple[float, float]
"""(mean, CI half-width); a nan half-width draws no error bar."""


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _series(table: pa.Table) -> dict[str, tuple[list[float], list[float]]]:
    """Per key, (steps, values) sorted by step: the `loss` column and every finite entry of `metrics`."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    rows = sorted(table.select(["step", "loss", "metrics"]).to_pylist(), key=lambda r: r["step"])
    for r in rows:
        for key, value in [("loss", r["loss"]), *(r["metrics"] or [])]:
            if value is not None and math.isfinite(value):
                steps, values = out.setdefault(key, ([], []))
                steps.append(r["step"])
                values.append(value)
    return out


def _panels(keys: set[str]) -> list[tuple[str, tuple[str, ...]]]:
    """(title, keys drawn in it) for every panel with data, in a fixed order."""
    terms = [f"train/loss/{t}" for t in LOSS_TERMS]
    terms += sorted(k for k in keys if k.startswith("train/loss/") and k not in terms)
    panels = [("total loss", ("loss",))]
    panels += [(f"loss: {k.removeprefix('train/loss/')}", (k,)) for k in terms]
    panels.append(("agreement weight: mean (solid), min (faint)", (AGREEMENT_MEAN, AGREEMENT_MIN)))
    panels += [(title, (key,)) for key, title in SINGLE_PANELS]
    return [(title, ks) for title, ks in panels if any(k in keys for k in ks)]


def training_curves(runs: Sequence[Run]) -> bytes | None:
    """One subplot per logged quantity, one line per (method, seed): colour by method, line style by seed."""
    series = [(method, seed, _series(table)) for method, seed, table in runs if table.num_rows]
    if not series:
        return None
    panels = _panels({k for _, _, s in series for k in s})
    methods = list(dict.fromkeys(m for m, _, _ in series))
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (title, keys) in zip(axes, panels):
        for i, (method, seed, s) in enumerate(series):
            colour = f"C{methods.index(method) % 10}"
            style = LINESTYLES[sum(m == method for m, _, _ in series[:i]) % len(LINESTYLES)]
            label = method if seed is None else f"{method} (seed {seed})"
            for j, key in enumerate(k for k in keys if k in s):
                ax.plot(*s[key], color=colour, linestyle=style, alpha=0.35 if key == AGREEMENT_MIN else 1.0,
                        linewidth=1.3, label=label if j == 0 else None)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize=8)
    return _png(fig)


def _err(half: float) -> float | None:
    return half if math.isfinite(half) else None


def score_vs_jsd(points: Sequence[tuple[str, Estimate, Estimate]]) -> bytes | None:
    """Scatter of (mean JSD to the base model, Overall score) per method, with CI bars on both axes."""
    if not points:
        return None
    fig = Figure(figsize=(5.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, (method, (x, xh), (y, yh)) in enumerate(points):
        ax.errorbar(x, y, xerr=_err(xh), yerr=_err(yh), fmt="o", color=f"C{i % 10}", capsize=3)
        ax.annotate(method, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("mean per-token JSD(base ‖ adapted)")
    ax.set_ylabel("Overall (primary metric)")
    ax.grid(alpha=0.3)
    return _png(fig)


def perplexity_bars(rows: Sequence[tuple[str, dict[str, Estimate]]]) -> bytes | None:
    """Grouped bars per method (one bar per perplexity name present), CI half-widths as error bars."""
    names = list(dict.fromkeys(n for _, est in rows for n in est))
    if not names:
        return None
    fig = Figure(figsize=(max(5.0, 1.2 * len(rows) + 2), 4.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        xs = [i + (j - (len(names) - 1) / 2) * width for i, (_, est) in enumerate(rows) if name in est]
        means = [est[name][0] for _, est in rows if name in est]
        halves = [est[name][1] for _, est in rows if name in est]
        ax.bar(xs, means, width=width, color=f"C{j}", label=name)
        bars = [(x, m, h) for x, m, h in zip(xs, means, halves) if math.isfinite(h)]
        if bars:
            ax.errorbar(*zip(*bars), fmt="none", ecolor="black", capsize=3)
    ax.set_xticks(range(len(rows)), [m for m, _ in rows], rotation=20, ha="right")
    ax.set_ylabel("perplexity")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)
