"""The report's calibration section: every method's validation score at every grid point, and its choice.

One row per (dataset, method, grid point) of the ``calibration`` table (`stages.calibrate`). The scores
come from the validation split only; the chosen point is the one the final (test) runs train with.
"""

from __future__ import annotations

import pyarrow as pa

HEADER = ["dataset", "method", "setting", "metric", "validation score", "seeds", "items", "chosen"]


def calibration_section(table: pa.Table | None) -> tuple[str, str, list[str], list[list[str]]] | None:
    """(heading, note, header, rows) of the section, or None without a calibration."""
    if table is None or table.num_rows == 0:
        return None
    note = ("Each method trained at every point of `calibrate.grid` under the same budget and scored on the "
            "validation split (never test); mean over the calibration seeds. The chosen point (highest mean; "
            "ties: the first in the grid) is what every seed of the final runs trains with. base: the "
            "untouched model on the same items, for reference.")
    rows = [[r["dataset"], r["method"], r["point"] or "–", r["metric"], f"{r['value']:.3f}", str(r["seeds"]),
             str(r["n"]), "✓" if r["chosen"] else ""] for r in table.to_pylist()]
    return "Calibration (validation split)", note, HEADER, rows
