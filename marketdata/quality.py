"""Bars a market cannot print, found before they reach the model.

A bar is bad when
* a price is not a positive finite number, or the prices contradict each other (high below open, close or low;
  low above open or close);
* its volume is negative, or more than ``volume_multiple`` times the median volume of the context (the median
  of the non-zero volumes of the regular-hours bars, all bars when there are fewer than 30 of those);
* it is a bad tick: one of its prices lies more than ``move_multiple`` times the tape's typical 1-minute move
  away from the bars around it, on both sides. The typical move is the median absolute 1-minute log change of
  the close (non-zero changes between consecutive bars of a session, over the whole context), or the median
  bar range log(high / low) when that is larger (a tape whose closes rarely change); "around it" is
  the median close of the ``NEIGHBOURS`` bars before it and, separately, of those after it in the same
  session; the bar's distance is the smaller of the two, so a level shift that stays (a gap, news) is not a
  tick, while a print that jumps away and comes back is. The first and the newest bar of a session have only
  one side to compare with: a genuine move of more than ``move_multiple`` typical moves within the newest minute
  counts as bad until the next bar confirms it.

* it looks like an unadjusted split: its close is a common split ratio (2:1, 3:1, 3:2, 10:1, ... or a reverse
  split 1:2, 1:10, ...) away from the close before it, within ``SPLIT_TOLERANCE`` (10 %, room for an overnight
  gap on top of the split), and the new level holds: the median close of the bar and the ones after it (at least
  two, up to ``NEIGHBOURS``) stands the same ratio away from the median of the ``NEIGHBOURS`` bars before it.
  Sessions are compared across their boundary (a split happens overnight). Such a bar cannot be dropped and
  filled (the level stays shifted), so a context holding one is never forecast, under either policy. The
  smallest ratio, 3:2, means a move of 27 % down or more; the largest one-bar move of the real tapes (QQQ 2025
  with extended hours and every overnight gap, QQQ 2019, SPY 2013) is 3.9 %. A dividend (well under 2 % for
  these ETFs) is an ordinary overnight gap by size alone: no rule on prices can tell it, and none is tried.

With the defaults (50 typical moves, about 1.7 % for QQQ whose typical move is 0.035 %; 1000 times the
median volume) the real QQQ 2025, QQQ 2019 and SPY 2013 tapes flag nothing in regular hours (the largest
real bar sits at about 30 typical moves); in extended hours QQQ 2025 flags 4 bars in 45 sessions, each a
premarket print 1.5-4 % away from the trades before and after it (tests/test_bar_quality.py).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

NEIGHBOURS = 5          # bars on each side that define the local price level
SPLIT_RATIOS = ((3, 2), (2, 1), (5, 2), (3, 1), (4, 1), (5, 1), (6, 1), (7, 1), (8, 1), (10, 1), (15, 1), (20, 1),
                (25, 1), (30, 1), (40, 1), (50, 1), (100, 1))  # a:b, a shares for b; the price becomes b/a of itself
SPLIT_TOLERANCE = float(np.log(1.10))  # the ratio, up to an overnight gap of 10 % either way
MIN_TYPICAL_MOVE = 1e-5  # floor of the typical move (a flat tape would otherwise make any move a tick)
MIN_CORE_BARS = 30      # regular-hours bars needed before their median volume is the reference
PRICES = ("open", "high", "low", "close")
BAD_BAR_POLICIES = ("fill", "skip")  # what prepare_bars does with a bad bar (config key bad_bars)


@dataclass(frozen=True)
class BarRules:
    move_multiple: float = 50.0
    volume_multiple: float = 1000.0


@dataclass(frozen=True)
class BadBar:
    time: pd.Timestamp
    reason: str
    kind: str = "bad"  # "split": a persistent level shift that filling cannot repair (the context is refused)

    def describe(self) -> str:
        return f"{self.time.isoformat().replace('+00:00', 'Z')} {self.reason}"


def find_bad_bars(sessions: Sequence[pd.DataFrame], rules: BarRules,
                  core: Sequence[pd.Series] | None = None) -> list[BadBar]:
    """The bad bars among ``sessions`` (one canonical frame of real bars per session, oldest first), in time order.
    ``core`` marks, per session, the regular-hours bars whose median volume is the reference (None: all)."""
    keep = [i for i, s in enumerate(sessions) if len(s)]
    sessions, core = [sessions[i] for i in keep], None if core is None else [core[i] for i in keep]
    if not sessions:
        return []
    found: dict[pd.Timestamp, str] = {}
    logs = []
    for frame in sessions:
        reasons = _impossible(frame)
        found.update(reasons)
        logp = _log_prices(frame)
        logp[frame.index.isin(list(reasons))] = np.nan  # an impossible bar is nobody's neighbour
        logs.append(logp)
    splits = _split_like(sessions, logs)
    for t, reason in splits.items():
        found.setdefault(t, reason)
    typical = _typical_move(logs)
    limit = rules.move_multiple * typical
    for frame, logp in zip(sessions, logs):
        dist, field = _distance_from_neighbours(logp)
        for i in np.flatnonzero(dist > limit):
            name = PRICES[int(field[i])]
            found.setdefault(frame.index[i], f"{name} {frame[name].iloc[i]:.6g} is {dist[i] / typical:.0f}x "
                             f"the typical 1-minute move ({typical:.3%}) away from the bars around it "
                             f"(limit {rules.move_multiple:g}x)")
    found.update(_absurd_volume(sessions, core, rules, found))
    return [BadBar(t, found[t], "split" if t in splits and found[t] == splits[t] else "bad") for t in sorted(found)]


def split_ratio(step: float) -> str | None:
    """The split a change of the log price looks like ("2:1", or "1:10" for a reverse split), or None."""
    for a, b in SPLIT_RATIOS:
        if abs(step + np.log(a / b)) < SPLIT_TOLERANCE:
            return f"{a}:{b}"
        if abs(step - np.log(a / b)) < SPLIT_TOLERANCE:
            return f"{b}:{a}"
    return None


def _split_like(sessions: Sequence[pd.DataFrame], logs: Sequence[np.ndarray]) -> dict[pd.Timestamp, str]:
    """Bars whose close jumps by a split ratio from the close before (across sessions too) and stays there."""
    times = sessions[0].index.append([f.index for f in sessions[1:]])
    close = np.concatenate([lp[:, 3] for lp in logs])
    ok = np.isfinite(close)
    times, close = times[ok], close[ok]
    smallest = min(np.log(a / b) for a, b in SPLIT_RATIOS) - SPLIT_TOLERANCE
    out = {}
    for i in np.flatnonzero(np.abs(np.diff(close)) > smallest) + 1:
        if i + 1 >= len(close):
            continue  # the newest bar: not yet a level (the tick rule judges it)
        ratio = split_ratio(close[i] - close[i - 1])
        level = np.median(close[i:i + NEIGHBOURS]) - np.median(close[max(0, i - NEIGHBOURS):i])
        if ratio is not None and split_ratio(level) == ratio:
            t = times[i]
            before, now = np.exp(close[i - 1]), np.exp(close[i])
            out[t] = (f"close {now:.6g} is {now / before - 1:+.0%} from the close before it ({before:.6g}) and the "
                      f"level holds: it looks like an unadjusted {ratio} split, which no fill can repair")
    return out


def contradictory_prices(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The one high/low rule, as two masks over the bars: high below the open, close or low; low above the open
    or close. A comparison with a missing price is False (missing prices are another check's business)."""
    o, h, lo, c = (frame[k].to_numpy(np.float64) for k in PRICES)
    return (h < o) | (h < c) | (h < lo), (lo > o) | (lo > c)


def _impossible(frame: pd.DataFrame) -> dict[pd.Timestamp, str]:
    o, h, lo, c, v = (frame[k].to_numpy(np.float64) for k in ("open", "high", "low", "close", "volume"))
    out: dict[pd.Timestamp, str] = {}
    prices = np.stack([o, h, lo, c], axis=1)
    high_below, low_above = contradictory_prices(frame)
    checks = (
        (~np.isfinite(prices).all(axis=1) | (prices <= 0).any(axis=1), "has a price that is not positive"),
        (high_below, "has a high below its open, close or low"),
        (low_above, "has a low above its open or close"),
        (~np.isfinite(v) | (v < 0), "has a negative or missing volume"),
    )
    for mask, reason in checks:
        for i in np.flatnonzero(mask):
            out.setdefault(frame.index[i], reason)
    return out


def _log_prices(frame: pd.DataFrame) -> np.ndarray:
    values = frame[list(PRICES)].to_numpy(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(values > 0, np.log(np.where(values > 0, values, 1.0)), np.nan)


def _typical_move(logs: Sequence[np.ndarray]) -> float:
    """The tape's typical 1-minute move: the larger of the median non-zero |change of the log close| between
    consecutive bars of a session and the median non-zero bar range log(high / low)."""
    moves, ranges = [np.empty(0)], [np.empty(0)]
    for logp in logs:
        ok = logp[np.isfinite(logp[:, 3])]
        step = np.abs(np.diff(ok[:, 3]))
        moves.append(step[step > 0])
        span = ok[:, 1] - ok[:, 2]
        ranges.append(span[span > 0])
    typical = [float(np.median(x)) for x in (np.concatenate(moves), np.concatenate(ranges)) if len(x)]
    return max(typical + [MIN_TYPICAL_MOVE])


def _distance_from_neighbours(logp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per bar: the smaller over the two sides of (largest |log price - median log close of that side's
    NEIGHBOURS valid bars|), and which price that is; 0 for a bar with no valid neighbour, NaN for an invalid
    bar."""
    n = len(logp)
    close = logp[:, 3]
    valid = np.flatnonzero(np.isfinite(close))
    dist, field = np.full(n, np.nan), np.zeros(n, dtype=int)
    m = len(valid)
    if m == 0:
        return dist, field
    pad = np.concatenate([np.full(NEIGHBOURS, np.nan), close[valid], np.full(NEIGHBOURS, np.nan)])
    windows = np.lib.stride_tricks.sliding_window_view(pad, NEIGHBOURS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows at the session's edges
        before = np.nanmedian(windows[:m], axis=1)                                # valid bars i-5 .. i-1
        after = np.nanmedian(windows[NEIGHBOURS + 1:NEIGHBOURS + 1 + m], axis=1)  # valid bars i+1 .. i+5
    own = logp[valid]
    gap_b, gap_a = np.abs(own - before[:, None]), np.abs(own - after[:, None])  # NaN where a side is missing
    side_b, side_a = gap_b.max(axis=1), gap_a.max(axis=1)
    use_after = np.isnan(side_b) | (side_a < side_b)
    gaps = np.where(use_after[:, None], gap_a, gap_b)
    best = np.where(use_after, side_a, side_b)
    dist[valid] = np.where(np.isnan(best), 0.0, best)
    field[valid] = np.argmax(np.nan_to_num(gaps, nan=-1.0), axis=1)
    return dist, field


def _absurd_volume(sessions: Sequence[pd.DataFrame], core: Sequence[pd.Series] | None, rules: BarRules,
                   known: dict[pd.Timestamp, str]) -> dict[pd.Timestamp, str]:
    vols = [f["volume"].to_numpy(np.float64) for f in sessions]
    ref = np.concatenate([v[np.asarray(m, bool)] for v, m in zip(vols, core)]) if core is not None else np.empty(0)
    ref = ref[np.isfinite(ref) & (ref > 0)]
    if len(ref) < MIN_CORE_BARS:
        ref = np.concatenate(vols)
        ref = ref[np.isfinite(ref) & (ref > 0)]
    if not len(ref):
        return {}
    median = float(np.median(ref))
    limit = rules.volume_multiple * median
    out = {}
    for frame, v in zip(sessions, vols):
        for i in np.flatnonzero(v > limit):
            t = frame.index[i]
            if t not in known:
                out[t] = (f"volume {v[i]:.6g} is {v[i] / median:.0f}x the median volume {median:.6g} "
                          f"(limit {rules.volume_multiple:g}x)")
    return out
