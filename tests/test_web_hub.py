"""live.hub.LiveHub: outcomes by the backtest's rule, health, skips, metrics, and producer calls from a thread."""
from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from evaluation.outcome import realised_outcome
from forecast.metrics import session_vwap
from live.hub import DELAYED_LAG_S, STALE_S, LiveHub, feed_state
from support.web_forecasts import pipeline, qqq_bars, synthetic_forecast

NOW = pd.Timestamp("2025-06-10 15:00", tz="UTC")   # a regular Tuesday session in the QQQ file
MINUTE = pd.Timedelta(minutes=1)


@pytest.fixture
def bars(real_data_dir):
    return qqq_bars(str(real_data_dir))


def _hub() -> LiveHub:
    return LiveHub(["qqq"], history=50)


def _metric(hub: LiveHub, name: str, **labels) -> float:
    for family in text_string_to_metric_families(generate_latest(hub.registry).decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"{name} {labels} not in /metrics")


def test_outcome_equals_the_backtest_rule(bars):
    """The hub's outcome of a forecast equals evaluation.outcome's, computed here from the pipeline's context."""
    pipe = pipeline(calibrated=True)
    hub = _hub()
    hub.on_bars("QQQ", bars[bars.index < NOW], NOW)
    summary, closes, ctx = synthetic_forecast(pipe, bars, NOW, seed=3)
    hub.on_forecast("QQQ", summary, closes, 0.8, context=ctx)
    end = ctx.times[-1]

    hub.on_bars("QQQ", bars[(bars.index >= NOW) & (bars.index < end)], end)  # the last minute still open
    assert hub.history("QQQ")[-1]["outcome"] is None
    hub.on_bars("QQQ", bars[bars.index == end], end + MINUTE)
    got = hub.history("QQQ")[-1]["outcome"]

    cfg = pipe.cfg
    want = realised_outcome(bars, ctx.bars, ctx.times, vwap_mode=cfg.vwap_mode, mid_window=cfg.mid_window,
                            mid_kind=cfg.mid_kind, new_session=ctx.plan.next_session)
    assert got["realised_close"] == want.close[-1] == bars.loc[end, "close"]
    assert got["up"] == want.up == float(bars.loc[end, "close"] > ctx.now_close)
    assert got["hit_vwap"] == want.hit_vwap and got["hit_mid"] == want.hit_mid
    # scores by hand: Brier of the raw and calibrated P(up), the p10-p90 band at the end, the band z-score
    h = summary["horizon_min"]
    p_up, p_cal = summary["summary"][f"p_up_{h}m"], summary["calibrated"][f"p_up_{h}m"]
    assert got["brier"] == pytest.approx((p_up - want.up) ** 2)
    assert got["brier_calibrated"] == pytest.approx((p_cal - want.up) ** 2)
    lo, hi = summary["summary"]["percentiles"]["p10"][-1], summary["summary"]["percentiles"]["p90"][-1]
    assert got["inside_band_end"] == (lo <= want.close[-1] <= hi)
    r = np.log(closes[:, -1] / ctx.now_close)
    q10, q50, q90 = np.quantile(r, [0.1, 0.5, 0.9])
    assert got["band_z_end"] == pytest.approx((np.log(want.close[-1] / ctx.now_close) - q50) / ((q90 - q10) / 2.5631))


def test_reliability_panel_of_the_day(bars):
    """Brier and coverage over the day's reconciled forecasts, recomputed by hand from /forecast/history."""
    pipe = pipeline()
    hub = _hub()
    origins = [NOW + k * 3 * MINUTE for k in range(6)]
    for k, t in enumerate(origins):
        hub.on_bars("QQQ", bars[bars.index < t], t)
        summary, closes, ctx = synthetic_forecast(pipe, bars, t, seed=k, drift=(k - 2) * 2e-4)
        hub.on_forecast("QQQ", summary, closes, 1.0, context=ctx)
    cut = origins[3] + 10 * MINUTE  # the first four windows are over, the last two are not
    hub.on_bars("QQQ", bars[bars.index < cut], cut)
    hist = hub.history("QQQ")
    done = [f for f in hist if f["outcome"] is not None]
    assert len(done) == 4 and len(hist) == 6
    panel = hub.page_state("QQQ")["reliability"]
    assert panel["n"] == 4 and panel["pending"] == 2 and panel["brier_reference"] == 0.25
    assert panel["brier"] == pytest.approx(np.mean([(f["p_up"] - f["outcome"]["up"]) ** 2 for f in done]))
    inside = [f["band"]["lo_end"] <= f["outcome"]["realised_close"] <= f["band"]["hi_end"] for f in done]
    assert panel["coverage"] == pytest.approx(np.mean(inside))
    assert panel["nominal"] == pytest.approx(0.8) and panel["band"] == "p10-p90"


def test_health_bars_skips_errors(bars):
    hub = _hub()
    h = hub.health()
    assert h["model_loaded"] is False and h["symbols"]["QQQ"]["last_bar"] is None
    hub.set_model({"model": "m", "tokenizer": "t", "device": "cpu", "dtype": "float32", "load_s": 0.5})
    now = NOW + pd.Timedelta(seconds=4.5)
    hub.on_bars("QQQ", bars[bars.index < NOW], now)
    # a corrected bar for a minute already held replaces it
    fixed = bars[bars.index == NOW - MINUTE].copy()
    fixed["close"] += 0.5
    hub.on_bars("QQQ", fixed, now + pd.Timedelta(seconds=1))
    candles = hub.page_state("QQQ")["candles"]
    assert candles["close"][-1] == fixed["close"].iloc[0] and candles["times"][-1] == "2025-06-10T14:59:00Z"
    # the regular session's bars so far (09:30 New York is 13:30 UTC), not the pre-market's
    assert len(candles["times"]) == len(bars[(bars.index < NOW) & (bars.index >= "2025-06-10 13:30")]) == 90
    hub.on_skip("QQQ", NOW, "overrun", "61.0 s > budget 50 s")
    hub.on_skip("QQQ", NOW + MINUTE, "overrun", "55.0 s > budget 50 s")
    hub.on_skip("qqq", NOW + 2 * MINUTE, "gap", "12 of the last 30 bars filled")
    hub.on_error("stream: connection refused")
    hub.on_reconnect()
    hub.on_output_error("redis", "Connection refused")
    hub.on_output_error("redis", "Connection refused")
    h = hub.health()
    sym = h["symbols"]["QQQ"]
    assert h["model_loaded"] and h["model"]["load_s"] == 0.5 and h["status"] == "ok"
    assert sym["last_bar"] == "2025-06-10T14:59:00Z"
    assert sym["last_bar_lag_s"] == pytest.approx(5.5)  # the 14:59 bar closed at 15:00:00, seen at 15:00:05.5
    assert h["skipped"] == {"overrun": 2, "gap": 1} and h["skipped_total"] == 3
    assert h["recent_skips"][-1]["reason"] == "gap: 12 of the last 30 bars filled"
    assert h["last_error"]["message"] == "stream: connection refused"
    assert h["stream_reconnects"] == 1 and h["output_errors"]["redis"]["count"] == 2
    assert _metric(hub, "kronos_skips_total", reason="overrun") == 2
    assert _metric(hub, "kronos_skips_total", reason="gap") == 1
    assert _metric(hub, "kronos_stream_reconnects_total") == 1
    assert _metric(hub, "kronos_output_errors_total", output="redis") == 2
    assert _metric(hub, "kronos_model_loaded") == 1
    with pytest.raises(KeyError, match="unknown symbol 'SPY'"):
        hub.latest("SPY")


def test_feed_state_and_mode(bars):
    """/health and /state say live or replay (with its speed); a live feed's bar lag and age say live, delayed or
    stale, by the thresholds; a replay never claims a latency state."""
    hub = _hub()
    assert hub.health()["symbols"]["QQQ"]["feed"] is None           # no bar yet
    hub.on_bars("QQQ", bars[bars.index < NOW], NOW + pd.Timedelta(seconds=3))
    h = hub.health()
    assert (h["mode"], h["speed"], h["symbols"]["QQQ"]["feed"]) == ("live", None, "live")
    state = hub.page_state("QQQ")
    assert state["mode"] == "live" and state["last_bar"] == "2025-06-10T14:59:00Z"
    assert state["last_close"] == bars[bars.index < NOW]["close"].iloc[-1]
    late = NOW + pd.Timedelta(seconds=60 + 75)                       # the 14:59 bar seen 75 s after its close
    hub.on_bars("QQQ", bars[bars.index < NOW], late)
    assert hub.health()["symbols"]["QQQ"]["feed"] == "delayed"
    assert feed_state("live", 5.0, STALE_S + 1) == "stale" and feed_state("live", DELAYED_LAG_S, 1.0) == "live"
    assert feed_state("live", None, None) is None
    replay = LiveHub(["QQQ"], mode="replay", speed=60)
    replay.on_bars("QQQ", bars[bars.index < NOW], late)              # a replay's lag means nothing: still "replay"
    h = replay.health()
    assert (h["mode"], h["speed"], h["symbols"]["QQQ"]["feed"]) == ("replay", 60.0, "replay")
    assert replay.page_state("QQQ")["speed"] == 60.0
    with pytest.raises(ValueError, match="mode"):
        LiveHub(["QQQ"], mode="paper")


def test_producer_thread_feeds_sse_subscriber(bars):
    """Forecasts and skips handed in from another thread reach an asyncio subscriber, all and in order, while
    the event loop reads the hub's state at the same time."""
    pipe = pipeline(n_samples=20)
    forecasts = [synthetic_forecast(pipe, bars, NOW + k * MINUTE, seed=k) for k in range(20)]
    hub = _hub()

    async def main() -> list[dict]:
        hub.attach_loop(asyncio.get_running_loop())
        queue = hub.subscribe()

        def produce() -> None:
            for k, (summary, closes, ctx) in enumerate(forecasts):
                t = NOW + k * MINUTE
                hub.on_bars("QQQ", bars[(bars.index >= t - 60 * MINUTE) & (bars.index < t)], t)
                hub.on_forecast("QQQ", summary, closes, 0.1 * k, context=ctx)
                hub.on_skip("QQQ", t, "test", str(k))

        thread = threading.Thread(target=produce)
        thread.start()
        got: list[dict] = []
        while sum(e["event"] in ("forecast", "skip") for e in got) < 2 * len(forecasts):
            got.append(await asyncio.wait_for(queue.get(), 10))
            hub.page_state("QQQ"), hub.history("QQQ", 5)  # readers on the loop meanwhile
        thread.join()
        hub.unsubscribe(queue)
        return got

    events = asyncio.run(main())
    kinds = [e["event"] for e in events if e["event"] in ("forecast", "skip")]
    assert kinds == ["forecast", "skip"] * len(forecasts)
    assert [e["reason"] for e in events if e["event"] == "skip"] == [f"test: {k}" for k in range(len(forecasts))]
    assert any(e["event"] == "outcome" for e in events)  # windows that ended during the run were scored
    assert hub.latest("QQQ") == forecasts[-1][0]
    assert _metric(hub, "kronos_forecasts_total", symbol="QQQ") == len(forecasts)
    assert _metric(hub, "kronos_forecast_latency_seconds_count", symbol="QQQ") == len(forecasts)
    assert _metric(hub, "kronos_forecast_latency_seconds_sum", symbol="QQQ") == pytest.approx(0.1 * 190)
    assert hub.health()["subscribers"] == 0


def test_bad_input_never_reaches_the_producer(bars):
    """A summary the history cannot read still becomes the latest (the page shows it), and a context the
    outcome cannot be computed from leaves the forecast unresolved with its reason; neither raises into the loop.
    A forecast handed in before the hub holds any bar is judged on its own context."""
    hub = _hub()
    hub.on_bars("QQQ", bars[bars.index < NOW], NOW)
    pipe = pipeline()
    summary, closes, ctx = synthetic_forecast(pipe, bars, NOW)
    broken = {k: v for k, v in summary.items() if k != "future_times"}
    hub.on_forecast("QQQ", broken, closes, 1.0, context=ctx)
    assert hub.latest("QQQ") == broken and hub.history("QQQ") == []

    end = ctx.times[-1]
    after = bars[(bars.index >= NOW) & (bars.index <= end)]
    hub2 = _hub()
    hub2.on_forecast("QQQ", summary, closes, 1.0, context=ctx)                       # no bars before it
    hub2.on_forecast("QQQ", summary, closes, 1.0, context=replace(ctx, bars=ctx.bars.iloc[:0]))  # unusable
    hub2.on_bars("QQQ", after, end + MINUTE)
    good, bad = hub2.history("QQQ")
    cfg = pipe.cfg
    want = realised_outcome(after, ctx.bars, ctx.times, vwap_mode=cfg.vwap_mode, mid_window=cfg.mid_window,
                            mid_kind=cfg.mid_kind, new_session=ctx.plan.next_session)
    assert good["outcome"]["realised_close"] == want.close[-1] == bars.loc[end, "close"]
    assert good["outcome"]["hit_vwap"] == want.hit_vwap and good["outcome"]["hit_mid"] == want.hit_mid
    assert bad["outcome"] is None and bad["unresolved"].startswith("outcome failed: ")


@pytest.mark.parametrize("rth", [True, False])
def test_todays_candles_stay_in_the_forecasts_window_after_the_close(bars, rth):
    """The page's candles are the last bar's session in the window the forecasts use: post-market bars arriving
    after the close never add candles to a regular-hours page, before or after the first forecast."""
    day = bars[(bars.index >= "2025-06-10 08:00") & (bars.index < "2025-06-11 00:00")]
    assert (day.index >= "2025-06-10 20:00").sum() > 0  # the file has post-market bars that day
    # the windows by hand: 09:30-16:00 and 04:00-20:00 New York (13:30-20:00 and 08:00-24:00 UTC in June)
    start = pd.Timestamp("2025-06-10 13:30" if rth else "2025-06-10 08:00", tz="UTC")
    end = pd.Timestamp("2025-06-10 20:00" if rth else "2025-06-11 00:00", tz="UTC")
    closing = pd.Timestamp("2025-06-10 19:59", tz="UTC")
    hub = LiveHub(["QQQ"], rth=rth)
    hub.on_bars("QQQ", day[day.index <= closing], closing + MINUTE)
    want = day[(day.index >= start) & (day.index < end) & (day.index <= closing)]
    assert len(hub.page_state("QQQ")["candles"]["times"]) == len(want)  # before the first forecast
    summary, closes, ctx = synthetic_forecast(pipeline(), bars, NOW)
    hub.on_forecast("QQQ", summary, closes, 1.0, context=ctx)
    late = pd.Timestamp("2025-06-10 20:10", tz="UTC")
    hub.on_bars("QQQ", day[(day.index > closing) & (day.index < late)], late)
    candles = hub.page_state("QQQ")["candles"]
    want = day[(day.index >= start) & (day.index < end) & (day.index < late)]
    assert candles["times"] == [t.isoformat().replace("+00:00", "Z") for t in want.index]
    if rth:
        assert len(candles["times"]) == 390


def test_online_calibration_learns_each_resolved_forecast_and_resumes(bars, tmp_path):
    """The hub's resolved outcome reaches the symbol's online state: every step's ACI tracker and the P(up) map
    take one step each (recomputed here by hand), the state is saved, and a restarted keeper resumes from it
    without learning the same outcome twice."""
    from forecast.online import GAMMA, ONS_EPS
    from live.online import OnlineKeeper

    pipe = pipeline(calibrated=True)
    hub = _hub()
    keeper = OnlineKeeper(tmp_path, "QQQ", pipe)
    hub.on_outcome["QQQ"] = keeper.on_outcome
    hub.on_bars("QQQ", bars[bars.index < NOW], NOW)
    summary, closes, ctx = synthetic_forecast(pipe, bars, NOW, seed=3)
    hub.on_forecast("QQQ", summary, closes, 0.8, context=ctx)
    assert summary["online"]["n_updates"] == 0 and summary["trust"]["status"] == "stale"
    end = ctx.times[-1]
    hub.on_bars("QQQ", bars[(bars.index >= NOW) & (bars.index <= end)], end + MINUTE)
    realised = bars.loc[ctx.times, "close"].to_numpy()
    issued = np.array([summary["online"]["percentiles"][k] for k in ("p10", "p50", "p90")])  # [L, H]
    tau = np.array([0.1, 0.5, 0.9])
    want_w = tau[None] + GAMMA * (tau[None] - (realised[:, None] <= issued.T))
    state = keeper.state
    np.testing.assert_allclose(state.w, want_w)
    up = float(realised[-1] > ctx.now_close)
    p = summary["online"]["p_up_base"]
    assert p == summary["calibrated"]["p_up_10m"]  # the online map sits on the walk-forward value
    x = np.array([np.log(p / (1 - p)), 1.0])
    g = (p - up) * x
    np.testing.assert_allclose(state.probs["p_up"].theta,
                               [1, 0] - np.linalg.solve(ONS_EPS * np.eye(2) + np.outer(g, g), g))
    # the next forecast uses it; the history shows raw, walk-forward and online side by side
    later = NOW + pd.Timedelta(minutes=15)
    nxt, _, _ = synthetic_forecast(pipe, bars, later, seed=4)
    assert nxt["online"]["n_updates"] == 1
    row = hub.history("QQQ")[-1]
    assert row["p_up_online"] == pytest.approx(summary["online"]["p_up_10m"]) and row["trust"] == "stale"
    # a restart resumes; the same outcome offered again is not learnt twice
    again = OnlineKeeper(tmp_path, "QQQ", pipeline(calibrated=True))
    np.testing.assert_allclose(again.state.w, want_w)
    record = hub._state["QQQ"].history[0]
    again.on_outcome(record, SimpleOutcome(realised, up))
    np.testing.assert_allclose(again.state.w, want_w)


class SimpleOutcome:
    def __init__(self, close, up):
        self.close, self.up, self.hit_vwap = close, up, None


def test_page_state_volume_session_vwap_and_close(bars):
    """The page's candles carry volume and the running session VWAP (each point equal to forecast.metrics'
    session_vwap of the bars so far), and the regular close of the day (16:00 New York, 13:00 on a half day)."""
    hub = _hub()
    hub.on_bars("QQQ", bars[bars.index < NOW], NOW)
    c = hub.page_state("QQQ")["candles"]
    session = bars[(bars.index < NOW) & (bars.index >= "2025-06-10 13:30")]
    assert c["volume"] == pytest.approx(session["volume"].tolist())
    for k in (0, 10, len(session) - 1):
        assert c["vwap"][k] == pytest.approx(session_vwap(session.iloc[:k + 1]), rel=1e-12)
    assert hub.page_state("QQQ")["session_close"] == "2025-06-10T20:00:00Z"
    assert LiveHub(["QQQ"]).page_state("QQQ")["session_close"] is None            # no bar yet
    half = LiveHub(["QQQ"])                                                      # 2024-11-29: a 13:00 close
    t = pd.date_range("2024-11-29 14:30", periods=3, freq="1min", tz="UTC")
    half.on_bars("QQQ", pd.DataFrame({"open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 0.0}, index=t),
                 t[-1] + MINUTE)
    state = half.page_state("QQQ")
    assert state["session_close"] == "2024-11-29T18:00:00Z" and state["candles"]["vwap"] == [None] * 3


def test_previous_sessions_last_hour_at_the_open(bars):
    """Before today's session has an hour of bars the page state carries the previous session's last 60 regular
    bars (the file's 2025-06-09 15:00-15:59 New York); later in the day it carries none."""
    hub = _hub()
    at = pd.Timestamp("2025-06-10 13:40", tz="UTC")                     # 09:40 New York: ten bars today
    hub.on_bars("QQQ", bars[bars.index < at], at)
    c = hub.page_state("QQQ")["candles"]
    assert len(c["times"]) == 10
    prev = bars[(bars.index >= "2025-06-09 19:00") & (bars.index < "2025-06-09 20:00")]
    assert c["previous"]["times"][0] == "2025-06-09T19:00:00Z" and c["previous"]["times"][-1] == "2025-06-09T19:59:00Z"
    assert c["previous"]["close"] == pytest.approx(prev["close"].tolist())
    hub.on_bars("QQQ", bars[bars.index < NOW], NOW)                      # 11:00 New York: 90 bars today
    assert hub.page_state("QQQ")["candles"]["previous"] is None
