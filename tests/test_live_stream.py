"""The live Alpaca source against fakes on 127.0.0.1: alpaca-py's real StockDataStream talks to a fake stream
server (handshake, auth, subscription, a bar, its corrected bar, a dropped connection) and the real REST client
to a fake bars endpoint (backfill on start, polling while the stream is down, backfill after the reconnect)."""
import json
import logging
import threading

import numpy as np
import pandas as pd
import pytest

from support.fake_alpaca import FakeAlpaca, window_bars
from support.fake_alpaca_stream import FakeAlpacaStream, bar_message
from live.book import BarBook
from live.clock import ReplayClock
from live.hub import LiveHub
from live.sources import AlpacaLiveSource
from support.live_support import wait_for
from marketdata.alpaca import Credentials
from support.bars import synthetic_bars

KEY, SECRET = "PKTEST0000KEY1234", "secret-not-for-logs-5678"


@pytest.fixture
def bars():
    frame = synthetic_bars()
    frame.index = pd.DatetimeIndex(pd.to_datetime(frame.pop("timestamp"), utc=True), name="timestamp")
    return frame


@pytest.fixture
def rest(bars):
    """Alpaca's bars endpoint over the synthetic bars: start and end inclusive, as Alpaca answers."""
    def respond(query):
        return 200, {"bars": {"QQQ": window_bars(bars, query)}, "next_page_token": None}
    fake = FakeAlpaca(respond)
    yield fake
    fake.close()


@pytest.fixture
def stream():
    fake = FakeAlpacaStream(KEY, SECRET)
    yield fake
    fake.close()


def test_stream_bars_corrections_and_backfill_after_a_dropped_connection(bars, rest, stream):
    clock = ReplayClock(pd.Timestamp("2025-06-04T15:00:05Z"), speed=60)  # a market minute each wall second
    hub = LiveHub(["QQQ"])
    # A reconnect is announced on the stream's own event loop. Waiting there for the server to hold the new
    # connection's subscription proves it was sent first: the backfill it triggers then misses no streamed bar.
    subscribed_before_reconnect = []
    announce = hub.on_reconnect

    def on_reconnect() -> None:
        try:
            stream.wait_subscribed(2, timeout=3)
            subscribed_before_reconnect.append(True)
        except TimeoutError:
            subscribed_before_reconnect.append(False)
        announce()

    hub.on_reconnect = on_reconnect
    book = BarBook(["QQQ"], on_change=lambda s, f: hub.on_bars(s, f, clock.now()))
    stop = threading.Event()
    source = AlpacaLiveSource(["QQQ"], book, clock, hub, Credentials(KEY, SECRET), feed="iex", sip_fallback="iex",
                              days=3, rth=True, stop=stop, rest_url=rest.url, stream_url=stream.url,
                              poll_delay_s=0.5, reconnect_backoff_s=(0.05, 0.1))
    try:
        source.start()
        # backfill on start: the three sessions up to the last closed minute, exactly the REST bars
        start = book.frame("QQQ")
        expected = bars[bars.index < pd.Timestamp("2025-06-04T15:00Z")]
        assert start.index.equals(expected.index)
        np.testing.assert_array_equal(start.to_numpy(), expected.to_numpy())
        assert rest.requests[0]["query"]["start"].startswith("2025-06-02T13:30:00")

        stream.wait_subscribed()
        assert stream.auths[0] == {"action": "auth", "key": KEY, "secret": SECRET}
        assert stream.subscriptions[0]["bars"] == ["QQQ"] and stream.subscriptions[0]["updatedBars"] == ["QQQ"]

        minute = pd.Timestamp("2025-06-04T15:00Z")
        stream.send(bar_message("b", "QQQ", minute, 501.0, 502.0, 500.5, 501.5, 1000.0))
        wait_for(lambda: book.last_minute("QQQ") == minute, what="the streamed bar")
        assert book.frame("QQQ").loc[minute].tolist() == [501.0, 502.0, 500.5, 501.5, 1000.0]
        stream.send(bar_message("u", "QQQ", minute, 501.0, 502.5, 500.5, 502.25, 1300.0))  # a late trade
        wait_for(lambda: book.frame("QQQ").loc[minute, "close"] == 502.25, what="the corrected bar")
        assert book.frame("QQQ").loc[minute].tolist() == [501.0, 502.5, 500.5, 502.25, 1300.0]
        assert book.corrections == 1 and (book.frame("QQQ").index == minute).sum() == 1
        wait_for(lambda: hub.page_state("QQQ")["candles"]["close"][-1] == 502.25, what="the hub's corrected bar")

        # the connection drops and stays down: REST is polled a few seconds after each minute
        stream.refuse.set()
        stream.drop()
        wait_for(lambda: source.polls >= 1, what="a REST poll while the stream is down")
        assert not source.stream_up.is_set()
        starts = [r["query"]["start"] for r in rest.requests[1:]]
        assert any(s.startswith("2025-06-04T15:01:00") for s in starts), starts
        polled = book.last_minute("QQQ")
        assert polled >= pd.Timestamp("2025-06-04T15:01Z")
        # the stream comes back: the reconnect is counted and the minutes since the last bar are backfilled
        stream.refuse.clear()
        wait_for(lambda: hub.health()["stream_reconnects"] == 1, what="the reconnect")
        assert subscribed_before_reconnect == [True] and source.stream_up.is_set()
        wait_for(lambda: source.reconnect_catch_ups == 1, what="the backfill after the reconnect")
        assert len(stream.subscriptions) == 2
        frame = book.frame("QQQ")
        after = frame[frame.index > minute]
        assert len(after) >= 1
        np.testing.assert_array_equal(after.to_numpy(), bars.loc[after.index].to_numpy())
        assert frame.loc[minute, "close"] == 502.25  # the backfill starts after the streamed minute
    finally:
        source.close()


@pytest.mark.parametrize("reject, keys", [(None, (KEY, "a-wrong-secret-0000")),                 # 402 auth failed
                                          ((406, "connection limit exceeded"), (KEY, SECRET))],
                         ids=["wrong-keys", "connection-limit"])
def test_a_stream_that_refuses_us_shows_in_health_and_stops_after_bounded_tries(bars, rest, stream, reject, keys,
                                                                              monkeypatch, caplog):
    import live.sources

    monkeypatch.setattr(live.sources, "STREAM_REFUSALS_MAX", 3)
    stream.reject, stream.echo_keys = reject, True
    clock = ReplayClock(pd.Timestamp("2025-06-04T15:00:05Z"), speed=1)
    hub = LiveHub(["QQQ"])
    hub.set_model({"name": "test"})
    book = BarBook(["QQQ"], on_change=lambda s, f: hub.on_bars(s, f, clock.now()))
    stop = threading.Event()
    source = AlpacaLiveSource(["QQQ"], book, clock, hub, Credentials(*keys), feed="iex", sip_fallback="iex",
                              days=3, rth=True, stop=stop, rest_url=rest.url, stream_url=stream.url,
                              poll_delay_s=0.5, reconnect_backoff_s=(0.3, 0.3))
    try:
        with caplog.at_level(logging.INFO):
            source.start()
            wait_for(lambda: hub.health()["status"] == "degraded", what="a degraded /health")
            health = hub.health()
            word = "connection limit exceeded" if reject else "auth failed"
            assert word in health["stream"]["problem"] and health["stream"]["failed_attempts"] >= 1
            assert health["stream"]["connected"] is False
            wait_for(lambda: source.fatal is not None, what="the source giving up")
            assert stop.is_set()
            for thread in source._threads:
                thread.join(5)
                assert not thread.is_alive(), thread.name
    finally:
        source.close()
    assert len(stream.auths) == 3  # bounded: exactly the allowed tries
    line = str(source.fatal)
    assert "refused the connection 3 times in a row" in line and word in line and "ALPACA_KEY_ID" in line
    assert hub.health()["stream"]["failed_attempts"] == 3
    shown = caplog.text + json.dumps(hub.health()) + line
    assert keys[0] not in shown and keys[1] not in shown  # the fake echoed both into its error
    alpaca = [r for r in caplog.records if r.name.startswith("alpaca")]
    assert alpaca and not [r for r in alpaca if r.exc_info or "Traceback" in r.getMessage()]
    from app.exits import ExitCode, exit_code_for

    assert exit_code_for(source.fatal) == ExitCode.DATA_SOURCE


def test_serve_exits_with_the_data_source_code_when_the_stream_refuses_the_keys(rest, stream, tmp_path,
                                                                                monkeypatch, caplog):
    import live.sources
    import serve
    from app.exits import ExitCode
    from support.kronos_checkpoints import write_checkpoint_pair

    model, tokenizer = write_checkpoint_pair(tmp_path / "ckpt", shape="tiny", seed=0)
    monkeypatch.setattr(live.sources, "STREAM_REFUSALS_MAX", 2)
    for name, value in (("ALPACA_KEY_ID", KEY), ("ALPACA_SECRET_KEY", "a-wrong-secret-0000"),
                        ("ALPACA_DATA_URL", rest.url), ("ALPACA_STREAM_URL", stream.url)):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("KRONOS_SERVE_TOKEN", raising=False)
    with caplog.at_level(logging.INFO):
        code = serve.main(["--model", str(model), "--tokenizer", str(tokenizer), "--device", "cpu",
                           "--n-samples", "4", "--horizon", "10", "--lookback", "120",
                           "--live-out", str(tmp_path / "live"), "--port", "0"])
    assert code == ExitCode.DATA_SOURCE, caplog.text
    last = caplog.records[-1]
    assert "refused the connection 2 times in a row (auth failed)" in last.getMessage() and last.exc_info is None
    assert "a-wrong-secret-0000" not in caplog.text
    assert len(stream.auths) == 2
