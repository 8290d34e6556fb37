"""The live service's shared state: what the forecasting loop produced, kept for the web page, the API and /metrics.

Producer side (the forecasting loop, any thread): ``set_model``, ``on_bars``, ``on_forecast``, ``on_skip``,
``on_error``, ``on_reconnect``, ``on_output_error``. Consumer side (the web app, on its event loop): ``latest``,
``history``, ``health``, ``page_state``, ``subscribe`` / ``unsubscribe``. Every method takes one lock, so
producer calls from other threads are safe; SSE subscribers are asyncio queues fed through
``loop.call_soon_threadsafe``, so the producer never blocks on a slow browser.

Each forecast's outcome and the day's reliability come from ``live.scorecard`` (the backtest's rules), on the
bars the loop hands in.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry, Counter as PromCounter, Gauge, Histogram

from forecast.metrics import session_bars_of_last_day
from live.scorecard import iso, make_record, num, p_up_history, reconcile, reliability
from marketdata import calendar as mcal
from marketdata.prepare import session_bars
from marketdata.frame import COLUMNS, ONE_MINUTE

if TYPE_CHECKING:
    from forecast.pipeline import Context

log = logging.getLogger(__name__)
PATHS_SHOWN = 20            # sample paths the page draws
BARS_KEPT = pd.Timedelta(days=10)  # enough raw bars to rebuild a 3-session context across a long weekend
RECENT_SKIPS = 50
SUBSCRIBER_QUEUE = 256      # events a browser may fall behind by before its oldest are dropped (the next forecast
                            # or outcome event carries the whole page state, a health event all of /health)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60)
DELAYED_LAG_S = 60.0        # a bar arriving later than this after its close: the feed is delayed
STALE_S = 120.0             # no bar for this long (wall clock): the page's data is stale
CONTEXT_BARS = 60           # at the open the page also draws the previous session's last hour


@dataclass
class _SymbolState:
    bars: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(COLUMNS)))
    last_bar: pd.Timestamp | None = None
    lag_s: float | None = None      # bar close -> producer's clock when it was handed in
    received_at: float | None = None
    latest: dict[str, Any] | None = None
    history: deque = field(default_factory=deque)  # of live.scorecard.ForecastRecord


class LiveHub:
    """Thread-safe state of the live service (see the module docstring)."""

    def __init__(self, symbols: list[str], *, history: int = 500, rth: bool = True, mode: str = "live",
                 speed: float | None = None):
        if not symbols:
            raise ValueError("LiveHub needs at least one symbol")
        self.symbols = [s.upper() for s in symbols]
        self.history_size = int(history)
        self.rth = bool(rth)  # the window the forecasts use (config key rth): the page's candles are drawn in it
        if mode not in ("live", "replay"):
            raise ValueError(f"LiveHub mode must be 'live' or 'replay', not {mode!r}")
        self.mode = mode      # a replay's bar lags and arrival times are the replay clock's, not the market's
        self.speed = None if mode == "live" else float(speed if speed is not None else 1.0)
        self.started_at = time.time()
        self._lock = threading.RLock()
        self.closed = False
        self._state = {s: _SymbolState(history=deque(maxlen=self.history_size)) for s in self.symbols}
        self._model: dict[str, Any] | None = None
        self._skips: Counter = Counter()
        self._recent_skips: deque = deque(maxlen=RECENT_SKIPS)
        self._last_error: dict[str, Any] | None = None
        self.on_outcome: dict[str, Any] = {}  # symbol -> live.online.OnlineKeeper.on_outcome, set by the service
        self._reconnects = 0
        self._stream: dict[str, Any] | None = None  # a live source's connection state (None: a replay)
        self._output_errors: dict[str, dict[str, Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribers: set[asyncio.Queue] = set()
        self.registry = CollectorRegistry()
        self._m_latency = Histogram("kronos_forecast_latency_seconds", "Bar handed in to forecast published",
                                    ["symbol"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._m_forecasts = PromCounter("kronos_forecasts", "Forecasts published", ["symbol"], registry=self.registry)
        self._m_skips = PromCounter("kronos_skips", "Minutes skipped, by reason", ["symbol", "reason"],
                                    registry=self.registry)
        self._m_reconnects = PromCounter("kronos_stream_reconnects", "Bar stream reconnects", registry=self.registry)
        self._m_output_errors = PromCounter("kronos_output_errors", "Failed output writes or sends", ["output"],
                                            registry=self.registry)
        self._m_errors = PromCounter("kronos_errors", "Errors of the forecasting loop", registry=self.registry)
        self._m_lag = Gauge("kronos_last_bar_lag_seconds", "Last bar's close to its arrival", ["symbol"],
                            registry=self.registry)
        self._m_model = Gauge("kronos_model_loaded", "1 once the model is loaded", registry=self.registry)

    # ------------------------------------------------------------------------------------------- producer

    def set_model(self, info: dict) -> None:
        with self._lock:
            self._model = dict(info)
        self._m_model.set(1)
        self._publish({"event": "health"})

    def on_bars(self, symbol: str, bars: pd.DataFrame, now: pd.Timestamp) -> None:
        """Closed bars (any recent span; a bar for a minute already held replaces it); reconciles outcomes."""
        st = self._symbol(symbol)
        if bars is None or bars.empty:
            return
        new = bars[list(COLUMNS)].astype(float)
        with self._lock:
            old = st.bars
            if old.empty:
                merged = new
            elif new.index[0] > old.index[-1]:
                merged = pd.concat([old, new])
            else:
                merged = pd.concat([old[~old.index.isin(new.index)], new]).sort_index()
            merged = merged[merged.index >= merged.index[-1] - BARS_KEPT]
            st.bars = merged
            st.last_bar = merged.index[-1]
            st.lag_s = (mcal.to_utc(now) - (st.last_bar + ONE_MINUTE)).total_seconds()
            st.received_at = time.time()
            self._m_lag.labels(symbol.upper()).set(st.lag_s)
            resolved = reconcile(st.history, st.bars, self.on_outcome.get(symbol.upper()))
        if resolved:
            self._publish({"event": "outcome", "symbol": symbol.upper(), "n": resolved})

    def on_forecast(self, symbol: str, summary: dict, paths: np.ndarray, latency_s: float, *,
                    context: Context) -> None:
        """A published forecast: ``summary`` is the CLI's JSON dict, ``paths`` [N, H] simulated closes,
        ``context`` the pipeline's Context it was made from (its outcome is judged against its bars and plan)."""
        st = self._symbol(symbol)
        closes = np.asarray(paths, dtype=float)
        if closes.ndim == 3:  # [N, H, 6] paths: keep the close
            closes = closes[:, :, 3]
        try:
            record = make_record(symbol.upper(), summary, closes, float(latency_s), context)
        except (KeyError, TypeError, ValueError, IndexError) as exc:  # the page then lacks it in the history only
            record = None
            log.warning("%s: forecast kept out of the history (%s: %s)", symbol, type(exc).__name__, exc)
        sample = closes[:PATHS_SHOWN]
        with self._lock:
            st.latest = {"summary": summary, "paths": [[num(v) for v in row] for row in sample],
                         "latency_s": float(latency_s), "received_at": time.time()}
            if record is not None:
                st.history.append(record)
                reconcile(st.history, st.bars, self.on_outcome.get(symbol.upper()))
        self._m_latency.labels(symbol.upper()).observe(float(latency_s))
        self._m_forecasts.labels(symbol.upper()).inc()
        self._publish({"event": "forecast", "symbol": symbol.upper()})

    def on_skip(self, symbol: str, minute: pd.Timestamp, code: str, detail: str) -> None:
        """A skipped minute: ``code`` is a fixed word (the metric label, so labels stay few), ``detail`` free text;
        the health page shows them as one reason, "<code>: <detail>"."""
        item = {"symbol": symbol.upper(), "minute": iso(minute), "reason": f"{code}: {detail}", "code": code,
                "at": iso(pd.Timestamp.now(tz="UTC"))}
        with self._lock:
            self._skips[code] += 1
            self._recent_skips.append(item)
        self._m_skips.labels(symbol.upper(), code).inc()
        self._publish({"event": "skip", **item})

    def on_error(self, message: str) -> None:
        with self._lock:
            self._last_error = {"message": str(message), "at": iso(pd.Timestamp.now(tz="UTC"))}
        self._m_errors.inc()
        self._publish({"event": "error", "message": str(message)})

    def on_reconnect(self) -> None:
        with self._lock:
            self._reconnects += 1
        self._m_reconnects.inc()

    def on_stream(self, connected: bool, problem: str | None = None, failed_attempts: int = 0) -> None:
        """The live stream's state: connected, or down with the reason and the failed attempts since the last
        connection; while it is down /health says "degraded"."""
        with self._lock:
            self._stream = {"connected": bool(connected), "problem": None if connected else problem,
                            "failed_attempts": 0 if connected else int(failed_attempts),
                            "since": iso(pd.Timestamp.now(tz="UTC"))}
        self._publish({"event": "health"})

    def on_output_error(self, output: str, message: str) -> None:
        with self._lock:
            entry = self._output_errors.setdefault(output, {"count": 0})
            entry.update(count=entry["count"] + 1, last_message=str(message),
                         at=iso(pd.Timestamp.now(tz="UTC")))
        self._m_output_errors.labels(output).inc()

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._loop = loop

    # ------------------------------------------------------------------------------------------- consumer

    def latest(self, symbol: str) -> dict | None:
        """The latest summary JSON of ``symbol`` (None before the first forecast)."""
        st = self._symbol(symbol)
        with self._lock:
            return None if st.latest is None else st.latest["summary"]

    def history(self, symbol: str, limit: int = 100) -> list[dict]:
        """The newest ``limit`` forecasts, oldest first, each with its outcome once known."""
        st = self._symbol(symbol)
        with self._lock:
            records = list(st.history)[-max(int(limit), 0):] if limit > 0 else []
            return [r.to_dict() for r in records]

    def health(self) -> dict:
        now = time.time()
        with self._lock:
            symbols = {}
            for name, st in self._state.items():
                last_forecast = st.history[-1].asof if st.history else None
                symbols[name] = {
                    "last_bar": iso(st.last_bar),
                    "last_bar_lag_s": None if st.lag_s is None else round(st.lag_s, 3),
                    "received_s_ago": None if st.received_at is None else round(now - st.received_at, 3),
                    "last_forecast": iso(last_forecast),
                    "forecasts_kept": len(st.history)}
                symbols[name]["feed"] = feed_state(self.mode, symbols[name]["last_bar_lag_s"],
                                                   symbols[name]["received_s_ago"])
            status = "loading" if self._model is None else "ok"
            if self._model is not None and self._stream is not None and not self._stream["connected"]:
                status = "degraded"
            return {"status": status, "mode": self.mode, "speed": self.speed,
                    "model_loaded": self._model is not None, "model": self._model, "symbols": symbols,
                    "skipped": dict(self._skips), "skipped_total": sum(self._skips.values()),
                    "recent_skips": list(self._recent_skips)[-10:], "last_error": self._last_error,
                    "stream_reconnects": self._reconnects, "stream": self._stream,
                    "output_errors": dict(self._output_errors),
                    "uptime_s": round(now - self.started_at, 1), "subscribers": len(self._subscribers)}

    def page_state(self, symbol: str) -> dict:
        """Everything the page draws for ``symbol``: the latest summary, sample paths, today's candles,
        the reliability panel and freshness."""
        st = self._symbol(symbol)
        with self._lock:
            latest = st.latest
            today = _todays_bars(st.bars, self.rth)
            candles = {"times": [iso(t) for t in today.index],
                       **{c: [float(v) for v in today[c]] for c in ("open", "high", "low", "close", "volume")},
                       "vwap": [num(v) for v in running_vwap(today)]}
            before = _previous_hour(st.bars, today, self.rth)
            candles["previous"] = None if before is None else {
                "times": [iso(t) for t in before.index],
                **{c: [float(v) for v in before[c]] for c in ("open", "high", "low", "close", "volume")}}
            fresh = self.health()["symbols"][symbol.upper()]
            last_close = None if st.bars.empty else float(st.bars["close"].iloc[-1])
            return {"symbol": symbol.upper(), "mode": self.mode, "speed": self.speed,
                    "last_close": last_close, "last_bar": iso(st.last_bar),
                    "session_close": iso(_regular_close(st.last_bar)), "summary": None if latest is None else latest["summary"],
                    "paths": None if latest is None else latest["paths"],
                    "latency_s": None if latest is None else latest["latency_s"],
                    "candles": candles, "reliability": reliability(st.history), "freshness": fresh,
                    "p_up_history": p_up_history(st.history),
                    "model_loaded": self._model is not None}

    def close(self) -> None:
        """End every SSE stream now (call it before stopping the web server, which then stops at once instead of
        waiting out its graceful-shutdown timeout for the open pages)."""
        with self._lock:
            self.closed = True
        self._publish({"event": "close"})

    def subscribe(self) -> asyncio.Queue:
        """A queue of events for one SSE client; call on the web app's event loop."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=SUBSCRIBER_QUEUE)
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        with self._lock:
            self._subscribers.discard(queue)

    # ------------------------------------------------------------------------------------------- internals

    def _symbol(self, symbol: str) -> _SymbolState:
        try:
            return self._state[symbol.upper()]
        except KeyError:
            raise KeyError(f"unknown symbol {symbol!r}; this service forecasts {', '.join(self.symbols)}") from None

    def _publish(self, event: dict) -> None:
        with self._lock:
            loop, queues = self._loop, list(self._subscribers)
        if loop is None or not queues or loop.is_closed():
            return
        for q in queues:
            try:
                loop.call_soon_threadsafe(_offer, q, event)
            except RuntimeError:  # the web server's loop closed meanwhile: nobody is listening any more
                return

def feed_state(mode: str, lag_s: float | None, received_s_ago: float | None) -> str | None:
    """What the page's state pill says: "replay" for a replay (its lags are the replay clock's, so no latency is
    claimed), else "stale" when no bar came for STALE_S, "delayed" when the last bar came over DELAYED_LAG_S after
    its close, "live" otherwise; None before the first bar."""
    if mode == "replay":
        return "replay"
    if lag_s is None or received_s_ago is None:
        return None
    if received_s_ago > STALE_S:
        return "stale"
    return "delayed" if lag_s > DELAYED_LAG_S else "live"


def running_vwap(bars: pd.DataFrame) -> np.ndarray:
    """The session VWAP after each bar: cumulative typical price x volume over cumulative volume (NaN until some
    volume traded); the line the page draws under the candles."""
    tp = (bars["high"].to_numpy(float) + bars["low"].to_numpy(float) + bars["close"].to_numpy(float)) / 3.0
    vol = np.maximum(np.nan_to_num(bars["volume"].to_numpy(float)), 0.0)
    pv = np.cumsum(np.where(np.isfinite(tp), tp * vol, 0.0))
    cum = np.cumsum(np.where(np.isfinite(tp), vol, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cum > 0, pv / np.where(cum > 0, cum, 1.0), np.nan)


def _previous_hour(bars: pd.DataFrame, today: pd.DataFrame, rth: bool) -> pd.DataFrame | None:
    """The previous session's last CONTEXT_BARS bars (in the forecasts' window) while today's session has fewer,
    so the page has context at the open; None later in the day or when the previous session is not held."""
    if today.empty or len(today) >= CONTEXT_BARS:
        return None
    days = bars.index.tz_convert("America/New_York").normalize()
    earlier = bars[days < days[bars.index.get_loc(today.index[0])]]   # before today's date: not its premarket
    if earlier.empty:
        return None
    label = mcal.ny_date(earlier.index[-1])
    prev = session_bars(earlier, label, rth) if mcal.is_session(label) else session_bars_of_last_day(earlier)
    return None if prev.empty else prev.iloc[-CONTEXT_BARS:]


def _regular_close(last_bar: pd.Timestamp | None) -> pd.Timestamp | None:
    """The regular close of the last bar's New York date (early closes honoured); None on a non-session date."""
    if last_bar is None:
        return None
    label = mcal.ny_date(last_bar)
    return mcal.session_window(label, True)[1] if mcal.is_session(label) else None


def _todays_bars(bars: pd.DataFrame, rth: bool) -> pd.DataFrame:
    """The bars of the last bar's New York date inside that session's window (regular hours under rth), so
    pre/post-market bars never add candles to a regular-hours page; the whole day on a date with no session."""
    if bars.empty:
        return bars
    label = mcal.ny_date(bars.index[-1])
    if mcal.is_session(label):
        return session_bars(bars, label, rth)
    return session_bars_of_last_day(bars)


def _offer(queue: asyncio.Queue, event: dict) -> None:
    """Put an event on a subscriber's queue; a client that fell too far behind loses its oldest event."""
    if queue.full():
        try:
            queue.get_nowait()
        except asyncio.QueueEmpty:
            pass
    queue.put_nowait(event)
