"""The live service's shared state: what the forecasting loop produced, kept for the web page, the API and /metrics.

Producer side (the forecasting loop, any thread): ``set_model``, ``on_bars``, ``on_forecast``, ``on_skip``,
``on_error``, ``on_reconnect``, ``on_output_error``. Consumer side (the web app, on its event loop): ``latest``,
``history``, ``health``, ``page_state``, ``subscribe`` / ``unsubscribe``. Every method takes one lock, so
producer calls from other threads are safe; SSE subscribers are asyncio queues fed through
``loop.call_soon_threadsafe``, so the producer never blocks on a slow browser.

Realised outcomes use the backtest's own rule (``evaluation.outcome.realised_outcome``) on the bars the loop
hands in; band scores use ``forecast.calibrator``; Brier and coverage ``evaluation.scoring``. Nothing here
re-implements a market rule.
"""
from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry, Counter as PromCounter, Gauge, Histogram

from evaluation.outcome import realised_outcome
from evaluation.scoring import band_coverage, brier_score
from forecast.calibrator import band_score, ensemble_centre_scale
from forecast.metrics import session_bars_of_last_day
from marketdata import calendar as mcal
from marketdata.frame import COLUMNS, ONE_MINUTE
from marketdata.prepare import prepare_bars

log = logging.getLogger(__name__)
NEW_YORK = "America/New_York"
PATHS_SHOWN = 20            # sample paths the page draws
BARS_KEPT = pd.Timedelta(days=10)  # enough raw bars to rebuild a 3-session context across a long weekend
RECENT_SKIPS = 50
SUBSCRIBER_QUEUE = 256      # events a browser may fall behind by before it misses some (it then refetches)
COIN_FLIP_BRIER = 0.25
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60)


def _utc(t: Any) -> pd.Timestamp:
    t = pd.Timestamp(t)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _iso(t: pd.Timestamp | None) -> str | None:
    return None if t is None else _utc(t).isoformat().replace("+00:00", "Z")


def _num(x: Any) -> float | None:
    """A JSON-safe float: NaN and infinities become None (JSON has no NaN)."""
    return None if x is None or not math.isfinite(float(x)) else float(x)


def skip_category(reason: str) -> str:
    """The metric label of a skip reason: its text before the first colon ("overrun: 61 s > 50 s" -> "overrun"),
    so free-text details never become unbounded label values."""
    return reason.split(":", 1)[0].strip()[:60] or "unknown"


@dataclass
class _Record:
    """One forecast as the history keeps it; ``outcome`` fills in once its last minute has a bar."""
    symbol: str
    asof: pd.Timestamp
    last_bar: pd.Timestamp
    times: pd.DatetimeIndex
    now_close: float
    horizon_min: int
    p_up: float | None
    p_up_cal: float | None
    band: dict[str, Any]            # lo/hi keys, nominal coverage, per-minute lo/hi (raw and calibrated)
    centre: np.ndarray              # ensemble log-return median and 10-90 scale per minute (band score)
    scale: np.ndarray
    settings: dict[str, Any]
    latency_s: float
    context: Any = None             # the forecast's prepared bars (dropped once reconciled)
    outcome: dict[str, Any] | None = None
    unresolved: str | None = None   # why the outcome cannot be computed, if so

    def to_dict(self) -> dict[str, Any]:
        b = self.band
        return {"symbol": self.symbol, "asof": _iso(self.asof), "last_bar": _iso(self.last_bar),
                "horizon_min": self.horizon_min, "end": _iso(self.times[-1]), "now_close": self.now_close,
                "p_up": self.p_up, "p_up_calibrated": self.p_up_cal, "latency_s": round(self.latency_s, 4),
                "band": {"lo": b["lo_key"], "hi": b["hi_key"], "nominal": b["nominal"],
                         "lo_end": _num(b["lo"][-1]), "hi_end": _num(b["hi"][-1])},
                "outcome": self.outcome, "unresolved": self.unresolved}


@dataclass
class _SymbolState:
    bars: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(COLUMNS)))
    last_bar: pd.Timestamp | None = None
    lag_s: float | None = None      # bar close -> producer's clock when it was handed in
    received_at: float | None = None
    latest: dict[str, Any] | None = None
    history: deque = field(default_factory=deque)


class LiveHub:
    """Thread-safe state of the live service (see the module docstring)."""

    def __init__(self, symbols: list[str], *, horizon: int, percentiles: Sequence[float], history: int = 500):
        if not symbols:
            raise ValueError("LiveHub needs at least one symbol")
        self.symbols = [s.upper() for s in symbols]
        self.horizon = int(horizon)
        self.percentiles = tuple(float(q) for q in percentiles)
        self.history_size = int(history)
        self.started_at = time.time()
        self._lock = threading.RLock()
        self.closed = False
        self._state = {s: _SymbolState(history=deque(maxlen=self.history_size)) for s in self.symbols}
        self._model: dict[str, Any] | None = None
        self._skips: Counter = Counter()
        self._recent_skips: deque = deque(maxlen=RECENT_SKIPS)
        self._last_error: dict[str, Any] | None = None
        self._reconnects = 0
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
            st.lag_s = (_utc(now) - (st.last_bar + ONE_MINUTE)).total_seconds()
            st.received_at = time.time()
            self._m_lag.labels(symbol.upper()).set(st.lag_s)
            resolved = self._reconcile(st)
        if resolved:
            self._publish({"event": "outcome", "symbol": symbol.upper(), "n": resolved})

    def on_forecast(self, symbol: str, summary: dict, paths: np.ndarray, latency_s: float, *,
                    context: Any = None) -> None:
        """A published forecast: ``summary`` is the CLI's JSON dict, ``paths`` [N, H] simulated closes.
        ``context`` (optional: the pipeline's Context or its prepared bars) is what the outcome is judged
        against; without it the hub rebuilds it from its bars with marketdata.prepare."""
        st = self._symbol(symbol)
        closes = np.asarray(paths, dtype=float)
        if closes.ndim == 3:  # [N, H, 6] paths: keep the close
            closes = closes[:, :, 3]
        try:
            record = self._record(symbol.upper(), summary, closes, float(latency_s), context)
        except (KeyError, TypeError, ValueError, IndexError) as exc:  # the page then lacks it in the history only
            record = None
            log.warning("%s: forecast kept out of the history (%s: %s)", symbol, type(exc).__name__, exc)
        sample = closes[:PATHS_SHOWN]
        with self._lock:
            st.latest = {"summary": summary, "paths": [[_num(v) for v in row] for row in sample],
                         "latency_s": float(latency_s), "received_at": time.time()}
            if record is not None:
                st.history.append(record)
                self._reconcile(st)
        self._m_latency.labels(symbol.upper()).observe(float(latency_s))
        self._m_forecasts.labels(symbol.upper()).inc()
        self._publish({"event": "forecast", "symbol": symbol.upper()})

    def on_skip(self, symbol: str, minute: pd.Timestamp, reason: str) -> None:
        """A skipped minute. ``reason`` reads "<code>: <detail>"; metrics count by the code (``skip_category``)."""
        code = skip_category(reason)
        item = {"symbol": symbol.upper(), "minute": _iso(minute), "reason": reason, "code": code,
                "at": _iso(pd.Timestamp.now(tz="UTC"))}
        with self._lock:
            self._skips[code] += 1
            self._recent_skips.append(item)
        self._m_skips.labels(symbol.upper(), code).inc()
        self._publish({"event": "skip", **item})

    def on_error(self, message: str) -> None:
        with self._lock:
            self._last_error = {"message": str(message), "at": _iso(pd.Timestamp.now(tz="UTC"))}
        self._m_errors.inc()
        self._publish({"event": "error", "message": str(message)})

    def on_reconnect(self) -> None:
        with self._lock:
            self._reconnects += 1
        self._m_reconnects.inc()

    def on_output_error(self, output: str, message: str) -> None:
        with self._lock:
            entry = self._output_errors.setdefault(output, {"count": 0})
            entry.update(count=entry["count"] + 1, last_message=str(message),
                         at=_iso(pd.Timestamp.now(tz="UTC")))
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
                    "last_bar": _iso(st.last_bar),
                    "last_bar_lag_s": None if st.lag_s is None else round(st.lag_s, 3),
                    "received_s_ago": None if st.received_at is None else round(now - st.received_at, 3),
                    "last_forecast": _iso(last_forecast),
                    "forecasts_kept": len(st.history)}
            return {"status": "ok" if self._model is not None else "loading",
                    "model_loaded": self._model is not None, "model": self._model, "symbols": symbols,
                    "skipped": dict(self._skips), "skipped_total": sum(self._skips.values()),
                    "recent_skips": list(self._recent_skips)[-10:], "last_error": self._last_error,
                    "stream_reconnects": self._reconnects, "output_errors": dict(self._output_errors),
                    "uptime_s": round(now - self.started_at, 1), "subscribers": len(self._subscribers)}

    def page_state(self, symbol: str) -> dict:
        """Everything the page draws for ``symbol``: the latest summary, sample paths, today's candles,
        the reliability panel and freshness."""
        st = self._symbol(symbol)
        with self._lock:
            latest = st.latest
            today = _todays_bars(st.bars, None if latest is None else latest["summary"])
            candles = {"times": [_iso(t) for t in today.index],
                       **{c: [float(v) for v in today[c]] for c in ("open", "high", "low", "close")}}
            reliability = self._reliability(st)
            fresh = self.health()["symbols"][symbol.upper()]
            return {"symbol": symbol.upper(), "summary": None if latest is None else latest["summary"],
                    "paths": None if latest is None else latest["paths"],
                    "latency_s": None if latest is None else latest["latency_s"],
                    "candles": candles, "reliability": reliability, "freshness": fresh,
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

    def _record(self, symbol: str, summary: dict, closes: np.ndarray, latency_s: float, context: Any) -> _Record:
        times = pd.DatetimeIndex(pd.to_datetime(summary["future_times"], utc=True))
        h = int(summary["horizon_min"])
        block = summary["summary"]
        pct = block["percentiles"]
        keys = sorted(pct, key=lambda k: float(k[1:]))
        lo_key, hi_key = keys[0], keys[-1]
        cal = summary.get("calibrated") or {}
        cal_pct = cal.get("percentiles") or {}
        band = {"lo_key": lo_key, "hi_key": hi_key, "nominal": (float(hi_key[1:]) - float(lo_key[1:])) / 100,
                "lo": np.array(pct[lo_key], float), "hi": np.array(pct[hi_key], float),
                "lo_cal": np.array(cal_pct[lo_key], float) if lo_key in cal_pct else None,
                "hi_cal": np.array(cal_pct[hi_key], float) if hi_key in cal_pct else None}
        now_close = float(summary["now_close"])
        centre, scale = ensemble_centre_scale(closes, now_close)
        return _Record(symbol, _utc(summary["asof"]), _utc(summary["last_bar"]), times, now_close, h,
                       _num(block.get(f"p_up_{h}m")), _num(cal.get(f"p_up_{h}m")), band, centre, scale,
                       dict(summary.get("settings") or {}), latency_s, context)

    def _reconcile(self, st: _SymbolState) -> int:
        """Outcomes of the forecasts whose last minute now has a bar (lock held)."""
        if st.bars.empty:
            return 0
        done = 0
        for r in st.history:
            if r.outcome is not None or r.unresolved or st.bars.index[-1] < r.times[-1]:
                continue
            try:  # the page's bookkeeping must never stop the bars reaching the forecasting loop
                bars, new_session = self._context_of(r, st.bars)
                r.context = None
                if bars is None or bars.empty:
                    r.unresolved = "the forecast's context is no longer in the hub's bars"
                    continue
                s = r.settings
                out = realised_outcome(st.bars, bars, r.times, vwap_mode=s.get("vwap_mode", "moving"),
                                       mid_window=int(s.get("mid_window", 20)), mid_kind=s.get("mid_kind", "sma"),
                                       new_session=new_session)
                if out is None:
                    continue
                r.outcome = self._score(r, out)
                done += 1
            except Exception as exc:  # noqa: BLE001
                r.unresolved = f"outcome failed: {type(exc).__name__}: {exc}"
                log.warning("%s %s: %s", r.symbol, _iso(r.asof), r.unresolved)
        return done

    @staticmethod
    def _context_of(r: _Record, raw: pd.DataFrame) -> tuple[pd.DataFrame | None, bool]:
        """The prepared bars the forecast saw, and whether it covered the next session's start."""
        ctx = r.context
        if ctx is not None and hasattr(ctx, "bars"):
            return ctx.bars, bool(ctx.plan.next_session)
        if isinstance(ctx, pd.DataFrame):
            bars = ctx
        else:  # the same preparation the pipeline ran, at the instant its data ended
            s = r.settings
            bars, _ = prepare_bars(raw[raw.index <= r.last_bar], r.last_bar + ONE_MINUTE,
                                   days=int(s.get("days", 3)), rth=bool(s.get("rth", True)))
            if bars.empty or bars.index[-1] != r.last_bar:
                return None, False
        # next_session means the plan's minutes begin on a later New York date than the last bar
        new_session = r.times[0].tz_convert(NEW_YORK).date() != bars.index[-1].tz_convert(NEW_YORK).date()
        return bars, new_session

    @staticmethod
    def _score(r: _Record, out: Any) -> dict[str, Any]:
        real = out.close
        z = band_score(real, r.now_close, r.centre, r.scale)
        inside = band_coverage(r.band["lo"][None], r.band["hi"][None], real[None])
        res = {"realised_close": float(real[-1]), "up": out.up, "hit_vwap": out.hit_vwap, "hit_mid": out.hit_mid,
               "band_z_end": _num(z[-1]), "inside_band_end": bool(inside[-1] > 0.5),
               "inside_band_share": float(np.nanmean(inside)),
               "brier": None if r.p_up is None else (r.p_up - out.up) ** 2,
               "brier_calibrated": None if r.p_up_cal is None else (r.p_up_cal - out.up) ** 2}
        if r.band["lo_cal"] is not None and r.band["hi_cal"] is not None:
            cal = band_coverage(r.band["lo_cal"][None], r.band["hi_cal"][None], real[None])
            res["inside_band_calibrated_end"] = bool(cal[-1] > 0.5)
        return res

    def _reliability(self, st: _SymbolState) -> dict[str, Any]:
        """The day's reconciled forecasts: Brier against the coin flip and band coverage against nominal."""
        records = list(st.history)
        if not records:
            return {"n": 0, "pending": 0, "brier_reference": COIN_FLIP_BRIER}
        day = records[-1].asof.tz_convert(NEW_YORK).date()
        today = [r for r in records if r.asof.tz_convert(NEW_YORK).date() == day]
        done = [r for r in today if r.outcome is not None]
        up = np.array([r.outcome["up"] for r in done], float)
        p = np.array([np.nan if r.p_up is None else r.p_up for r in done], float)
        p_cal = np.array([np.nan if r.p_up_cal is None else r.p_up_cal for r in done], float)
        inside = [r.outcome["inside_band_end"] for r in done]
        inside_cal = [r.outcome["inside_band_calibrated_end"] for r in done
                      if "inside_band_calibrated_end" in r.outcome]
        band = today[-1].band
        return {"date": day.isoformat(), "n": len(done), "pending": len(today) - len(done),
                "brier": _num(brier_score(p, up)) if done else None,
                "brier_calibrated": _num(brier_score(p_cal, up)) if done and np.isfinite(p_cal).any() else None,
                "brier_reference": COIN_FLIP_BRIER,
                "up_rate": _num(up.mean()) if done else None,
                "band": f"{band['lo_key']}-{band['hi_key']}", "nominal": band["nominal"],
                "coverage": _num(np.mean(inside)) if inside else None,
                "coverage_calibrated": _num(np.mean(inside_cal)) if inside_cal else None,
                "coverage_all_minutes": _num(np.mean([r.outcome["inside_band_share"] for r in done]))
                if done else None}


def _todays_bars(bars: pd.DataFrame, summary: dict | None) -> pd.DataFrame:
    """The bars of the last bar's session, in the window the forecasts use (regular hours unless the latest
    summary says rth: false); the whole New York day before the first forecast."""
    if bars.empty:
        return bars
    if summary is not None:
        rth = bool((summary.get("settings") or {}).get("rth", True))
        session = mcal.session_containing(bars.index[-1], rth)
        if session is not None:
            start, end = mcal.session_window(session, rth)
            return bars[(bars.index >= start) & (bars.index < end)]
    return session_bars_of_last_day(bars)


def _offer(queue: asyncio.Queue, event: dict) -> None:
    """Put an event on a subscriber's queue; a client that fell too far behind loses its oldest event."""
    if queue.full():
        try:
            queue.get_nowait()
        except asyncio.QueueEmpty:
            pass
    queue.put_nowait(event)
