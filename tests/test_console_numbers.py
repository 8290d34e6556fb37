"""The console's one precision rule (issue 19): prices to the cent, returns in basis points, probabilities in
percent; the drawdown and run-up quantiles in basis points, in dollars per share and as the price levels they
reach, each recomputed here from the summary JSON's fractions and its now_close."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from forecast.summary import console_text

GOLDEN = Path(__file__).resolve().parent / "golden"


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.\d+", text)]


@pytest.mark.parametrize("name", ["midday_summary.json", "after_close_summary.json"])
def test_drawdown_and_runup_in_bp_dollars_and_levels(name):
    summary = json.loads((GOLDEN / name).read_text())
    h, m, close = summary["horizon_min"], summary["summary"], summary["now_close"]
    lines = console_text(summary).splitlines()
    for word, key, side in (("drawdown", "drawdown", -1), ("run-up", "runup", +1)):
        line = next(x for x in lines if x.strip().startswith(word + " "))
        fractions = [m[f"{key}_p{q}_{h}m"] for q in (50, 90, 95)]
        bp, dollars, levels = line.split("p50/p90/p95")[1].split(" bp = ")[0], *line.split(" bp = ")[1].split(" -> ")
        assert _numbers(bp) == pytest.approx([round(f * 1e4, 1) for f in fractions], abs=0.051)
        assert [float(x) for x in re.findall(r"\$(\d+\.\d\d)", dollars)] == \
            pytest.approx([f * close for f in fractions], abs=0.0051)
        assert _numbers(levels) == pytest.approx([close * (1 + side * f) for f in fractions], abs=0.0051)
        assert all(len(x.split(".")[1]) == 2 for x in re.findall(r"\d+\.\d+", dollars + " " + levels))  # cents
        assert all(len(x.split(".")[1]) == 1 for x in re.findall(r"\d+\.\d+", bp))               # 0.1 bp


def test_expected_return_in_bp_and_dollars_and_no_mixed_percent_precisions():
    summary = json.loads((GOLDEN / "midday_summary.json").read_text())
    h, m, close = summary["horizon_min"], summary["summary"], summary["now_close"]
    text = console_text(summary)
    line = next(x for x in text.splitlines() if "expected return" in x)
    ret, se = m[f"exp_ret_{h}m"], m[f"exp_ret_{h}m_se"]
    assert line.split()[2] == f"{ret * 1e4:+.1f}" and line.split()[3] == "bp"
    dollars = float(re.search(r"= ([+-])\$(\d+\.\d\d)", line).group(2)) * (1 if "+$" in line else -1)
    assert dollars == pytest.approx(ret * close, abs=0.0051)
    assert f"(s.e. {se * 1e4:.1f} bp)" in line
    # every percentage on the console has one decimal (probabilities); returns are no longer given in percent
    assert all(len(p.split(".")[1]) == 1 for p in re.findall(r"(\d+\.\d+)%", text))
