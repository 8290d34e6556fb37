"""Probability metrics over sampled future bar paths (pure numpy/pandas, no I/O).

Conventions used throughout:

* ``paths`` is a float array of shape [N, H, 6]; the last axis is
  (open, high, low, close, volume, amount) of each simulated 1-minute bar.
* ``now_close`` is the close of the last observed bar (the path origin, "step 0").
* Quantiles use ``numpy.percentile`` with its default linear interpolation:
  for sorted values x[0..n-1] the q-th percentile sits at position q/100*(n-1).
* A metric that cannot be computed (no session volume, too little history)
  is NaN inside this module and ``None`` in the ``Metrics`` from ``compute_metrics``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from forecast.mc_error import mean_standard_error, quantile_intervals, share_interval

OPEN, HIGH, LOW, CLOSE, VOLUME, AMOUNT = range(6)
NY_TZ = "America/New_York"
VWAP_MODES = ("static", "moving")
DEFAULT_VWAP_MODE = "moving"
MID_KINDS = ("sma", "ema")


# ---------------------------------------------------------------- repair


def _check_paths(paths: np.ndarray) -> np.ndarray:
    arr = np.asarray(paths, dtype=float)
    if arr.ndim != 3 or arr.shape[2] != 6 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"paths must have shape [N>=1, H>=1, 6], got {arr.shape}")
    return arr


def repair_paths(paths: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Return a consistent copy of ``paths`` and repair statistics.

    Rule per bar: high = max(open, high, low, close), low = min(open, high, low,
    close) -- so a swapped high/low is healed -- and negative volume/amount are
    clipped to 0. Open and close are trusted as sampled. The input is not modified.
    stats = {"count": bars with any field changed, "share": count / (N*H)}.
    """
    src = _check_paths(paths)
    out = src.copy()
    ohlc = src[:, :, :4]
    out[:, :, HIGH] = ohlc.max(axis=2)
    out[:, :, LOW] = ohlc.min(axis=2)
    out[:, :, VOLUME:] = np.maximum(src[:, :, VOLUME:], 0.0)
    # NaN == NaN is False; count NaN-in/NaN-out as unchanged.
    same = (out == src) | (np.isnan(out) & np.isnan(src))
    count = int((~same.all(axis=2)).sum())
    n_bars = src.shape[0] * src.shape[1]
    return out, {"count": count, "share": count / n_bars}


# ---------------------------------------------------------------- levels


def session_bars_of_last_day(history: pd.DataFrame) -> pd.DataFrame:
    """Bars whose America/New_York calendar date equals that of the last bar.

    All bars of that ET date are kept (pre/post-market too if present in
    ``history``); filter upstream if only the regular session is wanted.
    """
    idx = history.index
    if not isinstance(idx, pd.DatetimeIndex) or idx.tz is None:
        raise ValueError("history needs a tz-aware DatetimeIndex")
    if len(idx) == 0:
        return history
    days = idx.tz_convert(NY_TZ).normalize()
    return history[days == days[-1]]


def _session_sums(session_bars: pd.DataFrame) -> tuple[float, float]:
    """(sum of typical price * volume, sum of volume) over bars with finite values."""
    cols = session_bars[["high", "low", "close", "volume"]].to_numpy(dtype=float)
    cols = cols[np.isfinite(cols).all(axis=1)]
    tp = cols[:, :3].sum(axis=1) / 3.0
    vol = np.maximum(cols[:, 3], 0.0)
    return float((tp * vol).sum()), float(vol.sum())


def session_vwap(session_bars: pd.DataFrame) -> float:
    """VWAP of the given bars: sum(tp * volume) / sum(volume), tp = (high+low+close)/3.

    Rows with a non-finite value are skipped; NaN when total volume is 0.
    """
    pv, vol = _session_sums(session_bars)
    return pv / vol if vol > 0 else math.nan


def mid_band(close_history: Sequence[float] | np.ndarray | pd.Series,
             window: int = 20, kind: str = "sma") -> float:
    """Bollinger middle band at the last close.

    "sma": mean of the last ``window`` closes (NaN if fewer are available).
    "ema": exponential average over all given closes, alpha = 2/(window+1),
    seeded with the first close (e_0 = c_0, e_t = a*c_t + (1-a)*e_{t-1}).
    """
    closes = np.asarray(close_history, dtype=float)
    if window < 1:
        raise ValueError("window must be >= 1")
    if kind == "sma":
        return float(closes[-window:].mean()) if len(closes) >= window else math.nan
    if kind == "ema":
        if len(closes) == 0:
            return math.nan
        alpha = 2.0 / (window + 1.0)
        ema = closes[0]
        for c in closes[1:]:
            ema = alpha * c + (1.0 - alpha) * ema
        return float(ema)
    raise ValueError(f"kind must be one of {MID_KINDS}, got {kind!r}")


def zscore_mid(close_history: Sequence[float] | np.ndarray | pd.Series, now_close: float,
               window: int = 20, kind: str = "sma") -> float:
    """(now_close - mid) / std of the last ``window`` closes, population std (ddof=0)
    as in Bollinger bands. NaN if fewer than ``window`` closes or std == 0."""
    closes = np.asarray(close_history, dtype=float)
    if len(closes) < window:
        return math.nan
    sd = float(closes[-window:].std(ddof=0))
    mid = mid_band(closes, window, kind)
    return (now_close - mid) / sd if sd > 0 else math.nan


# ---------------------------------------------------------------- touches


def touched(low: np.ndarray, high: np.ndarray, close: np.ndarray, now_close: float,
            level: float | np.ndarray, level0: float | None = None) -> np.ndarray:
    """Per path: does the price touch ``level`` within the horizon?

    Arrays are [N, H]; ``level`` is a scalar or an [N, H] array (moving level,
    value at each simulated minute), ``level0`` the level at step 0 (defaults to
    the scalar ``level``). A path touches if for some minute t
      (a) low_t <= level_t <= high_t (inclusive), or
      (b) the close crosses or meets the level between steps t-1 and t:
          (c_{t-1} - L_{t-1}) * (c_t - L_t) <= 0, with c_0 = now_close, L_0 = level0.
    (b) counts a gap over the level between bars as a touch, and makes a path
    touch trivially when now_close == level0.
    """
    lvl = np.broadcast_to(np.asarray(level, dtype=float), close.shape)
    if level0 is None:
        if np.ndim(level) != 0:
            raise ValueError("level0 is required with a moving level")
        level0 = float(level)
    in_bar = (low <= lvl) & (lvl <= high)
    n = close.shape[0]
    prev_close = np.concatenate([np.full((n, 1), float(now_close)), close[:, :-1]], axis=1)
    prev_level = np.concatenate([np.full((n, 1), float(level0)), lvl[:, :-1]], axis=1)
    crossed = (prev_close - prev_level) * (close - lvl) <= 0
    return (in_bar | crossed).any(axis=1)


def p_hit_level(paths: np.ndarray, now_close: float, level: float) -> float:
    """Share of paths touching a fixed ``level`` (see ``touched``); NaN if level is NaN."""
    if not math.isfinite(level):
        return math.nan
    p = _check_paths(paths)
    return float(touched(p[:, :, LOW], p[:, :, HIGH], p[:, :, CLOSE], now_close, level).mean())


def p_hit_mid(paths: np.ndarray, now_close: float, mid: float) -> float:
    """Share of paths touching the mid band held fixed at its current value."""
    return p_hit_level(paths, now_close, mid)


def moving_vwap(paths: np.ndarray, session_pv: float, session_volume: float) -> np.ndarray:
    """[N, H] VWAP of today's session extended by each path's own simulated bars:
    (session_pv + cumsum(tp*v)) / (session_volume + cumsum(v)). NaN where volume is 0."""
    p = _check_paths(paths)
    tp = (p[:, :, HIGH] + p[:, :, LOW] + p[:, :, CLOSE]) / 3.0
    vol = np.maximum(p[:, :, VOLUME], 0.0)
    cum_pv = session_pv + np.cumsum(tp * vol, axis=1)
    cum_v = session_volume + np.cumsum(vol, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cum_v > 0, cum_pv / cum_v, np.nan)


def p_hit_vwap(paths: np.ndarray, session_bars: pd.DataFrame, now_close: float,
               mode: str = DEFAULT_VWAP_MODE) -> float:
    """Share of paths touching today's VWAP within the horizon (see ``touched``).

    "static": the VWAP of ``session_bars`` held fixed.
    "moving": the VWAP updated minute by minute with the path's own bars and
    simulated volume (Kronos volume is in the input's units, so it adds up with
    the session's). NaN when the session has no volume.
    """
    if mode not in VWAP_MODES:
        raise ValueError(f"vwap mode must be one of {VWAP_MODES}, got {mode!r}")
    pv, vol = _session_sums(session_bars)
    if vol <= 0:
        return math.nan
    vwap0 = pv / vol
    if mode == "static":
        return p_hit_level(paths, now_close, vwap0)
    p = _check_paths(paths)
    levels = moving_vwap(p, pv, vol)
    return float(touched(p[:, :, LOW], p[:, :, HIGH], p[:, :, CLOSE], now_close,
                         levels, level0=vwap0).mean())


# ---------------------------------------------------------------- excursions and volatility


def drawdown_runup(paths: np.ndarray, now_close: float) -> tuple[np.ndarray, np.ndarray]:
    """Per path, as positive fractions of now_close (the "entry"):
    drawdown = max(0, 1 - min_t low_t / now_close)   (max adverse excursion, long)
    runup    = max(0, max_t high_t / now_close - 1)  (max favourable excursion, long)
    A path that never trades below (above) now_close has drawdown (runup) 0."""
    p = _check_paths(paths)
    dd = np.maximum(0.0, 1.0 - p[:, :, LOW].min(axis=1) / now_close)
    ru = np.maximum(0.0, p[:, :, HIGH].max(axis=1) / now_close - 1.0)
    return dd, ru


def _std_ddof1(x: np.ndarray, axis: int = -1) -> np.ndarray | float:
    """Sample std (ddof=1); NaN with fewer than 2 values."""
    if x.shape[axis] < 2:
        shape = list(x.shape)
        del shape[axis]
        return np.full(shape, np.nan) if shape else math.nan
    return x.std(axis=axis, ddof=1)


def realized_vol_paths(paths: np.ndarray, now_close: float) -> np.ndarray:
    """Per path: sample std (ddof=1) of the H one-minute log returns of
    [now_close, c_1, ..., c_H]. NaN if H < 2."""
    p = _check_paths(paths)
    closes = np.concatenate([np.full((p.shape[0], 1), float(now_close)), p[:, :, CLOSE]], axis=1)
    return np.asarray(_std_ddof1(np.diff(np.log(closes), axis=1), axis=1), dtype=float)


def recent_realized_vol(history: pd.DataFrame, vol_window: int = 60) -> float:
    """Sample std (ddof=1) of the last ``vol_window`` one-minute log returns of
    history closes. Returns between bars on different America/New_York dates
    (the overnight gap) are dropped first -- they are not 1-minute moves.
    NaN with fewer than 2 returns."""
    close = history["close"].to_numpy(dtype=float)
    if len(close) < 3:
        return math.nan
    days = history.index.tz_convert(NY_TZ).normalize()
    same_day = np.asarray(days[1:] == days[:-1])
    rets = np.diff(np.log(close))[same_day]
    rets = rets[np.isfinite(rets)][-vol_window:]
    return float(_std_ddof1(rets))


# ---------------------------------------------------------------- the result


def _session_date(session: pd.DataFrame) -> str | None:
    if len(session) == 0:
        return None
    return session.index[-1].tz_convert(NY_TZ).strftime("%Y-%m-%d")


def _json_float(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _pct_key(q: float) -> str:
    return f"p{q:g}"


# Fields whose value depends on the horizon: their JSON keys carry it (p_up_30m).
HORIZON_BOUND = frozenset({
    "p_up", "exp_ret", "ret_percentiles", "p_hit_vwap", "p_hit_mid", "drawdown_p50", "drawdown_p90", "drawdown_p95",
    "runup_p50", "runup_p90", "runup_p95", "p_vol_exceeds_recent"})


@dataclass(frozen=True)
class Metrics:
    """Everything a trader reads off one forecast; None where undefined (no session volume, too little history).

    Every estimate comes with its Monte Carlo error from the N paths (forecast/mc_error.py): ``<name>_ci`` a 95 %
    interval (Jeffreys for a share of paths, order statistics for a quantile), ``exp_ret_se`` a standard error.
    Field names carry no horizon; ``to_dict`` adds the ``_{H}m`` suffix where the JSON, the console text and the
    run log are written (p_up_30m, p_up_30m_ci)."""
    horizon_min: int
    n_paths: int
    now_close: float | None
    p_up: float | None
    p_up_ci: list[float] | None                 # 95 % Monte Carlo interval [lo, hi] of p_up (mc_error)
    exp_ret: float | None
    exp_ret_se: float | None                    # its Monte Carlo standard error
    percentiles: dict[str, list[float | None]]  # per-minute close percentiles, "p10" -> [H values]
    percentiles_ci: dict[str, list[list[float | None]]]  # "p10" -> per minute [lo, hi] (None: N cannot bound it)
    ret_percentiles: dict[str, float | None]    # return at the horizon end, "p10" -> value
    ret_percentiles_ci: dict[str, list[float | None]]
    vwap: float | None
    vwap_mode: str
    vwap_session: str | None  # the New York date whose bars make the VWAP
    p_hit_vwap: float | None
    p_hit_vwap_ci: list[float] | None
    mid_band: float | None
    mid_kind: str
    mid_window: int
    p_hit_mid: float | None
    p_hit_mid_ci: list[float] | None
    zscore_mid: float | None
    drawdown_p50: float | None
    drawdown_p50_ci: list[float | None]
    drawdown_p90: float | None
    drawdown_p90_ci: list[float | None]
    drawdown_p95: float | None
    drawdown_p95_ci: list[float | None]
    runup_p50: float | None
    runup_p50_ci: list[float | None]
    runup_p90: float | None
    runup_p90_ci: list[float | None]
    runup_p95: float | None
    runup_p95_ci: list[float | None]
    p_vol_exceeds_recent: float | None
    p_vol_exceeds_recent_ci: list[float] | None
    recent_vol_1m: float | None
    vol_window: int
    repaired_bars: dict[str, Any]  # what repair_paths changed: count and share of bars

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in field order, horizon-bound keys suffixed with the horizon (p_up_30m)."""
        return {json_key(f.name, self.horizon_min): getattr(self, f.name) for f in fields(self)}


def json_key(name: str, horizon_min: int) -> str:
    """A Metrics field's JSON key: p_up -> p_up_30m, p_up_ci -> p_up_30m_ci, exp_ret_se -> exp_ret_30m_se."""
    base, _, tail = name.rpartition("_")
    if tail in ("ci", "se") and base in HORIZON_BOUND:
        return f"{base}_{horizon_min}m_{tail}"
    return f"{name}_{horizon_min}m" if name in HORIZON_BOUND else name


def compute_metrics(paths: np.ndarray, history: pd.DataFrame, now_close: float,
                    percentiles: Sequence[float] = (10, 50, 90),
                    mid_window: int = 20, mid_kind: str = "sma", vol_window: int = 60,
                    vwap_mode: str = DEFAULT_VWAP_MODE, new_session: bool = False,
                    repair: dict[str, Any] | None = None) -> Metrics:
    """All metrics of repaired ``paths`` [N, H, 6] (see ``repair_paths``; ``repair`` is its statistics).

    ``history`` is the model input (tz-aware UTC index, columns high/low/close/volume); today's session for the
    VWAP is the bars on the New York date of its last bar. ``new_session`` (the forecast covers the next
    session's opening minutes) leaves the VWAP and its touch probability undefined: the VWAP resets at the open.
    """
    if not (math.isfinite(now_close) and now_close > 0):
        raise ValueError(f"now_close must be a positive finite number, got {now_close!r}")
    p = _check_paths(paths)
    if not np.isfinite(p).all():
        raise ValueError(f"paths contain {int((~np.isfinite(p)).sum())} non-finite values")
    if vwap_mode not in VWAP_MODES:
        raise ValueError(f"vwap_mode must be one of {VWAP_MODES}, got {vwap_mode!r}")
    repair = repair if repair is not None else {"count": 0, "share": 0.0}
    closes = p[:, :, CLOSE]
    final_ret = closes[:, -1] / now_close - 1.0
    qs = list(percentiles)

    session = history.iloc[:0] if new_session else session_bars_of_last_day(history)
    hist_close = history["close"].to_numpy(dtype=float)
    mid = mid_band(hist_close, mid_window, mid_kind)
    dd, ru = drawdown_runup(p, now_close)
    dd_q = np.percentile(dd, [50, 90, 95])
    ru_q = np.percentile(ru, [50, 90, 95])
    recent_vol = recent_realized_vol(history, vol_window)
    path_vol = realized_vol_paths(p, now_close)
    p_vol = (float((path_vol > recent_vol).mean())
             if math.isfinite(recent_vol) and np.isfinite(path_vol).all() else math.nan)

    f = _json_float
    n = int(p.shape[0])
    p_up = (closes[:, -1] > now_close).mean()
    p_touch_vwap, p_touch_mid = p_hit_vwap(p, session, now_close, vwap_mode), p_hit_mid(p, now_close, mid)
    levels = [q / 100 for q in qs]
    band_lo, band_hi = quantile_intervals(closes, levels)          # [L, H] each
    ret_lo, ret_hi = quantile_intervals(final_ret, levels)         # [L]
    ex_lo, ex_hi = quantile_intervals(np.stack([dd, ru], axis=1), (0.5, 0.9, 0.95))  # [3, 2]
    return Metrics(
        horizon_min=int(p.shape[1]), n_paths=n, now_close=f(now_close),
        p_up=f(p_up), p_up_ci=share_interval(f(p_up), n),
        exp_ret=f(final_ret.mean()), exp_ret_se=f(mean_standard_error(final_ret)),
        percentiles={_pct_key(q): [f(v) for v in np.percentile(closes, q, axis=0)] for q in qs},
        percentiles_ci={_pct_key(q): [[f(a), f(b)] for a, b in zip(band_lo[i], band_hi[i])] for i, q in enumerate(qs)},
        ret_percentiles={_pct_key(q): f(np.percentile(final_ret, q)) for q in qs},
        ret_percentiles_ci={_pct_key(q): [f(ret_lo[i]), f(ret_hi[i])] for i, q in enumerate(qs)},
        vwap=f(session_vwap(session)), vwap_mode=vwap_mode, vwap_session=_session_date(session),
        p_hit_vwap=f(p_touch_vwap), p_hit_vwap_ci=share_interval(f(p_touch_vwap), n),
        mid_band=f(mid), mid_kind=mid_kind, mid_window=mid_window,
        p_hit_mid=f(p_touch_mid), p_hit_mid_ci=share_interval(f(p_touch_mid), n),
        zscore_mid=f(zscore_mid(hist_close, now_close, mid_window, mid_kind)),
        drawdown_p50=f(dd_q[0]), drawdown_p50_ci=[f(ex_lo[0, 0]), f(ex_hi[0, 0])],
        drawdown_p90=f(dd_q[1]), drawdown_p90_ci=[f(ex_lo[1, 0]), f(ex_hi[1, 0])],
        drawdown_p95=f(dd_q[2]), drawdown_p95_ci=[f(ex_lo[2, 0]), f(ex_hi[2, 0])],
        runup_p50=f(ru_q[0]), runup_p50_ci=[f(ex_lo[0, 1]), f(ex_hi[0, 1])],
        runup_p90=f(ru_q[1]), runup_p90_ci=[f(ex_lo[1, 1]), f(ex_hi[1, 1])],
        runup_p95=f(ru_q[2]), runup_p95_ci=[f(ex_lo[2, 1]), f(ex_hi[2, 1])],
        p_vol_exceeds_recent=f(p_vol), p_vol_exceeds_recent_ci=share_interval(f(p_vol), n),
        recent_vol_1m=f(recent_vol), vol_window=vol_window,
        repaired_bars={"count": int(repair["count"]), "share": f(repair["share"])},
    )
