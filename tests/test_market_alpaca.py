"""The real alpaca-py client against a fake bars endpoint on 127.0.0.1, plus credentials handling."""
import json
import socket
import time
import warnings

import pandas as pd
import pytest

from marketdata.alpaca import AlpacaBarSource, Credentials, credentials_from_env, fetch_with_fallback
from marketdata.frame import DataSourceError, SubscriptionError
from support.fake_alpaca import FakeAlpaca

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # websockets.legacy, imported by alpaca.data
    import alpaca.data  # noqa: F401

SECRET = "s3cr3t-never-printed"
RECENT_SIP = {"code": 42210000, "message": "subscription does not permit querying recent SIP data"}


def bar(t: str, c: float, **over) -> dict:
    b = {"t": t, "o": c - 0.5, "h": c + 1, "l": c - 1, "c": c, "v": 100, "n": 3, "vw": c}
    b.update(over)
    return b


@pytest.fixture
def serve():
    servers = []

    def start(respond):
        fake = FakeAlpaca(respond)
        servers.append(fake)
        return fake

    yield start
    for fake in servers:
        fake.close()


def source(fake, feed="iex", **kw) -> AlpacaBarSource:
    kw.setdefault("retry_wait_s", 0)
    kw.setdefault("timeout_s", 5)
    return AlpacaBarSource("KEYID1234", SECRET, feed=feed, url_override=fake.url, **kw)


START = pd.Timestamp("2025-05-27 13:30", tz="UTC")
END = pd.Timestamp("2025-05-27 13:35", tz="UTC")


def test_two_pages_are_followed(serve):
    def respond(q):
        if "page_token" not in q:
            return 200, {"bars": {"QQQ": [bar("2025-05-27T13:30:00Z", 500.0), bar("2025-05-27T13:31:00Z", 501.0)]},
                         "next_page_token": "UVFRfE18cGFnZTI="}
        return 200, {"bars": {"QQQ": [bar("2025-05-27T13:32:00Z", 502.0)]}, "next_page_token": None}

    fake = serve(respond)
    frame = source(fake).fetch("QQQ", START, END)
    assert len(fake.requests) == 2
    first, second = (r["query"] for r in fake.requests)
    assert fake.requests[0]["path"] == "/v2/stocks/bars"
    assert first["feed"] == "iex" and second["feed"] == "iex"
    assert first["symbols"] == "QQQ" and first["timeframe"] == "1Min" and first["adjustment"] == "split"
    assert "page_token" not in first and second["page_token"] == "UVFRfE18cGFnZTI="
    assert fake.requests[0]["headers"]["APCA-API-KEY-ID"] == "KEYID1234"
    assert list(frame.index) == [START, START + pd.Timedelta(minutes=1), START + pd.Timedelta(minutes=2)]
    assert frame["close"].tolist() == [500.0, 501.0, 502.0]
    assert frame.loc[START].tolist() == [499.5, 501.0, 499.0, 500.0, 100.0]
    assert str(frame.index.tz) == "UTC" and frame.index.name == "timestamp"


def test_bars_outside_the_requested_range_are_dropped(serve):
    # The end sent is the last wanted minute (Alpaca's end is inclusive); a bar at END itself is not ours.
    fake = serve(lambda q: (200, {"bars": {"QQQ": [bar("2025-05-27T13:34:00Z", 1.0), bar("2025-05-27T13:35:00Z", 2.0)]},
                                  "next_page_token": None}))
    frame = source(fake, feed="sip").fetch("QQQ", START, END)
    assert frame["close"].tolist() == [1.0]
    assert fake.requests[0]["query"]["feed"] == "sip"
    assert pd.Timestamp(fake.requests[0]["query"]["end"]) == pd.Timestamp("2025-05-27 13:34", tz="UTC")


def test_empty_string_page_token_ends_paging(serve):
    fake = serve(lambda q: (200, {"bars": {"QQQ": [bar("2025-05-27T13:30:00Z", 1.0)]}, "next_page_token": ""}))
    frame = source(fake).fetch("QQQ", START, END)
    assert len(fake.requests) == 1 and frame["close"].tolist() == [1.0]


def test_endless_paging_is_cut_off(serve):
    fake = serve(lambda q: (200, {"bars": {"QQQ": [bar("2025-05-27T13:30:00Z", 1.0)]}, "next_page_token": "again"}))
    with pytest.raises(DataSourceError, match="paging past 4 pages"):
        source(fake, max_pages=4).fetch("QQQ", START, END)
    assert len(fake.requests) == 4


def test_empty_bars_gives_an_empty_frame(serve):
    fake = serve(lambda q: (200, {"bars": {}, "next_page_token": None}))
    frame = source(fake).fetch("QQQ", START, END)
    assert frame.empty and list(frame.columns) == ["open", "high", "low", "close", "volume"]


def test_recent_sip_403_is_a_subscription_error(serve):
    fake = serve(lambda q: (403, RECENT_SIP))
    with pytest.raises(SubscriptionError, match="recent SIP"):
        source(fake, feed="sip").fetch("QQQ", START, END)


def sip_refused_when_recent(now: pd.Timestamp):
    """SIP is refused when the requested end is within 15 minutes of now; IEX always answers."""
    def respond(q):
        end = pd.Timestamp(q["end"])
        if q["feed"] == "sip" and end > now - pd.Timedelta(minutes=15):
            return 403, RECENT_SIP
        return 200, {"bars": {"QQQ": [bar("2025-05-27T13:30:00Z", 10.0 if q["feed"] == "sip" else 20.0)]},
                     "next_page_token": None}
    return respond


def test_fallback_policy_iex(serve):
    now = pd.Timestamp("2025-05-27 13:40", tz="UTC")
    fake = serve(sip_refused_when_recent(now))
    result = fetch_with_fallback(source(fake, feed="sip"), "QQQ", START, now, now, policy="iex")
    assert [r["query"]["feed"] for r in fake.requests] == ["sip", "iex"]
    assert result.feed == "iex" and not result.delayed and result.asof == now
    assert result.frame["close"].tolist() == [20.0]
    assert "IEX" in result.note


def test_fallback_policy_delayed(serve):
    now = pd.Timestamp("2025-05-27 13:50:30", tz="UTC")
    fake = serve(sip_refused_when_recent(now))
    result = fetch_with_fallback(source(fake, feed="sip"), "QQQ", START, now, now, policy="delayed")
    assert [r["query"]["feed"] for r in fake.requests] == ["sip", "sip"]
    # now - 15 min = 13:35:30, floored to 13:35; the inclusive end sent is the 13:34 bar start.
    assert result.asof == pd.Timestamp("2025-05-27 13:35", tz="UTC")
    assert pd.Timestamp(fake.requests[1]["query"]["end"]) == pd.Timestamp("2025-05-27 13:34", tz="UTC")
    assert result.feed == "sip" and result.delayed
    assert result.frame["close"].tolist() == [10.0]
    assert result.provenance()["delayed"] is True


def test_fallback_policy_error(serve):
    now = pd.Timestamp("2025-05-27 13:40", tz="UTC")
    fake = serve(sip_refused_when_recent(now))
    with pytest.raises(SubscriptionError):
        fetch_with_fallback(source(fake, feed="sip"), "QQQ", START, now, now, policy="error")
    assert len(fake.requests) == 1


def test_no_fallback_needed_for_old_sip(serve):
    now = pd.Timestamp("2025-05-27 15:00", tz="UTC")
    fake = serve(sip_refused_when_recent(now))
    result = fetch_with_fallback(source(fake, feed="sip"), "QQQ", START, END, now, policy="delayed")
    assert len(fake.requests) == 1 and result.feed == "sip" and not result.delayed and result.note is None


def test_unknown_policy_is_rejected(serve):
    fake = serve(lambda q: (200, {"bars": {}, "next_page_token": None}))
    with pytest.raises(ValueError, match="policy"):
        fetch_with_fallback(source(fake), "QQQ", START, END, END, policy="maybe")


def test_server_error_500(serve):
    fake = serve(lambda q: (500, {"message": "internal server error"}))
    with pytest.raises(DataSourceError, match=r"HTTP 500.*internal server error") as info:
        source(fake).fetch("QQQ", START, END)
    assert not isinstance(info.value, SubscriptionError)


def test_rejected_keys_401_never_show_the_secret(serve):
    fake = serve(lambda q: (401, {"message": "unauthorized."}))
    with pytest.raises(DataSourceError, match="rejected the API keys") as info:
        source(fake).fetch("QQQ", START, END)
    assert SECRET not in str(info.value)


def test_forbidden_403_without_sip_message_is_an_auth_error(serve):
    fake = serve(lambda q: (403, {"message": "forbidden."}))
    with pytest.raises(DataSourceError, match="rejected the API keys") as info:
        source(fake).fetch("QQQ", START, END)
    assert not isinstance(info.value, SubscriptionError)


def test_malformed_json(serve):
    fake = serve(lambda q: (200, b'{"bars": {"QQQ": [ {"t": '))
    with pytest.raises(DataSourceError, match="malformed response"):
        source(fake).fetch("QQQ", START, END)


def test_bar_missing_a_key(serve):
    broken = bar("2025-05-27T13:30:00Z", 1.0)
    del broken["vw"]
    fake = serve(lambda q: (200, {"bars": {"QQQ": [broken]}, "next_page_token": None}))
    with pytest.raises(DataSourceError, match="malformed response"):
        source(fake).fetch("QQQ", START, END)



def test_a_bug_in_our_own_conversion_is_not_blamed_on_alpaca(serve, monkeypatch):
    """Only the client's call maps errors to "malformed response from Alpaca" (exit 4): a body it accepted is
    ours to convert, and a fault there stays a traceback (exit 1, a bug to report)."""
    import marketdata.alpaca as alpaca_module

    def broken(barset, symbol):
        raise KeyError("our own bug")

    monkeypatch.setattr(alpaca_module, "_barset_frame", broken)
    fake = serve(lambda q: (200, {"bars": {"QQQ": [bar("2025-05-27T13:30:00Z", 1.0)]}, "next_page_token": None}))
    with pytest.raises(KeyError, match="our own bug"):
        source(fake).fetch("QQQ", START, END)

def test_rate_limit_retries_without_sleeping(serve):
    fake = serve(lambda q: (429, {"message": "too many requests."}))
    t0 = time.monotonic()
    with pytest.raises(DataSourceError, match="rate limit"):
        source(fake, retry_attempts=1, retry_wait_s=0).fetch("QQQ", START, END)
    assert len(fake.requests) == 2 and time.monotonic() - t0 < 2.5


def test_connection_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = AlpacaBarSource("KEYID1234", SECRET, url_override=f"http://127.0.0.1:{port}", timeout_s=2)
    with pytest.raises(DataSourceError, match="cannot reach Alpaca"):
        src.fetch("QQQ", START, END)


def test_hung_server_times_out(serve):
    def slow(q):
        time.sleep(1.5)
        return 200, {"bars": {}, "next_page_token": None}

    fake = serve(slow)
    with pytest.raises(DataSourceError, match="cannot reach Alpaca"):
        source(fake, timeout_s=0.3).fetch("QQQ", START, END)


def test_verbatim_fixtures_two_pages(serve, real_data_dir):
    fixtures = real_data_dir / "alpaca_fixtures"
    page1 = json.loads((fixtures / "alpaca_py_tests_AAPL_1Day_with_next_page_token.json").read_text())
    page2 = json.loads((fixtures / "alpaca_py_tests_AAPL_TSLA_1Day_multisymbol_last_page.json").read_text())
    fake = serve(lambda q: (200, page2 if "page_token" in q else page1))
    frame = source(fake).fetch("AAPL", "2022-02-01", "2022-03-10")
    assert fake.requests[1]["query"]["page_token"] == page1["next_page_token"]
    assert frame["close"].tolist() == [174.61, 175.84, 162.95]
    assert frame.index[2] == pd.Timestamp("2022-03-09 05:00", tz="UTC")


def test_credentials_from_env_precedence_and_repr():
    both = {"ALPACA_KEY_ID": "plan-key", "ALPACA_SECRET_KEY": "plan-secret",
            "APCA_API_KEY_ID": "apca-key", "APCA_API_SECRET_KEY": "apca-secret"}
    assert credentials_from_env(both) == Credentials("plan-key", "plan-secret")
    only_apca = {"APCA_API_KEY_ID": "apca-key", "APCA_API_SECRET_KEY": "apca-secret", "ALPACA_KEY_ID": "half"}
    assert credentials_from_env(only_apca) == Credentials("apca-key", "apca-secret")
    assert credentials_from_env({"ALPACA_KEY_ID": "k", "ALPACA_SECRET_KEY": " "}) is None
    assert credentials_from_env({}) is None
    creds = Credentials("AKIDEXAMPLE1234", SECRET)
    assert SECRET not in repr(creds) and SECRET not in str(creds) and "1234" in repr(creds)
    assert SECRET not in repr(AlpacaBarSource("AKIDEXAMPLE1234", SECRET))
