"""XNYS calendar edge cases checked against hand-known answers (times written in New York wall clock)."""
import pandas as pd
import pytest

from marketdata import calendar as mcal


def et(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="America/New_York").tz_convert("UTC")


def days(labels) -> list[str]:
    return [pd.Timestamp(x).date().isoformat() for x in labels]


def test_holidays_are_not_sessions():
    assert not mcal.is_session("2026-11-26")  # Thanksgiving
    assert not mcal.is_session("2025-05-26")  # Memorial Day
    assert not mcal.is_session("2026-07-03")  # Independence Day observed (Friday)
    assert mcal.is_session("2026-11-25")


def test_full_day_rth_window_and_minutes():
    start, end = mcal.session_window("2025-05-27")
    assert (start, end) == (et("2025-05-27 09:30"), et("2025-05-27 16:00"))
    minutes = mcal.session_minutes("2025-05-27")
    assert len(minutes) == 390
    assert minutes[0] == pd.Timestamp("2025-05-27 13:30", tz="UTC")  # EDT: UTC-4
    assert minutes[-1] == pd.Timestamp("2025-05-27 19:59", tz="UTC")
    assert str(minutes.tz) == "UTC"


@pytest.mark.parametrize("day", ["2026-11-27", "2025-07-03"])
def test_half_day_closes_at_13(day):
    start, end = mcal.session_window(day)
    assert end == et(f"{day} 13:00")
    assert len(mcal.session_minutes(day)) == 210
    # Extended hours: 04:00 ET to 17:00 ET (post-market ends 4 h after the early close).
    xstart, xend = mcal.session_window(day, rth=False)
    assert (xstart, xend) == (et(f"{day} 04:00"), et(f"{day} 17:00"))
    assert len(mcal.session_minutes(day, rth=False)) == 13 * 60


def test_extended_window_normal_day_in_winter():
    xstart, xend = mcal.session_window("2026-01-06", rth=False)
    assert xstart == pd.Timestamp("2026-01-06 09:00", tz="UTC")  # EST: UTC-5
    assert xend == pd.Timestamp("2026-01-07 01:00", tz="UTC")
    assert len(mcal.session_minutes("2026-01-06", rth=False)) == 16 * 60


def test_session_window_rejects_a_holiday():
    with pytest.raises(ValueError, match="not an XNYS session"):
        mcal.session_window("2026-11-26")


def test_three_sessions_ending_2026_11_30():
    assert days(mcal.recent_sessions(et("2026-11-30 12:00"), 3)) == ["2026-11-25", "2026-11-27", "2026-11-30"]


def test_monday_after_memorial_day():
    assert days(mcal.recent_sessions(et("2025-05-27 10:00"), 3)) == ["2025-05-22", "2025-05-23", "2025-05-27"]


def test_before_the_open_uses_previous_sessions():
    # 08:00 ET on 2025-05-27: RTH has not started, extended hours (04:00) has.
    asof = et("2025-05-27 08:00")
    assert days(mcal.recent_sessions(asof, 3)) == ["2025-05-21", "2025-05-22", "2025-05-23"]
    assert days(mcal.recent_sessions(asof, 3, rth=False)) == ["2025-05-22", "2025-05-23", "2025-05-27"]


def test_open_instant_counts_as_started():
    assert days(mcal.recent_sessions(et("2025-05-27 09:30"), 1)) == ["2025-05-27"]
    assert days(mcal.recent_sessions(et("2025-05-27 09:29:59"), 1)) == ["2025-05-23"]


def test_on_thanksgiving_itself():
    assert days(mcal.recent_sessions(et("2026-11-26 12:00"), 2)) == ["2026-11-24", "2026-11-25"]


def test_recent_sessions_across_christmas_and_new_year():
    got = days(mcal.recent_sessions(et("2026-01-02 10:00"), 5))
    assert got == ["2025-12-26", "2025-12-29", "2025-12-30", "2025-12-31", "2026-01-02"]


def test_calendar_reaches_2013():
    assert days(mcal.recent_sessions(et("2013-10-07 10:00"), 2)) == ["2013-10-04", "2013-10-07"]


def test_next_bar_starts_mid_session():
    got = mcal.next_bar_starts(et("2025-05-27 10:00"), 3)
    assert list(got) == [et("2025-05-27 10:01"), et("2025-05-27 10:02"), et("2025-05-27 10:03")]


def test_next_bar_starts_near_the_close_is_short():
    got = mcal.next_bar_starts(et("2025-05-27 15:57"), 30)
    assert list(got) == [et("2025-05-27 15:58"), et("2025-05-27 15:59")]
    assert len(mcal.next_bar_starts(et("2025-05-27 15:59"), 30)) == 0


def test_next_bar_starts_half_day_and_outside_windows():
    assert list(mcal.next_bar_starts(et("2026-11-27 12:58"), 30)) == [et("2026-11-27 12:59")]
    assert len(mcal.next_bar_starts(et("2026-11-27 13:30"), 30)) == 0          # after the early close
    assert len(mcal.next_bar_starts(et("2026-11-26 11:00"), 30)) == 0          # holiday
    # The same 15:59 bar has a post-market continuation in extended hours.
    assert len(mcal.next_bar_starts(et("2025-05-27 15:59"), 30, rth=False)) == 30


def test_next_bar_starts_across_dst_change():
    # 2026-03-08 is the spring-forward Sunday: Friday 03-06 is EST, Monday 03-09 is EDT.
    friday = mcal.next_bar_starts(et("2026-03-06 15:58"), 5)
    monday = mcal.next_bar_starts(et("2026-03-09 09:30"), 2)
    assert list(friday) == [pd.Timestamp("2026-03-06 20:59", tz="UTC")]
    assert list(monday) == [pd.Timestamp("2026-03-09 13:31", tz="UTC"), pd.Timestamp("2026-03-09 13:32", tz="UTC")]
    # Extended window after the fall-back change (2026-11-01): 04:00 EST = 09:00 UTC.
    assert mcal.session_window("2026-11-02", rth=False)[0] == pd.Timestamp("2026-11-02 09:00", tz="UTC")


def test_market_status_inside_session():
    st = mcal.market_status(et("2026-11-27 12:30"))
    assert st.is_open
    assert st.session == pd.Timestamp("2026-11-27")
    assert st.minutes_left == 30
    assert st.next_open == et("2026-11-30 09:30")


def test_market_status_first_minute_and_before_open():
    st = mcal.market_status(et("2025-05-27 09:30:20"))
    assert st.is_open and st.minutes_left == 389
    before = mcal.market_status(et("2025-05-27 09:00"))
    assert not before.is_open and before.minutes_left == 0
    assert before.session == pd.Timestamp("2025-05-23")
    assert before.next_open == et("2025-05-27 09:30")
    assert mcal.market_status(et("2025-05-27 09:00"), rth=False).is_open


def test_market_status_after_close_and_on_holiday():
    after = mcal.market_status(et("2026-11-25 16:00"))
    assert not after.is_open and after.session == pd.Timestamp("2026-11-25")
    assert after.next_open == et("2026-11-27 09:30")   # skips Thanksgiving
    holiday = mcal.market_status(et("2026-11-26 14:00"))
    assert not holiday.is_open and holiday.next_open == et("2026-11-27 09:30")
    assert "market closed" in holiday.describe()
    # Extended hours are still open at 16:00 on a normal day, closed at 17:00 on the half day.
    assert mcal.market_status(et("2026-11-25 16:00"), rth=False).is_open
    assert not mcal.market_status(et("2026-11-27 17:00"), rth=False).is_open


def test_naive_inputs_are_utc():
    assert mcal.to_utc("2025-05-27 13:30") == et("2025-05-27 09:30")
