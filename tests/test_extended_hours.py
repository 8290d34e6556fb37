"""Pre-open and after-hours with rth: true: the latest extended-hours price and its gap to the regular close in the
summary, the console and the fan chart; P(up) against both prices; titles name the minute the fan starts. The
issue's example on the real QQQ bars: at 09:00 ET on 2025-06-11 the 08:59 bar closed at 535.92, +0.31 % above the
534.28 regular close, and the fan starts at 09:30."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cli_kronos_prob_qqq as cli
import forecast.pipeline as pipeline
from forecast.extended import latest_extended
from forecast.plotting import _title
from support.real_files import POLOILO as BARS
from support.stand_in import StandIn

ROOT = Path(__file__).resolve().parents[1]


def raw_close(data: Path, utc_minute: str) -> float:
    """The file's own close of one bar, read with pandas alone (the file's stamps are UTC bar starts)."""
    raw = pd.read_csv(data / BARS)
    return float(raw.loc[raw["Datetime"] == utc_minute, "Close"].iloc[0])


def run(data: Path, out: Path, asof: str, *extra: str, capsys=None) -> tuple[dict, pd.DataFrame, str]:
    argv = ["--config", str(ROOT / "config.yaml"), "--csv", str(data / BARS), "--asof", asof, "--seed", "5",
            "--n-samples", "40", "--out", str(out), "-q", *extra]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out if capsys is not None else ""
    summary = json.loads((out / "pred_summary_QQQ_latest.json").read_text())
    paths = pd.read_csv(out / "paths_QQQ_latest.csv", index_col="path")
    return summary, paths, text


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setattr(pipeline, "load_sampler", lambda cfg: StandIn())


def test_pre_open_shows_the_pre_market_price_beside_the_regular_close(real_data_dir, stand_in, tmp_path, capsys):
    summary, paths, text = run(real_data_dir, tmp_path, "2025-06-11T13:00:00Z", capsys=capsys)
    pre, close = raw_close(real_data_dir, "2025-06-11 12:59:00"), raw_close(real_data_dir, "2025-06-10 19:59:00")
    assert (pre, close) == (535.92, 534.28)  # the numbers
    ext = summary["extended_hours"]
    assert ext["price"] == pre and ext["regular_close"] == close == summary["now_close"]
    assert ext["session"] == "pre-market" and ext["bar_new_york"] == "2025-06-11T08:59:00-04:00"
    assert ext["gap_to_close"] == pytest.approx(pre / close - 1, rel=1e-12)
    assert ext["paths_start_from"] == "regular close"
    assert summary["forecast_start_new_york"] == "2025-06-11T09:30:00-04:00"
    # P(up) and the expected return against both prices, from the written paths
    final = paths.iloc[:, -1].to_numpy()
    m = summary["summary"]
    assert m["p_up_30m"] == pytest.approx(np.mean(final > close)) and m["p_up_30m_vs_ext"] == pytest.approx(
        np.mean(final > pre))
    assert m["exp_ret_30m_vs_ext"] == pytest.approx(np.mean(final / pre - 1), rel=1e-6)  # the CSV rounds
    assert m["p_up_30m_vs_ext"] < m["p_up_30m"]  # the stand-in's paths start at the close, below the pre-market
    head = text.splitlines()[:3]
    assert "pre-market 535.92 (08:59 bar), +0.31% vs the regular close 534.28 (2025-06-10 16:00)" in head[0]
    assert "paths start from the regular close" in head[1] and "from 09:30 EDT" in head[1]
    assert f"{m['p_up_30m_vs_ext']:.1%} vs pre-market 535.92" in head[2]
    assert any("the paths start from the regular close" in n for n in summary["notes"])
    row = pd.read_csv(tmp_path / "runs_QQQ.csv").iloc[-1]  # the run log carries New York times beside UTC
    assert (row["asof"], row["asof_new_york"]) == ("2025-06-11T13:00:00Z", "2025-06-11 09:00:00")
    assert row["last_bar_new_york"] == "2025-06-10 15:59:00"


def test_after_hours_and_rth_off_and_mid_session(real_data_dir, stand_in, tmp_path):
    after, _, _ = run(real_data_dir, tmp_path / "a", "2025-06-04T21:00:00Z")
    assert after["extended_hours"]["session"] == "after-hours"
    assert after["extended_hours"]["price"] == raw_close(real_data_dir, "2025-06-04 20:59:00")
    assert after["forecast_start_new_york"] == "2025-06-05T09:30:00-04:00"
    # extended hours in the context: the model starts from the pre-market bar itself, nothing to add
    ext_on, _, _ = run(real_data_dir, tmp_path / "b", "2025-06-11T13:00:00Z", "--no-rth", "--lookback", "400")
    assert ext_on["extended_hours"] is None and ext_on["now_close"] == 535.92
    assert "p_up_30m_vs_ext" not in ext_on["summary"]
    midday, _, _ = run(real_data_dir, tmp_path / "c", "2025-06-04T15:00:00Z")
    assert midday["extended_hours"] is None and midday["forecast_start_new_york"] == "2025-06-04T11:00:00-04:00"


def test_only_a_usable_bar_inside_extended_hours_counts():
    idx = pd.DatetimeIndex(["2025-06-10T19:59Z", "2025-06-11T00:30Z", "2025-06-11T12:58Z", "2025-06-11T12:59Z"])
    frame = pd.DataFrame({"close": [534.28, 530.0, 535.5, 0.0]}, index=idx)
    regular = frame.iloc[:1]
    ext = latest_extended(frame, regular, pd.Timestamp("2025-06-11T13:00Z"), rth=True)
    assert ext.price == 535.5 and ext.bar == idx[2]  # the 08:59 bar's zero close is not a price
    # the 20:30 ET bar lies outside 04:00-20:00 ET: before 04:00 nothing counts
    assert latest_extended(frame.iloc[:2], regular, pd.Timestamp("2025-06-11T13:00Z"), rth=True) is None
    assert latest_extended(frame, regular, pd.Timestamp("2025-06-11T12:58:30Z"), rth=True) is None  # unclosed
    assert latest_extended(frame, regular, pd.Timestamp("2025-06-11T13:00Z"), rth=False) is None


def test_the_chart_title_names_the_minute_the_fan_starts():
    summary = {"symbol": "QQQ", "asof": "2025-06-11T13:00:00Z", "forecast_start": "2025-06-11T13:30:00Z",
               "extended_hours": {"session": "pre-market"},
               "summary": {"p_up_30m": 0.5, "exp_ret_30m": 0.0, "p_up_30m_vs_ext": 0.25}}
    assert _title(summary, 30, None) == ("QQQ  2025-06-11 09:00 ET, fan from 09:30 ET\n"
                                         "P(up 30m) = 50.0% vs close, 25.0% vs pre-market   E[ret 30m] = +0.000%")
