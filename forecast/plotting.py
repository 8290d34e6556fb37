"""Fan chart of sampled close paths (matplotlib, Agg canvas, atomic PNG write)."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
# A Figure on an explicit Agg canvas: no display needed (cron) and no change to
# the process-wide pyplot backend.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from forecast.artifacts import atomic_write_bytes

NY_TZ = "America/New_York"
HISTORY_MINUTES = 120


def _utc_index(times: Sequence[Any] | pd.DatetimeIndex) -> pd.DatetimeIndex:
    idx = pd.DatetimeIndex(times)
    if idx.tz is None:
        raise ValueError("times must be timezone-aware")
    return idx.tz_convert("UTC")


def _history_close(history: pd.DataFrame | pd.Series | None) -> pd.Series | None:
    """Closes of the last HISTORY_MINUTES minutes, or None."""
    if history is None or len(history) == 0:
        return None
    close = history["close"] if isinstance(history, pd.DataFrame) else history
    close = close.copy()
    close.index = _utc_index(close.index)
    return close[close.index > close.index[-1] - pd.Timedelta(minutes=HISTORY_MINUTES)]


def _metrics(summary: Mapping[str, Any]) -> Mapping[str, Any]:
    """The metrics dict: the CLI nests compute_metrics' output under "summary";
    a flat dict (compute_metrics' own output plus symbol/asof) works too."""
    nested = summary.get("summary")
    return nested if isinstance(nested, Mapping) else summary


def _first(metrics: Mapping[str, Any], prefix: str) -> Any:
    """First value whose key starts with ``prefix`` (e.g. 'p_up_' -> p_up_30m)."""
    return next((v for k, v in metrics.items() if k.startswith(prefix)), None)


def _title(summary: Mapping[str, Any], horizon: int, symbol: str | None) -> str:
    sym = symbol or summary.get("symbol") or ""
    asof = summary.get("asof")
    when = pd.Timestamp(asof).tz_convert(NY_TZ).strftime("%Y-%m-%d %H:%M ET") if asof else ""
    start = summary.get("forecast_start")
    if start:  # the fan's first minute: at 09:00 ET (pre-open) it is 09:30
        when += f", fan from {pd.Timestamp(start).tz_convert(NY_TZ).strftime('%H:%M ET')}"
    m = _metrics(summary)
    p_up, exp_ret = _first(m, "p_up_"), _first(m, "exp_ret_")
    stats = [f"P(up {horizon}m) = {p_up:.1%}" if p_up is not None else "",
             f"E[ret {horizon}m] = {exp_ret:+.3%}" if exp_ret is not None else ""]
    ext = summary.get("extended_hours")
    if ext and m.get(f"p_up_{horizon}m_vs_ext") is not None:
        stats[0] += f" vs close, {m[f'p_up_{horizon}m_vs_ext']:.1%} vs {ext['session']}"
    return "\n".join(s for s in (f"{sym}  {when}".strip(), "   ".join(s for s in stats if s)) if s)


def _time_axis(ax: Any, times: pd.DatetimeIndex) -> None:
    """Label bar positions with New York clock times; mark each new day.

    The x axis is the bar position, not the time, so the overnight gap (a
    forecast made after the close for the next open) takes no room.
    """
    et = times.tz_convert(NY_TZ)
    step = max(1, len(et) // 8)
    quarter = [i for i, t in enumerate(et) if t.minute % 15 == 0]
    ticks = quarter if 2 <= len(quarter) <= 12 else list(range(0, len(et), step))
    ax.set_xticks(ticks)
    ax.set_xticklabels([et[i].strftime("%H:%M") for i in ticks])
    for i in range(1, len(et)):
        if et[i].date() != et[i - 1].date():
            ax.axvline(i - 0.5, color="grey", lw=0.8, ls="--")
            ax.annotate(et[i].strftime("%a %d %b"), (i - 0.5, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(3, -12), textcoords="offset points", fontsize=8, color="grey")
    ax.set_xlim(-0.5, len(et) - 0.5)


def fan_chart(history: pd.DataFrame | pd.Series | None,
              future_times: Sequence[Any] | pd.DatetimeIndex,
              paths_close: np.ndarray, summary: Mapping[str, Any],
              out_png: str | os.PathLike[str], n_show: int = 50, seed: int = 0,
              symbol: str | None = None) -> Path:
    """The fan chart (see ``fan_chart_png``) written atomically to ``out_png``."""
    return atomic_write_bytes(out_png, fan_chart_png(history, future_times, paths_close, summary, n_show, seed,
                                                     symbol))


def fan_chart_png(history: pd.DataFrame | pd.Series | None,
                  future_times: Sequence[Any] | pd.DatetimeIndex,
                  paths_close: np.ndarray, summary: Mapping[str, Any],
                  n_show: int = 50, seed: int = 0, symbol: str | None = None) -> bytes:
    """Draw recent closes, ``n_show`` sampled paths (seeded choice), the p10-p90
    band, the median, and the VWAP / mid-band levels; write the PNG atomically.

    ``paths_close`` is [N, H]; the band and median are computed from it with
    numpy's linear percentiles. Lines start at (last history bar, now_close) so
    the fan grows out of the present. The x axis shows New York time.
    """
    closes = np.asarray(paths_close, dtype=float)
    future = _utc_index(future_times)
    if closes.ndim != 2 or closes.shape[1] != len(future):
        raise ValueError(f"paths_close {closes.shape} does not match {len(future)} future times")
    hist = _history_close(history)
    m = _metrics(summary)
    now_close = summary.get("now_close", m.get("now_close"))
    n_hist = 0 if hist is None else len(hist)
    x_fut = np.arange(n_hist, n_hist + len(future))
    if hist is not None:
        now_close = float(hist.iloc[-1]) if now_close is None else float(now_close)
        # prepend the present so every line starts where history ends
        x_fut = np.concatenate([[n_hist - 1], x_fut])
        closes = np.hstack([np.full((len(closes), 1), now_close), closes])
        times = hist.index.append(future)
    else:
        times = future

    fig = Figure(figsize=(10, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if hist is not None:
        ax.plot(np.arange(n_hist), hist.to_numpy(), color="black", lw=1.2, label="close")
        ax.axvline(n_hist - 1, color="grey", lw=0.8, ls=":")  # the present
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(closes), size=min(n_show, len(closes)), replace=False):
        ax.plot(x_fut, closes[i], color="tab:blue", lw=0.6, alpha=0.25)
    p10, p50, p90 = np.percentile(closes, [10, 50, 90], axis=0)
    ax.fill_between(x_fut, p10, p90, color="tab:blue", alpha=0.2, label="p10-p90")
    ax.plot(x_fut, p50, color="navy", lw=2, label="median")
    for key, color, name in (("vwap", "tab:orange", "VWAP"), ("mid_band", "tab:green", "mid band")):
        level = m.get(key)
        if level is not None:
            ax.axhline(level, color=color, lw=1, ls="--", label=f"{name} {level:.2f}")
    ext = summary.get("extended_hours")
    if ext:  # the price trading now, while the fan grows out of the regular close
        bar = pd.Timestamp(ext["bar"]).tz_convert(NY_TZ).strftime("%H:%M")
        ax.axhline(ext["price"], color="tab:red", lw=1, ls=":",
                   label=f"{ext['session']} {ext['price']:.2f} ({bar} bar, {ext['gap_to_close']:+.2%}); "
                         "paths start from the regular close")
    _time_axis(ax, times)
    ax.set_xlabel("time (New York)")
    ax.set_ylabel("price")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(_title(summary, len(future), symbol), fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
