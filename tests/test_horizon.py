"""Forecast minutes at session edges, model time features and event quiet windows (hand-checked times)."""
import pandas as pd
import pytest

from forecast.horizon import events_in_window, model_time_index, plan_horizon
from forecast.errors import Skipped

T = pd.Timestamp


def test_mid_session_covers_the_next_30_minutes():
    # 2025-06-02 10:00 ET = 14:00Z (EDT); the last closed bar started 13:59Z.
    plan = plan_horizon(T("2025-06-02T13:59Z"), 30, True, "truncate", 5)
    assert plan.times[0] == T("2025-06-02T14:00Z") and plan.times[-1] == T("2025-06-02T14:29Z")
    assert len(plan.times) == 30 and not plan.truncated and not plan.next_session


def test_near_the_close_truncates_or_skips():
    # Last bar 15:47 ET: 12 bars are left (15:48 .. 15:59).
    last = T("2025-06-02T19:47Z")
    plan = plan_horizon(last, 30, True, "truncate", 5)
    assert len(plan.times) == 12 and plan.truncated and plan.times[-1] == T("2025-06-02T19:59Z")
    with pytest.raises(Skipped, match="near_close: skip"):
        plan_horizon(last, 30, True, "skip", 5)
    with pytest.raises(Skipped, match="min_horizon"):
        plan_horizon(T("2025-06-02T19:56Z"), 30, True, "truncate", 5)


def test_half_day_closes_at_13_00():
    # 2025-07-03 closes 13:00 ET = 17:00Z; from a 12:45 ET bar 14 minutes are left.
    plan = plan_horizon(T("2025-07-03T16:45Z"), 30, True, "truncate", 5)
    assert len(plan.times) == 14 and plan.times[-1] == T("2025-07-03T16:59Z")


def test_after_the_close_the_forecast_is_the_next_session_open():
    # Friday 2025-05-23 close, Monday is Memorial Day: the next session opens Tuesday 05-27 09:30 ET.
    plan = plan_horizon(T("2025-05-23T19:59Z"), 30, True, "truncate", 5)
    assert plan.next_session and plan.times[0] == T("2025-05-27T13:30Z") and len(plan.times) == 30
    assert "from the last close" in plan.notes[0]


def test_extended_hours_run_past_the_regular_close():
    plan = plan_horizon(T("2025-06-02T19:59Z"), 30, False, "truncate", 5)
    assert plan.times[0] == T("2025-06-02T20:00Z") and len(plan.times) == 30


def test_time_features_use_new_york_wall_clock():
    idx = pd.DatetimeIndex([T("2025-01-06T14:30Z"), T("2025-07-07T13:30Z")])  # EST and EDT opens
    start = model_time_index(idx, "start")
    assert [(t.hour, t.minute) for t in start] == [(9, 30), (9, 30)]
    end = model_time_index(idx, "end")
    assert [(t.hour, t.minute) for t in end] == [(9, 31), (9, 31)]
    assert start.tz is None


def test_event_window_meets_the_forecast_span():
    times = pd.date_range("2025-06-18T17:30Z", periods=30, freq="min")  # 13:30..13:59 ET, ends 14:00 ET
    fomc = "2025-06-18T14:00:00-04:00"
    now = T("2025-06-18T17:30Z")
    assert events_in_window(now, times, [fomc], 5, 15) == ["2025-06-18T18:00:00+00:00"]
    # 20 minutes after the release the window (15 min after) is over.
    later = pd.date_range("2025-06-18T18:20Z", periods=30, freq="min")
    assert events_in_window(T("2025-06-18T18:20Z"), later, [fomc], 5, 15) == []
    # A forecast ending 10 minutes before the quiet window opens is not flagged.
    early = pd.date_range("2025-06-18T17:00Z", periods=15, freq="min")  # ends 17:15Z; window opens 17:55Z
    assert events_in_window(T("2025-06-18T17:00Z"), early, [fomc], 5, 15) == []
