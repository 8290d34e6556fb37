"""Turn raw canonical bars into the model's context: closed bars of the last N sessions, gaps filled."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import pandas as pd

from marketdata import calendar as mcal
from marketdata.frame import COLUMNS, ONE_MINUTE, DataError, canonical, empty_frame, fill_minutes
from marketdata.quality import BAD_BAR_POLICIES, BarRules, find_bad_bars

DEFAULT_RECENT_WINDOW = 30
DEFAULT_MAX_RECENT_FILLED = 10
SHOWN_BAD_BARS = 3  # bad bars described one by one in the info (all are counted)


@dataclass
class PrepareInfo:
    """What prepare_bars did.  Times are UTC ISO strings, sessions ISO dates."""

    asof: str
    rth: bool
    sessions: list[str]               # the `days` sessions considered, oldest first
    empty_sessions: list[str]         # of those, sessions without a single closed bar
    first_bar: Optional[str]
    last_bar: Optional[str]
    bar_count: int                    # bars returned (real + filled)
    real_count: int
    filled_count: int
    filled_recent: int                # filled bars among the last `recent_window` bars
    recent_window: int
    max_recent_filled: int
    leading_missing: int              # window minutes before each session's first real bar (left out)
    dropped_unclosed: int             # the bar still forming at asof (started before it, closes after it)
    dropped_outside: int              # closed input bars outside the chosen sessions' windows
    skip_reason: Optional[str]
    skip_code: Optional[str] = None   # the kind of skip (forecast.errors.Skipped.code); not in to_dict
    after_asof: int = 0               # input bars starting at or after asof (a replay's future): never used
    filled_max_window: int = 0        # most gap fills among any `recent_window` consecutive bars of the context
    bad_bars: int = 0                 # bars a market cannot print (marketdata.quality), dropped and filled
    bad_bar_policy: str = "fill"
    bad_bar_details: list[str] = field(default_factory=list)  # the first few, "time what"
    filled_index: pd.DatetimeIndex = field(repr=False, default_factory=lambda: empty_frame().index)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (without the filled bar list)."""
        d = asdict(self)
        d.pop("filled_index")
        d.pop("skip_code")
        return d

    def notes(self) -> list[str]:
        """What the reader of a forecast must know about its data: bad bars replaced, stretches of fills."""
        out = []
        if self.bad_bars:
            more = f" (and {self.bad_bars - len(self.bad_bar_details)} more)" \
                if self.bad_bars > len(self.bad_bar_details) else ""
            out.append(f"{self.bad_bars} bad bar(s) replaced by gap fills: {'; '.join(self.bad_bar_details)}{more}")
        if self.filled_max_window > self.max_recent_filled:
            out.append(f"the context holds a stretch with {self.filled_max_window} gap fills in "
                       f"{self.recent_window} bars (more than max_recent_filled {self.max_recent_filled}); the "
                       "model sees flat bars there")
        return out


def prepare_bars(frame: pd.DataFrame, asof: mcal.TimeLike, days: int = 3, rth: bool = True,
                 max_recent_filled: int = DEFAULT_MAX_RECENT_FILLED,
                 recent_window: int = DEFAULT_RECENT_WINDOW, rules: BarRules | None = BarRules(),
                 bad_bars: str = "fill") -> tuple[pd.DataFrame, PrepareInfo]:
    """Closed bars of the last `days` sessions that started by asof, with gaps filled.

    * A bar counts only when closed: start + 1 min <= asof.  asof is "now" live, or a past instant in a replay.
    * Sessions: mcal.recent_sessions(asof, days, rth); bars outside their windows are dropped.
    * Fill rule, per session, never across sessions: from the session's first real bar up to the window end
      (past sessions) or the last closed minute (the current session), a missing minute gets the previous
      bar's close as open = high = low = close and volume 0.  Minutes before a session's first real bar are
      not invented: they are left out and counted in leading_missing.
    * Bad bars (marketdata.quality, with ``rules``; None turns the check off): with ``bad_bars`` "fill" they
      are dropped and their minutes filled by the same rule, counted in bad_bars; with "skip" they set
      skip_reason.
    * skip_reason (the CLI skips cleanly when it is set): no closed bars at all; the current session has
      closed minutes but no bar (stale data); or more than max_recent_filled of the last recent_window bars
      are fills; bad bars under "skip"; under either policy, a bar that looks like an unadjusted split.
    Returns a canonical frame and a PrepareInfo.
    """
    if bad_bars not in BAD_BAR_POLICIES:
        raise ValueError(f"bad_bars must be one of {', '.join(BAD_BAR_POLICIES)}, got {bad_bars!r}")
    _check_canonical(frame)
    t = mcal.to_utc(asof)
    closed_mask = frame.index + ONE_MINUTE <= t
    closed = frame[closed_mask]
    sessions = mcal.recent_sessions(t, days, rth)
    pieces: list[pd.DataFrame] = []
    fills: list[pd.DatetimeIndex] = []
    empty: list[str] = []
    leading = kept = 0
    reals = []
    windows = [mcal.session_window(session, rth) for session in sessions]
    for start, end in windows:
        real = closed[(closed.index >= start) & (closed.index < end)]
        kept += len(real)
        reals.append(real)
    bad = find_bad_bars(reals, rules, [_regular(r, s) for r, s in zip(reals, sessions)]) if rules else []
    if bad and bad_bars == "fill":
        drop = pd.DatetimeIndex([b.time for b in bad if b.kind != "split"])  # a split is refused below, not filled
        reals = [r[~r.index.isin(drop)] for r in reals]
    for session, (start, end), real in zip(sessions, windows, reals):
        grid_end = min(end, t.floor("min"))
        if real.empty:
            empty.append(session.date().isoformat())
            leading += len(mcal.minutes_between(start, grid_end))
            continue
        filled, filled_at = _fill_session(real, grid_end)
        leading += len(mcal.minutes_between(start, real.index[0]))
        pieces.append(filled)
        fills.append(filled_at)
    bars = canonical(pd.concat(pieces)) if pieces else empty_frame()
    filled_index = fills[0].append(fills[1:]) if fills else empty_frame().index
    recent = bars.index[-recent_window:] if recent_window > 0 else bars.index[:0]
    filled_recent = int(recent.isin(filled_index).sum())
    is_fill = bars.index.isin(filled_index).astype(int)
    worst = (int(pd.Series(is_fill).rolling(recent_window, min_periods=1).sum().max())
             if len(bars) and recent_window > 0 else 0)
    forming = (frame.index < t) & ~closed_mask
    info = PrepareInfo(
        asof=t.isoformat(), rth=rth, sessions=[s.date().isoformat() for s in sessions], empty_sessions=empty,
        first_bar=bars.index[0].isoformat() if len(bars) else None,
        last_bar=bars.index[-1].isoformat() if len(bars) else None,
        bar_count=len(bars), real_count=len(bars) - len(filled_index), filled_count=len(filled_index),
        filled_recent=filled_recent, recent_window=recent_window, max_recent_filled=max_recent_filled,
        leading_missing=leading, dropped_unclosed=int(forming.sum()), dropped_outside=len(closed) - kept,
        skip_reason=None, after_asof=int((frame.index >= t).sum()), filled_max_window=worst,
        bad_bars=len(bad), bad_bar_policy=bad_bars, bad_bar_details=[b.describe() for b in bad[:SHOWN_BAD_BARS]],
        filled_index=filled_index,
    )
    info.skip_reason = _skip_reason(info, sessions, t, rth)
    info.skip_code = "gap" if info.skip_reason else None  # every reason _skip_reason gives is missing bars
    if bad and bad_bars == "skip":
        more = f" and {len(bad) - SHOWN_BAD_BARS} more" if len(bad) > SHOWN_BAD_BARS else ""
        info.skip_code = "data"
        info.skip_reason = (f"{len(bad)} bad bar(s) in the context (bad_bars: skip): "
                            f"{'; '.join(info.bad_bar_details)}{more}")
    split = next((b for b in bad if b.kind == "split"), None)
    if split is not None:  # under either policy: dropping the bar leaves the shifted level in the context
        info.skip_code = "data"
        info.skip_reason = (f"{len(bad)} bad bar(s) in the context, one a level shift no fill repairs: "
                            f"{split.describe()}; give split-adjusted bars")
    return bars, info


def _regular(real: pd.DataFrame, session: pd.Timestamp) -> pd.Series:
    # the regular-hours bars of a session: their median volume is the reference for absurd volume
    start, end = mcal.session_window(session, True)
    return pd.Series((real.index >= start) & (real.index < end), index=real.index)


def _check_canonical(frame: pd.DataFrame) -> None:
    # Cheap guards: everything below relies on a sorted, unique UTC index and the OHLCV columns.
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"bars frame lacks column(s) {', '.join(missing)}")
    if not isinstance(frame.index, pd.DatetimeIndex) or frame.index.tz is None:
        raise DataError("bars frame needs a tz-aware DatetimeIndex of bar starts")
    if not frame.index.is_monotonic_increasing or not frame.index.is_unique:
        raise DataError("bars frame index must be sorted and unique")


def _fill_session(real: pd.DataFrame, grid_end: pd.DatetimeIndex) -> tuple[pd.DataFrame, pd.DatetimeIndex]:
    """One session's real bars on every minute from its first bar to grid_end (exclusive), and the filled ones."""
    grid = mcal.minutes_between(real.index[0], max(grid_end, real.index[-1] + ONE_MINUTE))
    return fill_minutes(real, grid), grid[~grid.isin(real.index)]


def _skip_reason(info: PrepareInfo, sessions: list[pd.Timestamp], t: pd.Timestamp, rth: bool) -> Optional[str]:
    if info.bar_count == 0:
        return f"no closed bars in the last {len(sessions)} session(s) up to {info.asof}"
    current = sessions[-1]
    start, end = mcal.session_window(current, rth)
    if t < end and t.floor("min") > start and current.date().isoformat() in info.empty_sessions:
        return f"no bars yet for the current session {current.date()} although it opened at {start.isoformat()}"
    if info.filled_recent > info.max_recent_filled:
        return (f"{info.filled_recent} of the last {min(info.recent_window, info.bar_count)} bars are gap fills "
                f"(limit {info.max_recent_filled}); data too sparse")
    return None


def session_bars(bars: pd.DataFrame, session: mcal.DateLike, rth: bool = True) -> pd.DataFrame:
    """The rows of `bars` inside one session's window (e.g. today's bars for VWAP)."""
    start, end = mcal.session_window(session, rth)
    return bars[(bars.index >= start) & (bars.index < end)]
