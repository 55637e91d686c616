"""Small text renderings of result tables (the Prefect artifact, the end-of-run summary)."""

from __future__ import annotations

import pyarrow as pa

PRIMARY_METRICS = ("accuracy", "pass@1", "full_acc")


def scores_markdown(tables: list[pa.Table], title: str = "Scores") -> str:
    """A Markdown table: one row per (dataset, model, method) with its primary metric, n and stderr."""
    rows = [r for t in tables for r in t.to_pylist() if r["metric"] in PRIMARY_METRICS]
    rows.sort(key=lambda r: (r["dataset"], r["method"], r["model"]))
    lines = [f"## {title}", "", "| dataset | model | method | metric | value | ± s.e. | n |",
             "|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        se = f"{r['stderr']:.3f}" if r["stderr"] is not None else ""
        lines.append(f"| {r['dataset']} | {r['model']} | {r['method']} | {r['metric']} | "
                     f"{r['value']:.3f} | {se} | {r['n']} |")
    return "\n".join(lines) + "\n"
