"""One forecast per closed bar, through the one ForecastPipeline, on the market's calendar.

Each pass takes the NEWEST closed bar of every symbol that has one not yet forecast: bars that arrived while
the previous forecast ran are never queued (they are recorded as skipped, "superseded"). The due symbols are
prepared one by one and sampled in one batched engine call. A forecast that is ready later than ``budget``
seconds after its bar arrived is not published (skipped, "overrun"); a context the pipeline refuses (gaps
beyond the gap policy, a quiet window, the session's end) is skipped with the pipeline's own reason.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import pandas as pd

from live.memory import fix_mmap_threshold
from forecast.errors import ModelError, Skipped
from forecast.pipeline import Context, ForecastPipeline
from live.book import BarBook
from marketdata import calendar as mcal
from marketdata.frame import ONE_MINUTE, first_line
from marketdata.stamps import log_stamp

log = logging.getLogger(__name__)
# Skip codes that mean something is wrong (logged as warnings): the engine failed, it was too slow, the bars are
# missing or unusable. "superseded", "event" and "session_end" are the loop working as designed (info).
FAULT_SKIPS = frozenset({"error", "overrun", "gap", "data"})
IDLE_WAIT_S = 1.0  # longest wait between looks at the clock and the stop flag


@dataclass
class Due:
    symbol: str
    minute: pd.Timestamp   # the newest closed bar's start
    arrived: float         # monotonic time it came in (latency and the budget start here)


class ForecastLoop:
    """Runs until ``stop`` is set; ``step`` does one pass (tests drive it directly)."""

    def __init__(self, pipelines: dict[str, ForecastPipeline], book: BarBook, clock: Any, outputs: Any, hub: Any,
                 *, budget_s: float, rth: bool, provenance: dict[str, dict[str, Any]] | None = None,
                 stop: threading.Event | None = None) -> None:
        self.pipelines, self.book, self.clock, self.outputs, self.hub = pipelines, book, clock, outputs, hub
        self.budget_s, self.rth = float(budget_s), rth
        self.provenance = provenance or {}
        self.stop = stop or threading.Event()
        self.done: dict[str, pd.Timestamp] = {}     # newest minute handled (forecast or skipped) per symbol
        self.skips: deque = deque(maxlen=1000)  # (symbol, minute, reason), newest last
        self._closed_note: pd.Timestamp | None = None

    # --------------------------------------------------------------------------------------------- running

    def run(self) -> None:
        fix_mmap_threshold()  # a process that forecasts for days: keep the engine's large blocks off the heap
        version = -1
        while not self.stop.is_set():
            if self.step():
                continue
            version = self.book.wait(version, self._idle_wait())

    def _idle_wait(self) -> float:
        """Wait for the next bar; while the market is closed, say once when it opens (bars still wake us)."""
        now = self.clock.now()
        status = mcal.market_status(now, self.rth)
        if not status.is_open and status.next_open is not None and self._closed_note != status.next_open:
            self._closed_note = status.next_open
            log.info("market closed; sleeping until the open at %s", log_stamp(status.next_open))
        return IDLE_WAIT_S

    def due(self, now: pd.Timestamp) -> list[Due]:
        """Per symbol, its newest closed bar inside a session window, if not handled yet; the minutes passed
        over since the last one handled are recorded as superseded."""
        out = []
        for symbol in self.pipelines:
            frame = self.book.frame(symbol)
            closed = frame.index[frame.index + ONE_MINUTE <= now]
            if closed.empty:
                continue
            minute = closed[-1]
            if mcal.session_containing(minute, self.rth) is None:
                continue  # pre/post market bars under rth, or bars of a closed day: nothing to forecast
            last = self.done.get(symbol)
            if last is not None and minute <= last:
                continue
            if last is not None:
                passed = closed[(closed > last) & (closed < minute)]
                for m in passed:
                    if mcal.session_containing(m, self.rth) is not None:
                        self._skip(symbol, m, "superseded", f"a newer bar ({log_stamp(minute)}) arrived before "
                                                            "this one's forecast could start")
            out.append(Due(symbol, minute, self.book.arrival(symbol, minute) or time.monotonic()))
        return out

    def step(self) -> bool:
        """One pass: forecast every due symbol at once; False when nothing was due."""
        due = self.due(self.clock.now())
        if not due:
            return False
        for d in due:
            self.done[d.symbol] = d.minute
        try:
            self.forecast(due)
        except Exception as exc:  # noqa: BLE001 - the service keeps running; the page shows the error
            message = first_line(exc) if isinstance(exc, ModelError) else f"{type(exc).__name__}: {first_line(exc)}"
            log.error("forecast of %s failed: %s", ", ".join(d.symbol for d in due), message,
                      exc_info=not isinstance(exc, ModelError))
            self.hub.on_error(message)
            for d in due:
                self._skip(d.symbol, d.minute, "error", message)
        return True

    # --------------------------------------------------------------------------------------------- one batch

    def forecast(self, due: list[Due]) -> None:
        ready: list[tuple[Due, Context, float]] = []
        for d in due:
            t0 = time.perf_counter()
            now = d.minute + ONE_MINUTE  # the bar's close: the forecast equals `cli --asof` at that instant
            try:
                ctx = self.pipelines[d.symbol].prepare(self.book.frame(d.symbol), now)
            except Skipped as exc:
                self._skip(d.symbol, d.minute, exc.code, str(exc))
                continue
            ready.append((d, ctx, t0))
        if not ready:
            return
        t1 = time.perf_counter()
        first = self.pipelines[ready[0][0].symbol]
        raws = first.sample([ctx for _, ctx, _ in ready])  # one engine call for every symbol of this shape
        sample_s = time.perf_counter() - t1
        for (d, ctx, t0), raw in zip(ready, raws):
            took = time.monotonic() - d.arrived
            if took > self.budget_s:
                self._skip(d.symbol, d.minute, "overrun", f"the forecast was ready {took:.1f} s after its bar "
                                                           f"arrived, over the time budget of {self.budget_s:g} s")
                continue
            status = mcal.market_status(ctx.now, self.rth)
            fc = self.pipelines[d.symbol].finish(
                ctx, raw, provenance=self.provenance.get(d.symbol), market_open=status.is_open,
                status_note=status.describe(), timings={"prepare": t1 - t0, "model_load": 0.0, "sample": sample_s},
                started=t0)
            self.outputs.publish(d.symbol, fc, d.arrived)
            log.info("%s bar %s: P(up) %.3f, %d paths, ready %.2f s after the bar arrived", d.symbol,
                     log_stamp(d.minute), fc.metrics.p_up, fc.paths.shape[0], time.monotonic() - d.arrived)

    def _skip(self, symbol: str, minute: pd.Timestamp, code: str, detail: str) -> None:
        reason = f"{code}: {detail}"
        self.skips.append((symbol, minute, reason))
        # a skip by design (a newer bar came first, an event window, the session's end) is news, not a fault
        log.log(logging.WARNING if code in FAULT_SKIPS else logging.INFO, "%s bar %s skipped: %s", symbol,
                log_stamp(minute), reason)
        self.hub.on_skip(symbol, minute, code, detail)
