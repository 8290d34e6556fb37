"""The bars the service holds per symbol: closed minutes from any source, a corrected bar replacing the old one."""
from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np
import pandas as pd

from marketdata.frame import COLUMNS, canonical, empty_frame



class BarBook:
    """Thread-safe store of 1-minute bars keyed by (symbol, bar start). Sources ``upsert``; the loop reads
    ``frame`` and waits for a change with ``wait``. ``arrival`` remembers when each minute first came in
    (monotonic seconds), which is where a forecast's latency starts."""

    def __init__(self, symbols: list[str], on_change: Callable[[str, pd.DataFrame], None] | None = None,
                 days: int = 3) -> None:
        self.symbols = list(symbols)
        self.keep = pd.Timedelta(days=3 * days + 10)  # the span marketdata.calendar.recent_sessions looks back
        self._rows: dict[str, dict[pd.Timestamp, tuple[float, ...]]] = {s: {} for s in self.symbols}
        self._arrival: dict[str, dict[pd.Timestamp, float]] = {s: {} for s in self.symbols}
        self._frames: dict[str, pd.DataFrame | None] = {s: None for s in self.symbols}
        self._cond = threading.Condition()
        self._version = 0
        self.corrections = 0
        self._on_change = on_change

    def upsert(self, symbol: str, bars: pd.DataFrame) -> int:
        """Add or replace bars (canonical frame); returns how many minutes were new or changed. The listener
        gets only those bars, under the book's lock (lock order: book, then hub)."""
        if bars.empty:
            return 0
        now = time.monotonic()
        bars = canonical(bars)
        keep = np.ones(len(bars), dtype=bool)
        with self._cond:
            rows, arrival = self._rows[symbol], self._arrival[symbol]
            for i, (minute, values) in enumerate(zip(bars.index, bars.itertuples(index=False, name=None))):
                old = rows.get(minute)
                if old == values:
                    keep[i] = False
                    continue
                if old is not None:
                    self.corrections += 1
                rows[minute] = values
                arrival.setdefault(minute, now)
            changed = bars[keep]
            if len(changed):
                self._merge_frame(symbol, changed)
                self._version += 1
                self._cond.notify_all()
                # inside the lock: the stream and REST threads both upsert, and the listener (the hub, which
                # never calls the book back) must see a minute's versions in the order the book took them
                if self._on_change is not None:
                    self._on_change(symbol, changed)
        return len(changed)

    def _merge_frame(self, symbol: str, changed: pd.DataFrame) -> None:
        """Keep the cached frame current: appending is the common case (a new minute); anything else rebuilds."""
        cached = self._frames[symbol]
        if cached is not None and not cached.empty and changed.index[0] > cached.index[-1] \
                and changed.index.is_monotonic_increasing:
            frame = pd.concat([cached, changed])
        else:
            frame = None
        rows = self._rows[symbol]
        cut = (frame.index[-1] if frame is not None else max(rows)) - self.keep
        oldest = frame.index[0] if frame is not None else min(rows)
        if oldest < cut - pd.Timedelta(days=1):  # trim a day at a time, not every minute
            for minute in [m for m in rows if m < cut]:
                del rows[minute]
                self._arrival[symbol].pop(minute, None)
            if frame is not None:
                frame = frame[frame.index >= cut]
        self._frames[symbol] = frame

    def frame(self, symbol: str) -> pd.DataFrame:
        """The symbol's bars as a canonical frame (sorted, unique)."""
        with self._cond:
            cached = self._frames[symbol]
            if cached is not None:
                return cached
            rows = self._rows[symbol]
            if not rows:
                return empty_frame()
            index = sorted(rows)
            values = np.array([rows[m] for m in index], dtype=np.float64)
            frame = canonical(pd.DataFrame(values, index=pd.DatetimeIndex(index), columns=list(COLUMNS)))
            self._frames[symbol] = frame
            return frame

    def last_minute(self, symbol: str) -> pd.Timestamp | None:
        frame = self.frame(symbol)
        return frame.index[-1] if len(frame) else None

    def arrival(self, symbol: str, minute: pd.Timestamp) -> float | None:
        with self._cond:
            return self._arrival[symbol].get(minute)

    def wait(self, version: int, timeout: float) -> int:
        """Block until the book changes past ``version`` or ``timeout`` seconds pass; the current version."""
        with self._cond:
            self._cond.wait_for(lambda: self._version != version, timeout=max(0.0, timeout))
            return self._version

    def poke(self) -> None:
        """Wake every waiter (stop, a clock jump)."""
        with self._cond:
            self._version += 1
            self._cond.notify_all()
