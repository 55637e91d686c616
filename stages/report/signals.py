"""The report's signal section: per dataset, does the privileged teacher know more than the student?

One row per (dataset, model) of the ``signals`` table (measured on train items before training,
`stages.signals`): the student's and the teacher-with-reference's greedy accuracy and their paired
gain with its interval, the gold reference's mean per-token log-prob under the plain and the privileged
prompt, the answer tokens' log-prob gain (mcqa / math), the student–teacher KL on the student's own
samples and the across-view spread of the agreement statistic.

A dataset is flagged **"SD cannot help here"** when all of these hold (`no_signal`):

1. the teacher with the reference in context does not answer measurably better than the student:
   the lower end of the acc_gain interval is ≤ 0 (acc_gain itself ≤ 0 when there is no interval);
2. the gold reference is no more likely under the privileged prompt: logp_gold_gain ≤ 0;
3. where it is measured (mcqa, math), neither is the gold answer: logp_answer_gain ≤ 0.

The teacher then has no information the student lacks, so distilling towards it has nothing to
transfer; a positive value of any of them leaves the flag off (the signal may still be thin).
"""

from __future__ import annotations

import math

import pyarrow as pa

FLAG = "SD cannot help here"
HEADER = ["dataset", "model", "items", "acc student", "acc teacher+ref", "acc gain [CI]", "log p gold: plain → priv.",
          "log p answer gain [CI]", "KL own samples", "view spread (K)", "flag"]


def _by_dataset(table: pa.Table) -> dict[tuple[str, str], dict[str, dict]]:
    out: dict[tuple[str, str], dict[str, dict]] = {}
    for r in table.to_pylist():
        out.setdefault((r["dataset"], r["model"]), {})[r["statistic"]] = r
    return out


def no_signal(stats: dict[str, dict]) -> bool:
    """The flag rule of the module docstring, on one dataset's rows keyed by statistic."""
    acc = stats.get("acc_gain")
    if acc is not None:
        low = acc["ci_low"] if acc["ci_low"] is not None else acc["value"]
        if low > 0:
            return False
    gains = [stats[s]["value"] for s in ("logp_gold_gain", "logp_answer_gain") if s in stats]
    return bool(gains or acc is not None) and all(g <= 0 for g in gains)


def _value(stats: dict[str, dict], name: str, ci: bool = False, signed: bool = False) -> str:
    r = stats.get(name)
    if r is None or not math.isfinite(r["value"]):
        return "–"
    text = f"{r['value']:+.3f}" if signed else f"{r['value']:.3f}"
    if ci and r["ci_low"] is not None:
        text += f" [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
    return text


def signal_rows(table: pa.Table) -> list[list[str]]:
    """The section's rows, one per (dataset, model), in order of first appearance."""
    rows = []
    for (dataset, model), stats in _by_dataset(table).items():
        n = max(r["n"] for r in stats.values())
        gold = (f"{_value(stats, 'logp_gold_plain')} → {_value(stats, 'logp_gold_privileged')}"
                if "logp_gold_plain" in stats else "–")
        views = int(stats["num_views"]["value"]) if "num_views" in stats else 0
        spread = f"{_value(stats, 'agreement_spread')} ({views})" if "agreement_spread" in stats else f"– ({views})"
        rows.append([dataset, model, str(n), _value(stats, "acc_student"), _value(stats, "acc_teacher_ref"),
                     _value(stats, "acc_gain", ci=True, signed=True), gold,
                     _value(stats, "logp_answer_gain", ci=True, signed=True),
                     _value(stats, "divergence_own_samples"), spread, FLAG if no_signal(stats) else ""])
    return rows


def signal_section(table: pa.Table | None) -> tuple[str, str, list[str], list[list[str]]] | None:
    """(heading, note, header, rows) of the section, or None without signals."""
    if table is None or table.num_rows == 0:
        return None
    splits = ", ".join(sorted(set(table.column("split").to_pylist())))
    note = (f"Measured before training on the base model, on items of the {splits} split (never validation or "
            f"test). Student: the plain prompt; teacher+ref: the privileged prompt with the reference. Gains are "
            f"privileged minus plain, paired per item, with Student-t intervals at the signals.confidence level. log p: mean "
            "per-token log-prob of the gold reference (nats); answer: log-prob of the gold answer tokens after "
            "'Answer:' (mcqa, math). KL own samples: mean per-token KL(student ‖ teacher) on one completion "
            "sampled from the student. View spread: mean per-token std of the sampled token's log-prob across the "
            f"K auxiliary views. Flag '{FLAG}': the acc-gain interval does not lie above 0 and neither log-prob "
            "gain is positive.")
    return "Signals: does the privileged teacher know more?", note, HEADER, signal_rows(table)
