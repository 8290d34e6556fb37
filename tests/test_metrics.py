"""Metrics against numbers worked out by hand (comments show the arithmetic)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from forecast import metrics as m

NOW = 100.0

# Four paths, three minutes, columns (open, high, low, close, volume, amount).
PATHS = np.array([
    [[100.0, 101.0, 99.5, 100.5, 10, 1000],    # path 0: drifts up to 102
     [100.5, 102.0, 100.0, 101.5, 10, 1000],
     [101.5, 102.0, 101.0, 102.0, 10, 1000]],
    [[100.0, 100.2, 98.0, 99.0, 10, 1000],     # path 1: falls to 96
     [99.0, 99.5, 97.0, 98.0, 10, 1000],
     [98.0, 98.5, 95.5, 96.0, 10, 1000]],
    [[100.0, 100.5, 99.8, 100.2, 10, 1000],    # path 2: ends exactly at now_close
     [100.2, 100.4, 99.6, 99.8, 10, 1000],
     [99.8, 100.1, 99.7, 100.0, 10, -1.0]],    # negative amount -> 0
    [[100.0, 99.0, 101.0, 100.5, -5, 1000],    # path 3: high/low swapped, volume < 0
     [100.5, 101.5, 100.2, 101.0, 10, 1000],
     [101.0, 101.5, 100.5, 101.0, 10, 1000]],
])


def _bars(rows: list[tuple[str, float, float, float, float]]) -> pd.DataFrame:
    """rows of (UTC time, high, low, close, volume) -> bar frame."""
    idx = pd.DatetimeIndex([pd.Timestamp(r[0], tz="UTC") for r in rows])
    df = pd.DataFrame([r[1:] for r in rows], index=idx, columns=["high", "low", "close", "volume"])
    df.insert(0, "open", df["close"])
    return df


# Yesterday's last bar (15:59 ET) must not enter today's VWAP; today starts 09:30 ET.
HISTORY = _bars([
    ("2025-04-30T19:59:00", 50.0, 50.0, 50.0, 1_000_000),
    ("2025-05-01T13:30:00", 101.5, 100.5, 101.0, 300),   # tp = 303/3 = 101
    ("2025-05-01T13:31:00", 102.0, 101.0, 101.5, 100),   # tp = 304.5/3 = 101.5
    ("2025-05-01T13:32:00", 101.0, 99.5, 99.5, 100),     # tp = 300/3 = 100
    ("2025-05-01T13:33:00", 100.5, 99.5, 100.0, 0),      # tp = 100, no volume
])


# ---------------------------------------------------------------- repair

def test_repair_rule_cases() -> None:
    bars = np.array([[
        [1.0, 2.0, 0.5, 3.0, 1, 1],     # close above high -> high 3
        [0.4, 2.0, 0.5, 1.0, 1, 1],     # open below low -> low 0.4
        [1.0, 0.5, 2.0, 1.5, 1, 1],     # swapped -> high 2, low 0.5
        [1.0, 2.0, 0.5, 1.5, 1, 1],     # consistent -> untouched
        [1.0, 2.0, 0.5, 1.5, -3, -4],   # negative volume/amount -> 0
    ]])
    before = bars.copy()
    out, stats = m.repair_paths(bars)
    assert out[0, 0, 1] == 3.0
    assert out[0, 1, 2] == 0.4
    assert (out[0, 2, 1], out[0, 2, 2]) == (2.0, 0.5)
    assert np.array_equal(out[0, 3], bars[0, 3])
    assert (out[0, 4, 4], out[0, 4, 5]) == (0.0, 0.0)
    assert stats == {"count": 4, "share": 4 / 5}
    assert np.array_equal(bars, before)  # input untouched


def test_repair_counts_tiny_paths() -> None:
    out, stats = m.repair_paths(PATHS)
    # path 3 minute 1 (swap + volume) and path 2 minute 3 (amount): 2 of 12 bars
    assert stats == {"count": 2, "share": 2 / 12}
    assert list(out[3, 0]) == [100.0, 101.0, 99.0, 100.5, 0.0, 1000.0]


def test_repair_rejects_bad_shape() -> None:
    with pytest.raises(ValueError):
        m.repair_paths(np.zeros((2, 3, 5)))


# ---------------------------------------------------------------- levels

def test_session_vwap_uses_typical_price() -> None:
    today = m.session_bars_of_last_day(HISTORY)
    assert len(today) == 4  # 19:59Z on Apr 30 is 15:59 ET Apr 30: excluded
    # (101*300 + 101.5*100 + 100*100 + 100*0) / 500 = 50450 / 500
    assert m.session_vwap(today) == pytest.approx(100.9)
    assert math.isnan(m.session_vwap(today.iloc[3:]))  # zero volume


def test_session_day_is_new_york_date() -> None:
    # 00:30Z on May 2 is still May 1 in New York (20:30 EDT)
    h = _bars([("2025-05-01T19:00:00", 1, 1, 1, 1), ("2025-05-02T00:30:00", 2, 2, 2, 1)])
    assert len(m.session_bars_of_last_day(h)) == 2


def test_mid_band_sma_and_ema() -> None:
    assert m.mid_band([1, 2, 3, 4, 5], window=4) == pytest.approx(3.5)  # (2+3+4+5)/4
    assert math.isnan(m.mid_band([1, 2, 3], window=4))
    # span 3 -> alpha 0.5: 1, 1.5, 2.25, 3.125
    assert m.mid_band([1, 2, 3, 4], window=3, kind="ema") == pytest.approx(3.125)
    with pytest.raises(ValueError):
        m.mid_band([1, 2], window=2, kind="wma")


def test_zscore_uses_population_std() -> None:
    # last 4 closes 101, 101.5, 99.5, 100: mean 100.5; squared deviations
    # .25 + 1 + 1 + .25 = 2.5, /4 = .625; z = (100 - 100.5)/sqrt(.625) = -0.6324555
    z = m.zscore_mid([50, 101, 101.5, 99.5, 100], 100.0, window=4)
    assert z == pytest.approx(-0.6324555320)
    assert math.isnan(m.zscore_mid([5, 5, 5], 5.0, window=3))  # zero std


# ---------------------------------------------------------------- touches

def _touch(low, high, close, now, level) -> list[bool]:
    return list(m.touched(np.array([low], float), np.array([high], float),
                          np.array([close], float), now, level))


def test_touch_inside_bar_inclusive() -> None:
    assert _touch([99.0, 99.5], [99.8, 100.0], [99.5, 99.9], 99.2, 100.0) == [True]  # high == level
    assert _touch([99.0, 99.5], [99.8, 99.9], [99.5, 99.9], 99.2, 100.0) == [False]


def test_touch_gap_over_level_counts_via_closes() -> None:
    # close 99 then a bar entirely above 100 (low 100.5): only the close crossing sees it
    assert _touch([98.5, 100.5], [99.5, 101.5], [99.0, 101.0], 99.2, 100.0) == [True]


def test_touch_trivial_when_now_close_on_level() -> None:
    assert _touch([101.0], [102.0], [101.5], 100.0, 100.0) == [True]


def test_p_hit_static_levels_on_tiny_paths() -> None:
    rep, _ = m.repair_paths(PATHS)
    # level 100.9: path0 m1 [99.5,101] yes; path1 highs <= 100.2 no; path2 highs <= 100.5 no;
    # path3 m1 [99,101] yes -> 2/4
    assert m.p_hit_level(rep, NOW, 100.9) == 0.5
    # level 99.2: path0 lows >= 99.5 and closes >= 100 no; path1 m1 [98,100.2] yes;
    # path2 lows >= 99.6 no; path3 (repaired) m1 [99,101] yes -> 2/4
    assert m.p_hit_mid(rep, NOW, 99.2) == 0.5
    assert math.isnan(m.p_hit_level(rep, NOW, math.nan))


def test_vwap_static_vs_moving() -> None:
    session = _bars([("2025-05-01T14:00:00", 100.0, 100.0, 100.0, 100)])  # VWAP 100, V 100
    path = np.array([[[98, 98, 98, 98, 100, 0],   # moving: (10000 + 9800)/200 = 99
                      [99, 99, 99, 99, 0, 0]]], float)  # no volume: stays 99 -> hits [99,99]
    # static 100: closes 98.5 -> 98 -> 99 never reach 100, bars top out at 99
    assert m.p_hit_vwap(path, session, 98.5, "static") == 0.0
    # moving: minute 1 [98,98] vs 99 no, closes -1.5 then -1 vs level; minute 2 99 in [99,99]
    assert m.p_hit_vwap(path, session, 98.5, "moving") == 1.0
    assert math.isnan(m.p_hit_vwap(path, session.assign(volume=0.0), 98.5, "moving"))
    with pytest.raises(ValueError):
        m.p_hit_vwap(path, session, 98.5, "twap")


def test_moving_vwap_uses_typical_price_and_volume() -> None:
    path = np.array([[[100, 105, 99, 99, 100, 0],     # tp (105+99+99)/3 = 101
                      [99, 101, 98, 101, 200, 0]]], float)  # tp (101+98+101)/3 = 100
    # session pv 10000, volume 100: (10000 + 101*100)/200 = 100.5; (20100 + 100*200)/400 = 100.25
    assert m.moving_vwap(path, 10000.0, 100.0) == pytest.approx(np.array([[100.5, 100.25]]))


# ---------------------------------------------------------------- excursions and vol

def test_drawdown_runup_per_path() -> None:
    rep, _ = m.repair_paths(PATHS)
    dd, ru = m.drawdown_runup(rep, NOW)
    # min lows 99.5, 95.5, 99.6, 99 -> 1 - low/100
    assert dd == pytest.approx([0.005, 0.045, 0.004, 0.01])
    # max highs 102, 100.2, 100.5, 101.5 -> high/100 - 1
    assert ru == pytest.approx([0.02, 0.002, 0.005, 0.015])
    dd_up, _ = m.drawdown_runup(rep, 90.0)  # never below 90: drawdown clipped to 0
    assert list(dd_up) == [0.0] * 4


def test_realized_vol_paths_sample_std() -> None:
    a = math.log(1.01)
    up = 100 * 1.01
    # log returns a, -a, a: mean a/3, squared deviations (4+16+4)/9 a^2, /2 -> std = a*sqrt(4/3)
    path = np.array([[[0, 0, 0, c, 0, 0] for c in (up, 100.0, up)],
                     [[0, 0, 0, 100.0, 0, 0]] * 3], float)
    vol = m.realized_vol_paths(path, 100.0)
    assert vol == pytest.approx([a * math.sqrt(4 / 3), 0.0])


def test_recent_vol_drops_overnight_and_windows() -> None:
    a = math.log(1.01)
    up = 100 * 1.01
    # yesterday's 50 -> 100 jump must be ignored; today returns a, -a, a, -a, a;
    # last 4: -a, a, -a, a: mean 0, sum sq 4a^2, /3 -> a*sqrt(4/3)
    rows = [("2025-04-30T19:59:00", 50, 50, 50, 1)]
    rows += [(f"2025-05-01T13:3{i}:00", c, c, c, 1) for i, c in
             enumerate((100.0, up, 100.0, up, 100.0, up))]
    h = _bars(rows)
    assert m.recent_realized_vol(h, vol_window=4) == pytest.approx(a * math.sqrt(4 / 3))
    # all 5 returns a,-a,a,-a,a: mean a/5, sum sq dev 5a^2 - 5(a/5)^2 = 4.8a^2, /4 = 1.2a^2
    assert m.recent_realized_vol(h, vol_window=60) == pytest.approx(a * math.sqrt(1.2))


# ---------------------------------------------------------------- compute_metrics

def metrics(paths, *args, **kw) -> dict:
    """compute_metrics on the repaired paths (as the pipeline does), as the JSON dict the summary writes."""
    repaired, repair = m.repair_paths(paths)
    return m.compute_metrics(repaired, *args, repair=repair, **kw).to_dict()


def test_compute_metrics_by_hand() -> None:
    before = PATHS.copy()
    out = metrics(PATHS, HISTORY, NOW, mid_window=4, vol_window=60, vwap_mode="static")
    assert np.array_equal(PATHS, before)
    json.dumps(out, allow_nan=False)  # JSON-ready, no numpy types / NaN
    assert out["horizon_min"] == 3 and out["n_paths"] == 4
    # final closes 102, 96, 100 (tie: not up), 101 -> 2/4 up
    assert out["p_up_3m"] == 0.5
    # (0.02 - 0.04 + 0 + 0.01) / 4
    assert out["exp_ret_3m"] == pytest.approx(-0.0025)
    # numpy linear percentiles at position q/100*(4-1) of the sorted closes:
    # m1 [99, 100.2, 100.5, 100.5]: p10 99+.3*1.2, p50 (100.2+100.5)/2, p90 100.5
    # m2 [98, 99.8, 101, 101.5]: 98+.3*1.8, 100.4, 101+.7*.5
    # m3 [96, 100, 101, 102]: 96+.3*4, 100.5, 101+.7*1
    assert out["percentiles"]["p10"] == pytest.approx([99.36, 98.54, 97.2])
    assert out["percentiles"]["p50"] == pytest.approx([100.35, 100.4, 100.5])
    assert out["percentiles"]["p90"] == pytest.approx([100.5, 101.35, 101.7])
    assert out["ret_percentiles_3m"] == pytest.approx({"p10": -0.028, "p50": 0.005, "p90": 0.017})
    assert out["vwap"] == pytest.approx(100.9) and out["vwap_mode"] == "static"
    assert out["vwap_session"] == "2025-05-01"
    assert out["p_hit_vwap_3m"] == 0.5  # see test_p_hit_static_levels_on_tiny_paths
    # mid = mean(101, 101.5, 99.5, 100) = 100.5; path0 m1 [99.5,101] yes, path1 highs <= 100.2
    # and closes < 100.5 no, path2 m1 high 100.5 == level yes, path3 yes -> 3/4
    assert out["mid_band"] == pytest.approx(100.5)
    assert out["p_hit_mid_3m"] == 0.75
    assert out["zscore_mid"] == pytest.approx(-0.6324555320)
    # drawdowns sorted .004 .005 .01 .045 at positions 1.5, 2.7, 2.85
    assert out["drawdown_p50_3m"] == pytest.approx(0.0075)
    assert out["drawdown_p90_3m"] == pytest.approx(0.0345)    # .01 + .7*.035
    assert out["drawdown_p95_3m"] == pytest.approx(0.03975)   # .01 + .85*.035
    # run-ups sorted .002 .005 .015 .02
    assert out["runup_p50_3m"] == pytest.approx(0.01)
    assert out["runup_p90_3m"] == pytest.approx(0.0185)
    assert out["runup_p95_3m"] == pytest.approx(0.01925)
    assert out["repaired_bars"] == {"count": 2, "share": pytest.approx(2 / 12)}


def test_compute_metrics_vol_exceedance() -> None:
    a = math.log(1.01)
    up = 100 * 1.01
    rows = [(f"2025-05-01T13:3{i}:00", c, c, c, 1) for i, c in enumerate((100.0, up, 100.0, up, 100.0))]
    h = _bars(rows)  # returns a,-a,a,-a: recent vol a*sqrt(4/3)
    big = 100 * 1.02
    paths = np.array([[[c, c, c, c, 1, 1] for c in (big, 100.0, big)],   # returns +-log 1.02: larger
                      [[c, c, c, c, 1, 1] for c in (100.0, 100.0, 100.0)],  # 0 vol
                      [[c, c, c, c, 1, 1] for c in (up, up, up)]], float)  # a,0,0: a/sqrt(3)
    out = metrics(paths, h, 100.0, mid_window=4)
    assert out["recent_vol_1m"] == pytest.approx(a * math.sqrt(4 / 3))
    # path 2: a,0,0 -> mean a/3, sq dev (4+1+1)/9 a^2, /2 -> a/sqrt(3) < a*sqrt(4/3);
    # only path 0 (+-log 1.02) exceeds -> 1/3
    assert out["p_vol_exceeds_recent_3m"] == pytest.approx(1 / 3)
    assert out["vwap_mode"] == "moving"  # default


def test_a_short_horizon_names_its_keys_by_it() -> None:
    out = metrics(PATHS[:, :1], HISTORY, NOW, mid_window=4)
    # minute-1 closes 100.5, 99, 100.2, 100.5 -> 3 of 4 above 100
    assert out["p_up_1m"] == 0.75
    assert "p_up_3m" not in out and "p_up" not in out
    assert out["p_vol_exceeds_recent_1m"] is None  # one return: no sample std
    typed = m.compute_metrics(m.repair_paths(PATHS[:, :1])[0], HISTORY, NOW, mid_window=4)
    assert typed.p_up == 0.75 and typed.horizon_min == 1  # the typed result carries no suffix


def test_compute_metrics_rejects_nan_paths_and_bad_close() -> None:
    bad = PATHS.copy()
    bad[0, 0, 3] = np.nan
    with pytest.raises(ValueError):
        m.compute_metrics(bad, HISTORY, NOW)
    with pytest.raises(ValueError):
        m.compute_metrics(PATHS, HISTORY, 0.0)


def test_next_session_forecast_has_no_vwap_yet():
    # History: two bars of one session with volume; a forecast for the next session's open.
    idx = pd.DatetimeIndex(["2025-06-04T19:58Z", "2025-06-04T19:59Z"])
    history = pd.DataFrame({"open": [10.0, 10.0], "high": [10.0, 11.0], "low": [10.0, 9.0],
                            "close": [10.0, 10.0], "volume": [100.0, 100.0]}, index=idx)
    paths = np.array([[[10.0, 10.5, 9.5, 10.2, 5.0, 0.0]]])
    same_day = metrics(paths, history, 10.0, mid_window=2, vol_window=1)
    assert same_day["vwap"] == pytest.approx(10.0)  # (10*100 + 10*100) / 200
    fresh = metrics(paths, history, 10.0, mid_window=2, vol_window=1, new_session=True)
    assert fresh["vwap"] is None and fresh["p_hit_vwap_1m"] is None and fresh["vwap_session"] is None
