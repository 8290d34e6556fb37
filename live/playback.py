"""A bars file played as if live: bars before ``--from`` are history, later ones arrive as their minute closes,
on a clock running ``--speed`` times faster than the wall; closed hours are skipped at once."""
from __future__ import annotations

import logging
import threading

import pandas as pd

from live.book import BarBook
from live.clock import ReplayClock
from marketdata import calendar as mcal
from marketdata.files import read_bars_file
from marketdata.frame import ONE_MINUTE, DataError

log = logging.getLogger(__name__)


def load_replay(files: dict[str, str], start: pd.Timestamp | None, *, tz: str = "auto",
                label: str = "auto") -> tuple[dict[str, pd.DataFrame], pd.Timestamp]:
    """Each symbol's bars from its file, and the replay's start (default: the open of the file's last
    session, so the page shows a whole session with the sessions before it as context). A DataError names a
    file that cannot be used."""
    frames = {}
    for symbol, path in files.items():
        frame = read_bars_file(path, tz=tz, label=label, symbol=symbol)
        if frame.empty:
            raise DataError(f"replay file {path} holds no bars")
        frames[symbol] = frame
    first = min(f.index[0] for f in frames.values())
    last = max(f.index[-1] for f in frames.values())
    if start is not None:
        if not first < start <= last:
            raise DataError(f"--from {start.isoformat()} is outside the replay data "
                            f"({first.isoformat()} .. {last.isoformat()})")
        return frames, start
    session = mcal.recent_sessions(last, 1)[-1]
    start = mcal.session_window(session)[0]
    if not first < start <= last:  # the default start needs bars before it: the sessions that are the history
        names = ", ".join(str(p) for p in files.values())
        raise DataError(f"replay file {names} holds no bars before the open of its last session "
                        f"({session:%Y-%m-%d}, {start.isoformat()}), where a replay starts by default, so "
                        "there is no history to forecast from: give a file with earlier sessions too, or --from a "
                        "later time in that session")
    return frames, start


class ReplaySource:
    """Feeds the book from in-memory frames on a ReplayClock; ``done`` is set when every bar was played."""

    def __init__(self, frames: dict[str, pd.DataFrame], book: BarBook, clock: ReplayClock, rth: bool,
                 stop: threading.Event) -> None:
        self.frames, self.book, self.clock, self.rth, self.stop = frames, book, clock, rth, stop
        self.done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        now = self.clock.now()
        for symbol, frame in self.frames.items():  # history: every bar closed by the start
            self.book.upsert(symbol, frame[frame.index + ONE_MINUTE <= now])
        self._thread = threading.Thread(target=self._run, name="replay", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        start = self.clock.now()
        by_close: dict[pd.Timestamp, list[tuple[str, int]]] = {}
        for symbol, frame in self.frames.items():
            for i, close in enumerate(frame.index + ONE_MINUTE):
                if close > start:
                    by_close.setdefault(close, []).append((symbol, i))
        closes = sorted(by_close)
        for close in closes:
            if self.stop.is_set():
                return
            now = self.clock.now()
            if close > now and not mcal.market_status(now, self.rth).is_open:
                # closed: bars outside the session windows come at once, the first bar of the next session
                # starts its minute at once
                inside = mcal.session_containing(close - ONE_MINUTE, self.rth) is not None
                self.clock.jump(close - ONE_MINUTE if inside else close)
            while not self.stop.is_set():
                wait = self.clock.wall_seconds_until(close)
                if wait <= 0:
                    break
                self.stop.wait(min(wait, 0.5))
            if self.stop.is_set():
                return
            for symbol, i in by_close[close]:
                self.book.upsert(symbol, self.frames[symbol].iloc[i:i + 1])
        log.info("replay: every bar has been played (up to %s)", closes[-1].isoformat() if closes else "-")
        self.done.set()
        self.book.poke()
