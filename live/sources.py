"""Live bars from Alpaca: minute bars (and corrected bars) over alpaca-py's StockDataStream, REST backfill of the
last ``days`` sessions on start and of the minutes missed after a reconnect, and REST polling a few seconds after
each minute while the stream is down. Every bar goes into the BarBook, where a corrected bar replaces the old."""
from __future__ import annotations

import asyncio
import logging
import threading
import warnings
from typing import Any

import pandas as pd

from live.book import BarBook
from marketdata import calendar as mcal
from marketdata.alpaca import AlpacaBarSource, Credentials, fetch_with_fallback
from marketdata.frame import COLUMNS, ONE_MINUTE, DataSourceError, canonical, first_line
from marketdata.redact import redact_text

log = logging.getLogger(__name__)
STREAM_REFUSALS_MAX = 5  # the stream refusing us this many times in a row (keys, connection limit) ends the service
ALPACA_STREAM_LOGGER = "alpaca.data.live.websocket"


class _OneLine(logging.Filter):
    """alpaca-py logs a traceback on every failed reconnect; keep its line, masked and without the traceback
    (the handler's repeat limit then keeps a reconnect loop to a few lines a minute)."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact_text(record.getMessage(), secrets=self.secrets), None
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def bar_frame(bar: Any) -> pd.DataFrame:
    """One alpaca-py Bar as a one-row canonical frame."""
    stamp = mcal.to_utc(bar.timestamp)
    return canonical(pd.DataFrame({c: [float(getattr(bar, c))] for c in COLUMNS}, index=pd.DatetimeIndex([stamp])))


def _stream_class() -> type:
    with warnings.catch_warnings():  # alpaca.data imports websockets.legacy, which warns on import
        warnings.simplefilter("ignore", DeprecationWarning)
        from alpaca.data.live import StockDataStream
    from websockets.exceptions import WebSocketException

    class Refused(WebSocketException):
        """The server answered and said no (auth failed, connection limit exceeded). Raised as a websocket
        error so alpaca-py closes, backs off and retries with one warning line instead of a traceback."""

    class ObservedStream(StockDataStream):
        """StockDataStream that tells its owner when a connection is up (authenticated and subscribed) and when
        it drops."""

        def __init__(self, owner: "AlpacaLiveSource", *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._owner = owner

        async def _start_ws(self) -> None:
            try:
                await super()._start_ws()
            except ValueError as exc:  # alpaca-py's way of saying the server refused the handshake or the keys
                line = self._owner._refused(str(exc))
                if self._owner.fatal is not None:
                    await self.stop_ws()  # alpaca-py's loop ends instead of backing off for another try
                raise Refused(line) from None
            except Exception as exc:  # noqa: BLE001 - cannot connect: shown, retried by alpaca-py
                self._owner._failed(f"{type(exc).__name__}: {first_line(exc)}")
                raise

        async def _send_subscribe_msg(self) -> None:
            await super()._send_subscribe_msg()
            if not self._running:  # a new connection's subscription: only now is every later bar streamed
                self._owner._connected()

        async def close(self) -> None:
            had = self._ws is not None
            await super().close()
            if had:
                self._owner._disconnected()

    return ObservedStream


class AlpacaLiveSource:
    """Feeds the book from Alpaca. ``start`` backfills synchronously (a DataSourceError then stops the service
    with its one-line message), then runs the stream and the REST worker on their own threads."""

    def __init__(self, symbols: list[str], book: BarBook, clock: Any, hub: Any, credentials: Credentials, *,
                 feed: str, sip_fallback: str, days: int, rth: bool, stop: threading.Event,
                 rest_url: str | None = None, stream_url: str | None = None, poll_delay_s: float = 3.0,
                 reconnect_backoff_s: tuple[float, float] = (1.0, 30.0)) -> None:
        self.symbols, self.book, self.clock, self.hub = list(symbols), book, clock, hub
        self.credentials, self.feed, self.sip_fallback = credentials, feed, sip_fallback
        self.days, self.rth, self.stop = days, rth, stop
        self.stream_url, self.poll_delay_s, self.reconnect_backoff_s = stream_url, poll_delay_s, reconnect_backoff_s
        self.rest = AlpacaBarSource(credentials.key_id, credentials.secret_key, feed=feed, url_override=rest_url)
        self.connections = 0
        self.refusals = 0               # in a row; a connection that gets its subscription resets it
        self.failed_attempts = 0        # connection attempts that failed since the last success
        self.fatal: DataSourceError | None = None  # set when the service must stop (the stream refuses us)
        self._one_line = _OneLine((credentials.key_id, credentials.secret_key))
        self.stream_up = threading.Event()
        self.polls = 0                  # catch-ups polled while the stream was down
        self.reconnect_catch_ups = 0    # catch-ups after a reconnect
        self._wake = threading.Event()      # the REST worker: a backfill is wanted now
        self._catch_up_pending = False
        self._stream: Any = None
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        logging.getLogger(ALPACA_STREAM_LOGGER).addFilter(self._one_line)
        self.backfill()
        for name, target in (("stream", self._run_stream), ("rest", self._run_rest)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self.stop.set()
        self._wake.set()
        stream = self._stream
        loop = getattr(stream, "_loop", None)
        if loop is not None and loop.is_running():  # not when the stream already ended (it gave up)
            try:
                stream.stop()
                # closing the socket ends the stream's wait for the next frame at once (else up to 5 s)
                asyncio.run_coroutine_threadsafe(stream.close(), loop).result(timeout=5)
            except Exception as exc:  # noqa: BLE001 - shutting down: nothing more to do about it
                log.debug("stream stop: %s", exc)
        for thread in self._threads:
            thread.join(timeout=5)
        logging.getLogger(ALPACA_STREAM_LOGGER).removeFilter(self._one_line)

    # ------------------------------------------------------------------------------------------- REST

    def backfill(self, since: dict[str, pd.Timestamp] | None = None) -> int:
        """Fetch closed bars from ``since[symbol]`` (default: the first of the last ``days`` sessions) up to
        the current minute; returns how many minutes were new or changed."""
        now = self.clock.now()
        end = now.floor("min")  # only closed bars: the forming minute starts at `end`
        sessions = mcal.recent_sessions(now, self.days, self.rth)
        first = mcal.session_window(sessions[0], self.rth)[0] if sessions else end
        changed = 0
        for symbol in self.symbols:
            start = (since or {}).get(symbol) or first
            if start >= end:
                continue
            fetched = fetch_with_fallback(self.rest, symbol, start, end, now, policy=self.sip_fallback)
            changed += self.book.upsert(symbol, fetched.frame)
        return changed

    def catch_up(self) -> int:
        """The minutes since each symbol's last bar (a reconnect, or a poll while the stream is down)."""
        since = {}
        for symbol in self.symbols:
            last = self.book.last_minute(symbol)
            since[symbol] = None if last is None else last + ONE_MINUTE
        return self.backfill(since)

    def _run_rest(self) -> None:
        while not self.stop.is_set():
            now = self.clock.now()
            next_poll = now.floor("min") + ONE_MINUTE + pd.Timedelta(seconds=self.poll_delay_s)
            self._wake.wait(self.clock.wall_seconds_until(next_poll))
            if self.stop.is_set():
                return
            reconnected = self._wake.is_set()
            self._wake.clear()
            just_closed = self.clock.now().floor("min") - ONE_MINUTE
            in_session = mcal.session_containing(just_closed, self.rth) is not None
            if not reconnected and (self.stream_up.is_set() or not in_session or self._have(just_closed)):
                continue
            try:
                changed = self.catch_up()
                if reconnected:
                    self.reconnect_catch_ups += 1
                else:
                    self.polls += 1
                log.info("REST %s: %d new or corrected bar(s)", "backfill after reconnect" if reconnected
                         else "poll (stream down)", changed)
            except Exception as exc:  # noqa: BLE001 - a data outage is shown and retried, never fatal
                message = f"REST {'backfill' if reconnected else 'poll'} failed: {first_line(exc)}"
                log.warning(message)
                self.hub.on_error(message)

    def _have(self, minute: pd.Timestamp) -> bool:
        """Every symbol already has a bar at or after ``minute``."""
        return all((last := self.book.last_minute(s)) is not None and last >= minute for s in self.symbols)

    # ------------------------------------------------------------------------------------------- stream

    def _run_stream(self) -> None:
        from alpaca.data.enums import DataFeed

        stream = _stream_class()(self, self.credentials.key_id, self.credentials.secret_key,
                                 feed=DataFeed(self.feed), url_override=self.stream_url)
        stream._reconnect_min_backoff, stream._reconnect_max_backoff = self.reconnect_backoff_s
        stream.subscribe_bars(self._on_bar, *self.symbols)
        stream.subscribe_updated_bars(self._on_bar, *self.symbols)
        self._stream = stream
        if self.stop.is_set():
            return
        stream.run()

    async def _on_bar(self, bar: Any) -> None:
        symbol = bar.symbol
        if symbol in self.book.symbols:
            # in arrival order (a corrected bar must land after the bar it corrects); a few milliseconds
            self.book.upsert(symbol, bar_frame(bar))

    def _connected(self) -> None:
        self.connections += 1
        self.refusals = self.failed_attempts = 0
        self.stream_up.set()
        self.hub.on_stream(connected=True)
        if self.connections > 1:
            log.info("stream reconnected; backfilling the missed minutes over REST")
            self.hub.on_reconnect()
            self._wake.set()

    def _disconnected(self) -> None:
        if self.stream_up.is_set():
            log.warning("stream connection lost; polling REST each minute until it is back")
            self.hub.on_stream(connected=False, problem="connection lost; reconnecting")
        self.stream_up.clear()

    def _refused(self, message: str) -> str:
        """The stream refused us (called on the stream's loop); returns the line to show. After
        STREAM_REFUSALS_MAX refusals in a row the service stops with the data-source code."""
        self.refusals += 1
        self.failed_attempts += 1
        reason = redact_text(message, secrets=(self.credentials.key_id, self.credentials.secret_key))
        line = f"the Alpaca stream refused the connection ({reason}), {self.refusals} time(s) in a row"
        self.hub.on_stream(connected=False, problem=line, failed_attempts=self.failed_attempts)
        if self.refusals >= STREAM_REFUSALS_MAX and self.fatal is None:
            self.fatal = DataSourceError(
                f"the Alpaca stream refused the connection {self.refusals} times in a row ({reason}); check "
                "ALPACA_KEY_ID / ALPACA_SECRET_KEY, and that no other program holds the account's one stream "
                "connection")
            self.stop.set()
            self._wake.set()
        return line

    def _failed(self, message: str) -> None:
        """A connection attempt that failed before the server answered (network, DNS, TLS)."""
        self.failed_attempts += 1
        reason = redact_text(message, secrets=(self.credentials.key_id, self.credentials.secret_key))
        self.hub.on_stream(connected=False, problem=f"cannot connect to the Alpaca stream ({reason})",
                           failed_attempts=self.failed_attempts)
