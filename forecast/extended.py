"""The latest extended-hours price when the forecast runs on regular hours only (rth: true).

Before the open (or after the close) the model's context ends at the last regular bar, so its paths start from
the regular close; a trader at 09:00 ET still needs the pre-market price beside it. This finds the last
extended-hours bar closed by the data's cut after the last regular bar, and turns the paths' final closes into
P(up) and the expected return relative to that price too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from marketdata import calendar as mcal

ONE_MINUTE = pd.Timedelta(minutes=1)
NEW_YORK = "America/New_York"


@dataclass(frozen=True)
class ExtendedPrice:
    bar: pd.Timestamp       # start of the latest extended-hours bar (UTC)
    price: float            # its close
    session: str            # "pre-market" or "after-hours"
    regular_close: float    # the close the paths start from
    regular_bar: pd.Timestamp

    @property
    def gap(self) -> float:
        """The extended-hours price relative to the regular close (0.0031 = +0.31 %)."""
        return self.price / self.regular_close - 1.0

    def to_dict(self) -> dict[str, Any]:
        def iso(t: pd.Timestamp) -> str:
            return t.isoformat().replace("+00:00", "Z")

        return {"price": self.price, "session": self.session, "bar": iso(self.bar),
                "bar_new_york": self.bar.tz_convert(NEW_YORK).isoformat(), "regular_close": self.regular_close,
                "regular_bar": iso(self.regular_bar), "gap_to_close": self.gap,
                "paths_start_from": "regular close"}

    def note(self) -> str:
        return note_of(self.to_dict())


def note_of(ext: dict[str, Any]) -> str:
    """The summary's note about an extended-hours price (ExtendedPrice.to_dict), for readers of the notes."""
    when = pd.Timestamp(ext["bar"]).tz_convert(NEW_YORK).strftime("%H:%M %Z")
    return (f"{ext['session']} {ext['price']:.2f} ({when} bar, {ext['gap_to_close']:+.2%} vs the regular close "
            f"{ext['regular_close']:.2f}); the paths start from the regular close")


def latest_extended(frame: pd.DataFrame, regular_bars: pd.DataFrame, cut: pd.Timestamp,
                    rth: bool) -> ExtendedPrice | None:
    """The last bar of ``frame`` (raw canonical bars) closed by ``cut`` after the last regular bar, inside an
    extended-hours window (04:00-20:00 ET), with a usable close; None with rth false or when there is none."""
    if not rth or regular_bars.empty or frame.empty:
        return None
    last_regular = regular_bars.index[-1]
    later = frame[(frame.index > last_regular) & (frame.index + ONE_MINUTE <= cut)]
    for t, close in zip(reversed(later.index), reversed(later["close"].to_numpy(dtype=float))):
        if not (math.isfinite(close) and close > 0):
            continue
        if mcal.session_containing(t, rth=False) is None or mcal.session_containing(t, rth=True) is not None:
            continue
        session = "pre-market" if t.tz_convert(NEW_YORK).hour < 12 else "after-hours"
        return ExtendedPrice(bar=t, price=float(close), session=session,
                             regular_close=float(regular_bars["close"].iloc[-1]), regular_bar=last_regular)
    return None


def relative_to(ext: ExtendedPrice, final_closes: np.ndarray, horizon: int) -> dict[str, float]:
    """P(up) and the expected return of the paths' final closes relative to the extended-hours price (the same
    rule as against the regular close: strictly above counts as up)."""
    final = np.asarray(final_closes, dtype=float)
    return {f"p_up_{horizon}m_vs_ext": float((final > ext.price).mean()),
            f"exp_ret_{horizon}m_vs_ext": float((final / ext.price - 1.0).mean())}
