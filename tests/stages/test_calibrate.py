"""Calibration's pure part: grid points, overlays on a method's config, and the choice on validation."""

from __future__ import annotations

import pytest

from stages.calibrate import CalibrateConfig, choose, chosen_points, overlay, point_label
from unisd.config import load_experiment
from unisd.configtools import ConfigError


def test_points_are_the_cartesian_product_in_grid_order():
    cfg = CalibrateConfig(grid={"lr": [1e-4, 3e-4], "lora.r": [4, 8]})
    assert cfg.points() == [{"lr": 1e-4, "lora.r": 4}, {"lr": 1e-4, "lora.r": 8},
                            {"lr": 3e-4, "lora.r": 4}, {"lr": 3e-4, "lora.r": 8}]
    assert point_label(cfg.points()[1]) == "lr=0.0001,lora.r=8"
    assert not CalibrateConfig().enabled and cfg.enabled


@pytest.mark.parametrize("grid, message", [({"lr": []}, "at least one value"), ({"lr": [1, 1]}, "listed twice")])
def test_bad_grid_is_one_line(grid, message):
    with pytest.raises(ValueError, match=message):
        CalibrateConfig(grid=grid)


def test_overlay_sets_nested_keys_and_refuses_unknown_ones():
    train = {"lr": 1e-5, "lora": {"r": 16, "alpha": 32}}
    assert overlay(train, {"lr": 3e-4, "lora.r": 4}) == {"lr": 3e-4, "lora": {"r": 4, "alpha": 32}}
    assert train["lora"]["r"] == 16  # the input is not modified
    with pytest.raises(ValueError, match=r"calibrate.grid.lora.rank: no training setting 'lora.rank'"):
        overlay(train, {"lora.rank": 4})


def _row(method, point, seed, value, dataset="d"):
    return dict(dataset=dataset, method=method, point=point, seed=seed, metric="accuracy", value=value, n=10)


def test_choice_is_the_best_mean_over_seeds_and_ties_go_to_the_first_point():
    points = [{"lr": 1e-4}, {"lr": 1e-3}]
    a, b = (point_label(p) for p in points)
    rows = [_row("base", "", None, 0.9),  # base is a reference, never chosen, even when it scores highest
            _row("sd", a, 0, 0.2), _row("sd", a, 1, 0.6),  # mean 0.4
            _row("sd", b, 0, 0.5), _row("sd", b, 1, 0.2),  # mean 0.35
            _row("sft", a, 0, 0.3), _row("sft", b, 0, 0.3)]  # tie: the first point
    table = choose(rows, points)
    got = {(r["method"], r["point"]): (r["value"], r["chosen"], r["seeds"]) for r in table.to_pylist()}
    assert got[("sd", a)] == (pytest.approx(0.4), True, 2) and got[("sd", b)][1] is False
    assert got[("sft", a)][1] is True and got[("sft", b)][1] is False
    assert got[("base", "")][1] is False
    assert set(table.column("split").to_pylist()) == {"validation"}
    assert chosen_points(table, points) == {("d", "sd"): {"lr": 1e-4}, ("d", "sft"): {"lr": 1e-4}}
    # the tie rule follows the grid's order, not the values: listing 1e-3 first chooses it
    flipped = choose(rows, points[::-1])
    assert chosen_points(flipped, points[::-1])[("d", "sft")] == {"lr": 1e-3}


def test_choice_is_per_dataset():
    points = [{"lr": 1e-4}, {"lr": 1e-3}]
    a, b = (point_label(p) for p in points)
    rows = [_row("sd", a, 0, 0.1, "x"), _row("sd", b, 0, 0.2, "x"), _row("sd", a, 0, 0.3, "y"), _row("sd", b, 0, 0.2, "y")]
    assert chosen_points(choose(rows, points), points) == {("x", "sd"): {"lr": 1e-3}, ("y", "sd"): {"lr": 1e-4}}


def test_run_config_lays_the_point_over_the_method_preset():
    exp = load_experiment("study", check_model=False)
    cfg = exp.run_config("gkd", 2, {"lr": 5e-4})
    assert cfg.lr == 5e-4 and cfg.seed == 2 and cfg.divergence.kind == "jsd"  # the preset's own fields stay
    assert exp.run_config("gkd", 2).lr == exp.train.lr


def test_a_grid_point_that_breaks_a_method_is_refused_up_front():
    with pytest.raises(ConfigError, match=r"calibrate.grid point lr=-1.0 for sft: methods.sft.lr: must be > 0"):
        load_experiment("study", overrides=["calibrate.grid={lr: [0.0001, -1.0]}"], check_model=False)
    with pytest.raises(ConfigError, match="no training setting 'nope'"):
        load_experiment("study", overrides=["calibrate.grid={nope: [1]}"], check_model=False)


def test_a_calibration_only_report_has_its_section_and_no_scores():
    from stages.report import report_markdown

    points = [{"lr": 1e-4}, {"lr": 1e-3}]
    table = choose([_row("base", "", None, 0.1), _row("sd", "lr=0.0001", 0, 0.2), _row("sd", "lr=0.001", 0, 0.3)],
                   points)
    md = report_markdown("calibrate", [], calibration=table)
    assert "No scores." in md and "## Calibration (validation split)" in md
    assert "| d | sd | lr=0.001 | accuracy | 0.300 | 1 | 10 | ✓ |" in md
