"""Secrets never shown: a Redis password in the URL's user part or in ?password=, and the Alpaca keys (or
anything key-like) an upstream error body echoes. Checked on the function and where the text is shown: the
config error, the Redis outage in /health and the log, and Alpaca's error line."""
import json
import logging
import socket

import pytest

from app.config import ConfigError, build_config
from support.fake_alpaca import FakeAlpaca
from marketdata.alpaca import AlpacaBarSource
from marketdata.frame import DataSourceError
from marketdata.redact import redact_text, redact_url

KEY, SECRET = "PKZX81QWERTY0ASDF123", "Zq8sd7F6gH5jK4lL3mN2bV1cX0zAqWsEdRfTgYhU"


@pytest.mark.parametrize("url, shown", [
    ("redis://user:hunter2@cache:6380/1", "redis://user:***@cache:6380/1"),
    ("redis://:hunter2@cache/0", "redis://:***@cache/0"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://127.0.0.1:6379/0?password=hunter2", "redis://127.0.0.1:6379/0?password=***"),
    ("rediss://cache:6380/0?ssl_cert_reqs=none&Password=hunter2",
     "rediss://cache:6380/0?ssl_cert_reqs=none&Password=***"),
    ("unix:///run/redis.sock?db=1&password=hunter2", "unix:///run/redis.sock?db=1&password=***"),
    ("redis://cache:6379/0?auth_token=hunter2&db=2", "redis://cache:6379/0?auth_token=***&db=2"),
    ("redis://:hunter2@127.0.0.1:notaport/0", "redis://:***@127.0.0.1:notaport/0"),  # does not parse
    ("redis://127.0.0.1:notaport/0?password=hunter2", "redis://127.0.0.1:notaport/0?password=***"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown
    assert "hunter2" not in redact_url(url)


def test_redact_text_masks_given_secrets_named_values_and_key_like_strings():
    body = (f'{{"message": "forbidden", "echo": {{"APCA-API-KEY-ID": "{KEY}", "APCA-API-SECRET-KEY": "{SECRET}"}}, '
            f'"auth": "Bearer abc.def", "request_id": "7f3c2a9e4b1d8c6f5a0e9d2c"}} see https://u:pw@proxy/x?token=t0k')
    shown = redact_text(body, secrets=(KEY, SECRET), limit=None)
    for secret in (KEY, SECRET, "abc.def", "7f3c2a9e4b1d8c6f5a0e9d2c", ":pw@", "t0k"):
        assert secret not in shown
    assert "forbidden" in shown and "APCA-API-SECRET-KEY" in shown  # what it is stays readable
    # a secret given by value is masked wherever it sits, even glued into other text
    assert redact_text(f"x{SECRET[:10]}y", secrets=(SECRET[:10],)) == "x***y"
    # the ordinary words of our own lines stay as they are
    line = "cannot write outputs/live/pred_summary_QQQ_20250604T150000Z.json: No space left on device"
    assert redact_text(line) == line
    # bounded
    long = redact_text("x " * 1000, limit=50)
    assert len(long) == 50 and long.endswith("…")


def test_config_error_never_shows_the_redis_password():
    with pytest.raises(ConfigError) as info:
        build_config({}, {"redis_url": "redis://:hunter2@127.0.0.1:notaport/0"}, script="serve")
    assert "redis_url" in str(info.value) and "port" in str(info.value) and "hunter2" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        build_config({}, {"redis_url": "http://cache/0?password=hunter2"}, script="serve")
    assert "hunter2" not in str(info.value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_redis_outage_shows_no_password_in_health_or_the_log(caplog):
    from live.hub import LiveHub
    from live.outputs import RedisPublisher

    hub = LiveHub(["QQQ"])
    url = f"redis://127.0.0.1:{free_port()}/0?password=hunter2"  # nobody listens: every send fails
    publisher = RedisPublisher(url, "kronos", hub, timeout_s=0.5, max_backoff_s=0.2)
    try:
        with caplog.at_level(logging.WARNING):
            publisher.submit("QQQ", b"{}")
            for _ in range(200):
                if hub.health()["output_errors"].get("redis"):
                    break
                publisher._thread.join(0.02)
    finally:
        publisher.close(timeout=0.2)
    health = json.dumps(hub.health())
    assert "password=***" in health and "hunter2" not in health
    assert "redis: cannot publish" in caplog.text and "hunter2" not in caplog.text


@pytest.mark.parametrize("status, body", [
    (401, None),                                              # JSON echoing the request's headers
    (403, None),
    (500, b"<html>proxy error: key=%s secret=%s</html>"),     # not JSON at all
    (200, b"not json, but the keys: %s / %s"),                # a 200 whose body is not JSON
])
def test_alpaca_error_lines_never_echo_the_keys(status, body):
    def respond(query):
        if body is None:
            return status, {"message": f"forbidden; you sent APCA-API-KEY-ID={KEY} and {SECRET}", "code": 40110000}
        return status, body % (KEY.encode(), SECRET.encode())

    fake = FakeAlpaca(respond)
    try:
        source = AlpacaBarSource(KEY, SECRET, url_override=fake.url, retry_wait_s=0, timeout_s=5)
        with pytest.raises(DataSourceError) as info:
            source.fetch("QQQ", "2025-06-04T14:00:00Z", "2025-06-04T15:00:00Z")
    finally:
        fake.close()
    line = str(info.value)
    assert KEY not in line and SECRET not in line, line
    assert "***" in line or status == 200, line  # where the body is shown, the keys' places are marked
    assert "\n" not in line and len(line) < 400
    assert fake.requests[0]["headers"]["APCA-API-KEY-ID"] == KEY  # the keys were sent, so they could be echoed
