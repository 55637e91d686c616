"""The experiment report: Table 1 numbers against hand-computed t intervals, figures, HTML and atomic writes."""

from __future__ import annotations

import base64
import math
import os
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from scipy import stats as sps

import schemas
from stages import report

SFT_ID = {0: 0.40, 1: 0.46, 2: 0.43}  # sft on medmcqa, evaluated on medmcqa
SFT_OOD = {0: 0.12, 1: 0.15, 2: 0.11}  # sft trained on medmcqa, evaluated on humaneval
UNI_ID = {0: 0.50, 1: 0.52, 2: 0.47}
UNI_OOD = {0: 0.20, 1: 0.16}  # seed 2 was not evaluated out of distribution


def _score(dataset, method, metric, value, seed=None, trained_on=None):
    return {"dataset": dataset, "model": "tiny", "method": method, "metric": metric, "value": value, "n": 100,
            "stderr": 0.01, "seed": seed, "trained_on": trained_on}


def _scores():
    tables = [schemas.conform([_score("medmcqa", "base", "accuracy", 0.30), _score("medmcqa", "base", "f1", 0.9)],
                              schemas.SCORES),
              schemas.conform([_score("humaneval", "base", "pass@1", 0.10)], schemas.SCORES)]
    for method, ind, ood in (("sft", SFT_ID, SFT_OOD), ("unisd", UNI_ID, UNI_OOD)):
        for seed, v in ind.items():
            tables.append(schemas.conform([_score("medmcqa", method, "accuracy", v, seed, "medmcqa")], schemas.SCORES))
        for seed, v in ood.items():
            tables.append(schemas.conform([_score("humaneval", method, "pass@1", v, seed, "medmcqa"),
                                           _score("humaneval", method, "pass@10", 0.9, seed, "medmcqa")],
                                          schemas.SCORES))
    return tables


def _t_ci(values, confidence=0.95):
    x = np.asarray(values, dtype=float)
    return x.mean(), sps.t.ppf((1 + confidence) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)


def _retention():
    rows = []
    rng = np.random.default_rng(0)
    for method, seeds in (("base", [None]), ("sft", [0, 1, 2]), ("unisd", [0, 1, 2])):
        for seed in seeds:
            for i in range(4):
                jsd = 0.0 if method == "base" else float(rng.uniform(0.01, 0.2))
                logp = float(-rng.uniform(0.5, 1.5))
                rows.append({"id": f"q{i}", "dataset": "medmcqa", "method": method, "seed": seed,
                             "trained_on": None if method == "base" else "medmcqa",
                             "ppl_fit": None if i == 3 else float(rng.uniform(2, 8)), "ppl_ret": math.exp(-logp),
                             "base_logp": logp, "jsd": jsd, "num_tokens": 20})
    return schemas.conform(rows, schemas.RETENTION)


def _comparisons():
    return schemas.conform([
        {"dataset": "medmcqa", "method": "unisd", "baseline": "sft", "statistic": "accuracy_diff", "value": 0.067,
         "ci_low": 0.01, "ci_high": 0.12, "p_value": 0.0213, "n": 300},
        {"dataset": "overall", "method": "unisd", "baseline": "sft", "statistic": "jsd_lower", "value": 0.61,
         "ci_low": None, "ci_high": None, "p_value": None, "n": 300},
    ], schemas.COMPARISONS)


def _train_steps():
    runs = []
    for method, seeds in (("sft", [0, 1]), ("unisd", [0, 1])):
        for seed in seeds:
            rows = []
            for step in range(1, 11):
                m = {"train/loss/divergence": 1.0 / step + 0.01 * seed, "train/kl_to_start": 0.001 * step}
                if method == "unisd":
                    m |= {"train/loss/contrastive": 0.5 / step, "train/agreement/weight_mean": 0.8 - 0.01 * step,
                          "train/agreement/weight_min": 0.3 + 0.01 * step, "train/clip/fraction": 0.1}
                else:
                    m |= {"train/loss/sft": 2.0 / step}
                rows.append({"step": step, "method": method, "dataset": "medmcqa", "metrics": list(m.items()),
                             "loss": sum(v for k, v in m.items() if k.startswith("train/loss/")), "lr": 1e-4})
            runs.append((method, seed, schemas.conform(rows, schemas.TRAIN_STEPS)))
    return runs


def test_summary_columns_rows_and_primary_metric():
    columns, rows = report.summary_table(_scores())
    assert columns == ["medmcqa", "medmcqa→humaneval", "Overall"]
    assert [r["method"] for r in rows] == ["base", "sft", "unisd"]
    assert report.primary_metrics(_scores()) == {"medmcqa": "accuracy", "humaneval": "pass@1"}


def test_summary_cells_match_student_t():
    _, rows = report.summary_table(_scores())
    sft = rows[1]
    for column, values in (("medmcqa", SFT_ID), ("medmcqa→humaneval", SFT_OOD)):
        mean, half = _t_ci(list(values.values()))
        assert sft[column].mean == pytest.approx(mean)
        assert sft[column].half == pytest.approx(half)
        assert sft[column].n_seeds == 3
    mean, half = _t_ci(list(UNI_ID.values()), confidence=0.9)
    cell = report.summary_table(_scores(), confidence=0.9)[1][2]["medmcqa"]
    assert (cell.mean, cell.half) == (pytest.approx(mean), pytest.approx(half))


def test_base_has_single_value_without_ci_in_every_column():
    _, rows = report.summary_table(_scores())
    base = rows[0]
    assert base["medmcqa"].mean == 0.30 and math.isnan(base["medmcqa"].half) and base["medmcqa"].n_seeds == 1
    assert base["medmcqa→humaneval"].mean == 0.10  # the base model's own humaneval score
    assert base["Overall"].mean == pytest.approx(0.20) and math.isnan(base["Overall"].half)


def test_overall_averages_columns_per_seed_then_over_common_seeds():
    _, rows = report.summary_table(_scores())
    sft_per_seed = [(SFT_ID[s] + SFT_OOD[s]) / 2 for s in (0, 1, 2)]
    mean, half = _t_ci(sft_per_seed)
    assert (rows[1]["Overall"].mean, rows[1]["Overall"].half) == (pytest.approx(mean), pytest.approx(half))
    uni_per_seed = [(UNI_ID[s] + UNI_OOD[s]) / 2 for s in (0, 1)]  # seed 2 lacks the OOD column
    mean, half = _t_ci(uni_per_seed)
    overall = rows[2]["Overall"]
    assert (overall.mean, overall.half, overall.n_seeds) == (pytest.approx(mean), pytest.approx(half), 2)
    assert rows[2]["medmcqa"].n_seeds == 3


def test_dataset_only_the_base_model_saw_gets_its_own_column():
    tables = _scores() + [schemas.conform([_score("gsm8k", "base", "full_acc", 0.05),
                                           _score("gsm8k", "base", "accuracy", 0.07)], schemas.SCORES)]
    columns, rows = report.summary_table(tables)
    assert columns == ["medmcqa", "gsm8k", "medmcqa→humaneval", "Overall"]
    assert rows[0]["gsm8k"].mean == 0.07  # accuracy precedes full_acc in PRIMARY_METRICS
    assert rows[1]["gsm8k"] is None
    assert rows[0]["Overall"].mean == pytest.approx((0.30 + 0.07 + 0.10) / 3)


def test_conflicting_scores_for_one_seed_are_rejected():
    dup = schemas.conform([_score("medmcqa", "sft", "accuracy", 0.99, 0, "medmcqa")], schemas.SCORES)
    with pytest.raises(ValueError, match="sft"):
        report.summary_table([*_scores(), dup])


def test_retention_summary_is_seed_mean_of_example_means():
    table = _retention()
    rows = {r["method"]: r for r in report.retention_summary(table)}
    assert list(rows) == ["base", "sft", "unisd"]
    recs = [r for r in table.to_pylist() if r["method"] == "sft"]
    fit = [np.mean([r["ppl_fit"] for r in recs if r["seed"] == s and r["ppl_fit"] is not None]) for s in (0, 1, 2)]
    mean, half = _t_ci(fit)
    assert (rows["sft"]["ppl_fit"].mean, rows["sft"]["ppl_fit"].half) == (pytest.approx(mean), pytest.approx(half))
    assert rows["sft"]["n_examples"] == 12
    assert rows["base"]["jsd"].mean == 0.0 and math.isnan(rows["base"]["jsd"].half)


def test_markdown_holds_table_1_retention_and_comparisons():
    md = report.report_markdown("Exp", _scores(), retention=_retention(), comparisons=_comparisons(),
                                figures={"Training curves": "figures/training.png"})
    assert md.startswith("# Exp\n")
    assert "| method | medmcqa | medmcqa→humaneval | Overall |" in md
    assert "| base | 0.300 | 0.100 | 0.200 |" in md
    mean, half = _t_ci(list(SFT_ID.values()))
    assert f"| sft | {mean:.3f} ± {half:.3f} |" in md
    assert "| medmcqa | unisd | sft | accuracy_diff | +0.067 | [+0.010, +0.120] | 0.0213 | 300 |" in md
    assert "| overall | unisd | sft | jsd_lower | +0.610 | – | – | 300 |" in md
    assert "## Retention" in md and "![Training curves](figures/training.png)" in md


def _assert_not_flat(path: Path):
    assert path.stat().st_size > 0
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.01


def test_write_report_files_figures_and_self_contained_html(tmp_path):
    paths = report.write_report(tmp_path, title="Exp <1>", scores=_scores(), train_steps=_train_steps(),
                                retention=_retention(), comparisons=_comparisons())
    assert set(paths) == {"report.md", "report.html", "figures/training.png", "figures/score_vs_jsd.png",
                          "figures/perplexity.png"}
    for name, path in paths.items():
        assert path == tmp_path / name and path.is_file()
    pngs = [p for n, p in paths.items() if n.endswith(".png")]
    for p in pngs:
        _assert_not_flat(p)
    page = paths["report.html"].read_text()
    assert "<title>Exp &lt;1&gt;</title>" in page
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.IGNORECASE)
    assert "<link" not in page and "<script" not in page
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(p.read_bytes() for p in pngs)
    assert "medmcqa→humaneval" in page and "<table>" in page
    md = paths["report.md"].read_text()
    assert all(f"(figures/{p.name})" in md for p in pngs)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_absent_data_skips_figures_and_removes_stale_ones(tmp_path):
    report.write_report(tmp_path, title="t", scores=_scores(), retention=_retention())
    assert (tmp_path / "figures" / "score_vs_jsd.png").exists()
    paths = report.write_report(tmp_path, title="t", scores=_scores())
    assert set(paths) == {"report.md", "report.html"}
    assert not list((tmp_path / "figures").glob("*.png"))
    assert "Figures" not in paths["report.md"].read_text() and "data:image" not in paths["report.html"].read_text()


def test_failed_render_keeps_previous_report_and_leaves_no_temp_files(tmp_path, monkeypatch):
    report.write_report(tmp_path, title="first", scores=_scores())
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def boom(*args, **kwargs):
        raise RuntimeError("render failed")

    monkeypatch.setattr(report, "report_html", boom)
    with pytest.raises(RuntimeError):
        report.write_report(tmp_path, title="second", scores=_scores(), retention=_retention())
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "report.md"
    report.atomic_write(target, b"old")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(report.os, "replace", fail)
    with pytest.raises(OSError):
        report.atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.integration
def test_html_renders_in_headless_chromium(tmp_path):
    if not CHROMIUM.exists():
        if os.environ.get("UNISD_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"UNISD_REQUIRE_CHROMIUM=1 but {CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} not installed")
    paths = report.write_report(tmp_path / "out", title="Screenshot", scores=_scores(), train_steps=_train_steps(),
                                retention=_retention(), comparisons=_comparisons())
    shot = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--window-size=1200,2000", f"--screenshot={shot}",
             paths["report.html"].resolve().as_uri()],
            check=False, capture_output=True, text=True, timeout=180)
    assert shot.is_file() and shot.stat().st_size > 0, f"no screenshot (rc={proc.returncode}): {proc.stderr[-2000:]}"
    img = imread(shot)[..., :3]
    assert img.shape[:2] == (2000, 1200)
    assert img.std() > 0.1
    non_white = (img < 0.95).any(axis=-1).mean()
    assert non_white > 0.05, f"only {non_white:.1%} of the screenshot is non-white"
    header_blue = (np.abs(img - np.array([0x2F, 0x5D, 0x8A]) / 255).max(axis=-1) < 0.03).mean()
    assert header_blue > 0.002, "the inline CSS (blue table headers) was not applied"
