"""XNYS trading calendar: session windows, bar-start minutes and market status.

Conventions used throughout `market/`:
  * instants are tz-aware UTC ``pd.Timestamp`` values (naive inputs are taken as UTC, like Alpaca does);
  * a session is named by its label, a naive midnight ``pd.Timestamp`` of the New York trading date
    (the same labels exchange_calendars uses);
  * a 1-minute bar is labelled by its START minute and covers [start, start + 1 min).

Windows:
  * RTH ("regular trading hours"): the calendar's open to its close, so early closes (13:00 ET) are honoured.
  * Extended hours: 04:00 ET to 20:00 ET, except that post-market ends 4 hours after an early close
    (17:00 ET on a 13:00 ET half day).  The window end is ``min(20:00 ET, regular close + 4 h)``.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from dataclasses import dataclass
from typing import Union
from zoneinfo import ZoneInfo

import exchange_calendars as xcals
import pandas as pd

from marketdata.frame import ONE_MINUTE, DataError

NY = ZoneInfo("America/New_York")
# Far enough back for the 2013 Lean sample data; exchange_calendars' default start is only 20 years back.
CALENDAR_START = "2005-01-01"
EXTENDED_OPEN = dt.time(4, 0)
EXTENDED_CLOSE = dt.time(20, 0)
POST_MARKET_LENGTH = pd.Timedelta(hours=4)

TimeLike = Union[str, dt.datetime, pd.Timestamp]
DateLike = Union[str, dt.date, dt.datetime, pd.Timestamp]


@functools.lru_cache(maxsize=1)
def xnys() -> xcals.ExchangeCalendar:
    """The shared XNYS calendar (building one takes ~0.5 s, so it is built once per process)."""
    return xcals.get_calendar("XNYS", start=CALENDAR_START)


def to_utc(ts: TimeLike) -> pd.Timestamp:
    """An instant as a tz-aware UTC Timestamp; naive values are taken as UTC."""
    t = pd.Timestamp(ts)
    if t is pd.NaT:
        raise ValueError(f"not a time: {ts!r}")
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def to_session_label(session: DateLike) -> pd.Timestamp:
    """A session label (naive midnight) from a date, a date string or a Timestamp.

    An aware Timestamp is first converted to New York time, so an instant maps to its New York date.
    """
    t = pd.Timestamp(session)
    if t.tzinfo is not None:
        t = t.tz_convert(NY).tz_localize(None)
    return t.normalize()


def ny_date(ts: TimeLike) -> pd.Timestamp:
    """The New York calendar date (naive midnight) of an instant."""
    return to_utc(ts).tz_convert(NY).tz_localize(None).normalize()


def is_session(day: DateLike) -> bool:
    label = to_session_label(day)
    cal = xnys()
    if label < cal.first_session or label > cal.last_session:
        raise ValueError(f"{label.date()} is outside the calendar ({cal.first_session.date()}..{cal.last_session.date()})")
    return bool(cal.is_session(label))


def _checked_session(session: DateLike) -> pd.Timestamp:
    label = to_session_label(session)
    if not is_session(label):
        raise ValueError(f"{label.date()} is not an XNYS session")
    return label


def _ny_wall(label: pd.Timestamp, wall: dt.time) -> pd.Timestamp:
    # zoneinfo picks the right EST/EDT offset for that date.
    return pd.Timestamp(dt.datetime.combine(label.date(), wall, tzinfo=NY)).tz_convert("UTC")


def session_window(session: DateLike, rth: bool = True) -> tuple[pd.Timestamp, pd.Timestamp]:
    """(start_utc, end_utc) of a session's window; bars start in [start, end).

    RTH: the calendar's open and close (early close honoured).  Extended: 04:00 ET to
    min(20:00 ET, regular close + 4 h), i.e. 20:00 ET normally and 17:00 ET on a 13:00 half day.
    """
    label = _checked_session(session)
    cal = xnys()
    open_, close = cal.session_open(label), cal.session_close(label)
    if rth:
        return open_.as_unit("ns"), close.as_unit("ns")
    start = _ny_wall(label, EXTENDED_OPEN)
    end = min(_ny_wall(label, EXTENDED_CLOSE), close + POST_MARKET_LENGTH)
    return start.as_unit("ns"), end.as_unit("ns")


def session_minutes(session: DateLike, rth: bool = True) -> pd.DatetimeIndex:
    """Bar starts of a session window (390 for a full RTH day, 210 for a 13:00 half day)."""
    start, end = session_window(session, rth)
    return minutes_between(start, end)


def minutes_between(start: pd.Timestamp, end: pd.Timestamp) -> pd.DatetimeIndex:
    """Minute starts in [start, end), UTC, ns resolution, named "timestamp"."""
    idx = pd.date_range(start, end, freq="min", inclusive="left", name="timestamp")
    return idx.as_unit("ns")


def session_containing(ts: TimeLike, rth: bool = True) -> pd.Timestamp | None:
    """The session whose window contains the instant ts, or None.

    Windows never cross New York midnight, so only ts's New York date can contain it.
    """
    t = to_utc(ts)
    label = ny_date(t)
    if not is_session(label):
        return None
    start, end = session_window(label, rth)
    return label if start <= t < end else None


def recent_sessions(asof: TimeLike, days: int, rth: bool = True) -> list[pd.Timestamp]:
    """The last `days` sessions (labels, oldest first) whose window has started by asof.

    "Started" means the window start is <= asof: 09:30 ET (the calendar open) for RTH, 04:00 ET for
    extended hours.  Holidays are skipped by the calendar.  Fewer are returned only at the calendar's start.
    """
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    t = to_utc(asof)
    check_covered(t)
    cal = xnys()
    last_day = ny_date(t)
    # A week has at least 3 sessions even around Christmas/New Year, so 3 calendar days per session is plenty.
    first_day = max(last_day - pd.Timedelta(days=3 * days + 10), cal.first_session)
    last_day = min(last_day, cal.last_session)
    labels = cal.sessions_in_range(first_day, last_day)
    started = [pd.Timestamp(s) for s in labels if session_window(s, rth)[0] <= t]
    return started[-days:]


class OutsideCalendar(DataError):
    """An instant outside the range the XNYS calendar covers (bad input: exit 2)."""


def check_covered(t: pd.Timestamp) -> None:
    """Raise OutsideCalendar, in our words, for an instant whose New York date the calendar does not cover."""
    cal = xnys()
    day = ny_date(t)
    if day < cal.first_session or day > cal.last_session:
        raise OutsideCalendar(f"{t.isoformat()} is outside the market calendar, which covers "
                              f"{cal.first_session.date()} to {cal.last_session.date()} (XNYS); use a time "
                              "inside that range")


def next_bar_starts(last_bar_start: TimeLike, n: int, rth: bool = True) -> pd.DatetimeIndex:
    """Up to n bar starts after last_bar_start inside the SAME session window.

    Fewer than n when the window ends sooner; empty when last_bar_start is the window's last minute or is
    outside every window.  The caller decides what a short horizon means.
    """
    t = to_utc(last_bar_start).floor("min")
    label = session_containing(t, rth)
    if label is None or n <= 0:
        return minutes_between(t, t)
    _, end = session_window(label, rth)
    return minutes_between(t + ONE_MINUTE, min(end, t + ONE_MINUTE * (n + 1)))


@dataclass(frozen=True)
class MarketStatus:
    """Where `now` stands against the session windows.

    is_open: now is inside a session window.
    session: the current session when open, else the last session whose window has started (None only at
        the calendar's start).
    window_start/window_end: that session's window (UTC).
    minutes_left: whole minutes from now to the window end when open (0 when closed).
    next_open: start of the next window that starts after now (None past the calendar's end).
    """

    now: pd.Timestamp
    rth: bool
    is_open: bool
    session: pd.Timestamp | None
    window_start: pd.Timestamp | None
    window_end: pd.Timestamp | None
    minutes_left: int
    next_open: pd.Timestamp | None

    def describe(self) -> str:
        """One line for the hand-run "market closed" message."""
        kind = "RTH" if self.rth else "extended-hours"
        if self.is_open:
            return f"market open ({kind}), session {self.session.date()}, {self.minutes_left} min left"
        nxt = f"next open {self.next_open.isoformat()}" if self.next_open is not None else "no next open known"
        return f"market closed ({kind}); {nxt}"


def market_status(now: TimeLike, rth: bool = True) -> MarketStatus:
    t = to_utc(now)
    recent = recent_sessions(t, 1, rth)
    session = recent[-1] if recent else None
    start = end = None
    is_open = False
    if session is not None:
        start, end = session_window(session, rth)
        is_open = start <= t < end
    minutes_left = math.floor((end - t) / ONE_MINUTE) if is_open else 0
    return MarketStatus(
        now=t, rth=rth, is_open=is_open, session=session, window_start=start, window_end=end,
        minutes_left=minutes_left, next_open=_next_window_start(t, rth),
    )


def _next_window_start(t: pd.Timestamp, rth: bool) -> pd.Timestamp | None:
    cal = xnys()
    day = ny_date(t)
    # Today's window may still be ahead (before 09:30 / 04:00 ET), otherwise it is the next session's.
    for _ in range(2):
        if day > cal.last_session:
            return None
        label = day if cal.is_session(day) else cal.date_to_session(day, direction="next")
        start, _ = session_window(label, rth)
        if start > t:
            return start
        day = label + pd.Timedelta(days=1)
    return None
