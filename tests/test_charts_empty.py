"""Charts with nothing to draw say so instead of showing an empty legend, and no library warning leaks: a short
backtest (one session, every 60 minutes) has no reliability bin of DIAGRAM_MIN_BIN outcomes and no toy-rule
trade."""
from __future__ import annotations

import warnings

import pytest
from matplotlib.figure import Figure

from evaluation import baselines
from evaluation.charts import _legend_or_say
from evaluation.evaluate import DIAGRAM_MIN_BIN
from support.backtest_api import bt, settings  # the fixture sim is in conftest.py


def test_an_empty_chart_says_why_and_a_full_one_keeps_its_legend():
    ax = Figure().add_subplot()
    _legend_or_say(ax, "no data yet")
    assert ax.get_legend() is None and [t.get_text() for t in ax.texts] == ["no data yet"]
    ax = Figure().add_subplot()
    ax.plot([0, 1], [0, 1], label="line")
    _legend_or_say(ax, "no data yet")
    assert ax.get_legend() is not None and len(ax.texts) == 0


def test_a_short_backtest_writes_its_charts_without_warnings(sim, tmp_path):  # noqa: F811
    s = settings(start="2025-03-10", end="2025-03-10", every=60, rule_p_up=1.0)
    records = bt.run_walk_forward(sim, s, [baselines.RandomWalk()], tmp_path, progress=False)
    table = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = bt.build_report(records, s, tmp_path, plots=True)
        table = report["forecasters"]["random_walk"]["p_up"]["raw"]["reliability_table"]
    assert all(row["n"] < DIAGRAM_MIN_BIN for row in table)  # nothing for the diagram: the case under test
    assert report["forecasters"]["random_walk"]["toy_rule"]["raw"]["trades"] == []
    assert [str(w.message) for w in caught] == []
    assert {"reliability.png", "equity.png"} <= set(report["plots"])
    assert (tmp_path / "reliability.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("name", ["loss_curve"])
def test_the_fine_tuning_loss_curve_has_no_warning(tmp_path, name):
    from training.card import plot_losses

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_losses(tmp_path, [{"step": 0, "val_loss": 3.0}, {"step": 4, "train_loss": 2.5, "val_loss": 2.8}], 4)
    assert [str(w.message) for w in caught] == [] and (tmp_path / f"{name}.png").is_file()
