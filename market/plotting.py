"""Fan chart of sampled close paths (matplotlib, Agg canvas, atomic PNG write)."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.dates as mdates
import numpy as np
import pandas as pd
# A Figure on an explicit Agg canvas: no display needed (cron) and no change to
# the process-wide pyplot backend.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from market.artifacts import atomic_write_bytes

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


def _pct(summary: Mapping[str, Any], prefix: str) -> Any:
    """First value whose key starts with ``prefix`` (e.g. 'p_up_' -> p_up_30m)."""
    return next((v for k, v in summary.items() if k.startswith(prefix)), None)


def _title(summary: Mapping[str, Any], horizon: int, symbol: str | None) -> str:
    sym = symbol or summary.get("symbol") or ""
    asof = summary.get("asof")
    when = (pd.Timestamp(asof).tz_convert(NY_TZ).strftime("%Y-%m-%d %H:%M ET")
            if asof else "")
    p_up, exp_ret = _pct(summary, "p_up_"), _pct(summary, "exp_ret_")
    stats = [f"P(up {horizon}m) = {p_up:.1%}" if p_up is not None else "",
             f"E[ret {horizon}m] = {exp_ret:+.3%}" if exp_ret is not None else ""]
    return "\n".join(s for s in (f"{sym}  {when}".strip(), "   ".join(s for s in stats if s)) if s)


def fan_chart(history: pd.DataFrame | pd.Series | None,
              future_times: Sequence[Any] | pd.DatetimeIndex,
              paths_close: np.ndarray, summary: Mapping[str, Any],
              out_png: str | os.PathLike[str], n_show: int = 50, seed: int = 0,
              symbol: str | None = None) -> Path:
    """Draw recent closes, ``n_show`` sampled paths (seeded choice), the p10-p90
    band, the median, and the VWAP / mid-band levels; write the PNG atomically.

    ``paths_close`` is [N, H]; the band and median are computed from it with
    numpy's linear percentiles. Each path is drawn from (last history time,
    now_close) so the fan starts at the present. The x axis shows New York time.
    """
    closes = np.asarray(paths_close, dtype=float)
    times = _utc_index(future_times)
    if closes.ndim != 2 or closes.shape[1] != len(times):
        raise ValueError(f"paths_close {closes.shape} does not match {len(times)} future times")
    hist = _history_close(history)
    now_close = summary.get("now_close")
    if now_close is None and hist is not None:
        now_close = float(hist.iloc[-1])
    # prepend the present so every line starts where history ends
    if hist is not None and now_close is not None:
        times = times.insert(0, hist.index[-1])
        closes = np.hstack([np.full((len(closes), 1), float(now_close)), closes])
    x = times.to_pydatetime()

    fig = Figure(figsize=(10, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if hist is not None:
        ax.plot(hist.index.to_pydatetime(), hist.to_numpy(), color="black", lw=1.2, label="close")
    rng = np.random.default_rng(seed)
    shown = rng.choice(len(closes), size=min(n_show, len(closes)), replace=False)
    for i in shown:
        ax.plot(x, closes[i], color="tab:blue", lw=0.6, alpha=0.25)
    p10, p50, p90 = np.percentile(closes, [10, 50, 90], axis=0)
    ax.fill_between(x, p10, p90, color="tab:blue", alpha=0.2, label="p10-p90")
    ax.plot(x, p50, color="navy", lw=2, label="median")
    ax.axvline(x[0], color="grey", lw=0.8, ls=":")  # the present
    for key, color, name in (("vwap", "tab:orange", "VWAP"), ("mid_band", "tab:green", "mid band")):
        level = summary.get(key)
        if level is not None:
            ax.axhline(level, color=color, lw=1, ls="--", label=f"{name} {level:.2f}")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=NY_TZ))
    ax.set_xlabel("time (New York)")
    ax.set_ylabel("price")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(_title(summary, len(paths_close[0]), symbol), fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(out_png, buf.getvalue())
