"""The bar book: a corrected bar reaches the hub in the order the book took it, whichever thread upserts."""
import threading

import pandas as pd

from live.book import BarBook
from live.hub import LiveHub
from marketdata.frame import COLUMNS

MINUTE = pd.Timestamp("2025-06-04T15:00:00Z")


def one_bar(close: float) -> pd.DataFrame:
    values = {"open": 100.0, "high": max(100.0, close), "low": min(100.0, close), "close": close,
              "volume": 1000.0, "amount": 1000.0 * close}
    return pd.DataFrame({c: [values[c]] for c in COLUMNS}, index=pd.DatetimeIndex([MINUTE]))


def test_a_correction_from_another_thread_never_leaves_the_hub_with_the_old_bar():
    # the stream thread hands in v1, the REST thread a corrected v2 of the same minute; v1's listener call is
    # held up (a slow hub) until v2's upsert had every chance to overtake it
    hub = LiveHub(["QQQ"], history=10)
    v1_in_listener, release = threading.Event(), threading.Event()

    def on_change(symbol, bars):
        if bars["close"].iloc[-1] == 101.0:
            v1_in_listener.set()
            release.wait(5)
        hub.on_bars(symbol, bars, MINUTE + pd.Timedelta(minutes=1))

    book = BarBook(["QQQ"], on_change=on_change)
    stream = threading.Thread(target=book.upsert, args=("QQQ", one_bar(101.0)))
    stream.start()
    assert v1_in_listener.wait(5)
    rest = threading.Thread(target=book.upsert, args=("QQQ", one_bar(102.0)))
    rest.start()
    rest.join(0.3)  # v2 may not reach the hub while v1 is still on its way
    release.set()
    stream.join(5)
    rest.join(5)

    assert book.frame("QQQ")["close"].tolist() == [102.0] and book.corrections == 1
    assert hub.page_state("QQQ")["candles"]["close"] == [102.0]  # the hub holds the bar the book holds
