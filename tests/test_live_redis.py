"""Redis output against a real redis-server on a free loopback port: the published JSON equals /forecast's and the
latest file's; an outage is logged, counted and retried while forecasting goes on."""
import json
import shutil
import socket
import subprocess
import time

import pandas as pd
import pytest
import redis as redis_py

from support.live_support import ManualClock, canonical_bars, make_loop, serve_config, wait_for

T_CLOSE = pd.Timestamp("2025-06-04T15:01:00Z")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port: int, tmp_path) -> subprocess.Popen:
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed (bash setup_venv.sh --test installs Debian's redis-server)")
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis_py.Redis(port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return proc
        except redis_py.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.02)


def stop_redis(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def ckpt(checkpoint_pairs):
    return checkpoint_pairs("tiny", 0)  # read only: shared by the session (conftest.py)


def test_published_json_equals_the_api_and_survives_an_outage(ckpt, tmp_path):
    from fastapi.testclient import TestClient

    from web.app import create_app

    port = free_port()
    proc = start_redis(port, tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    bars = canonical_bars()
    cfg = serve_config(ckpt, tmp_path / "live", redis_url=url)
    publisher = None
    try:
        loop, hub, book, clock, _ = make_loop(cfg, clock=ManualClock(T_CLOSE))
        publisher = loop.outputs.redis
        listener = redis_py.Redis(port=port).pubsub()
        listener.subscribe("kronos:QQQ")
        assert listener.get_message(timeout=2)["type"] == "subscribe"

        book.upsert("QQQ", bars[bars.index < "2025-06-04T15:01Z"])
        assert loop.step() is True
        message = listener.get_message(timeout=5)
        published = json.loads(message["data"])
        with TestClient(create_app(hub)) as web:
            api = web.get("/forecast", params={"symbol": "QQQ"}).json()
        assert published == api == json.loads((tmp_path / "live" / "pred_summary_QQQ_latest.json").read_text())
        assert json.loads(redis_py.Redis(port=port).get("kronos:QQQ:latest")) == published
        assert published["asof"] == "2025-06-04T15:01:00Z"

        # Redis goes away: the next minute is still forecast and written; the failure is counted and retried
        stop_redis(proc)
        clock.t = T_CLOSE + pd.Timedelta(minutes=1)
        book.upsert("QQQ", bars.loc[["2025-06-04T15:01Z"]])
        assert loop.step() is True
        assert hub.latest("QQQ")["asof"] == "2025-06-04T15:02:00Z"
        wait_for(lambda: hub.health()["output_errors"].get("redis", {}).get("count", 0) >= 2,
                 what="counted, retried Redis failures")
        assert "ConnectionError" in hub.health()["output_errors"]["redis"]["last_message"]
        # it comes back: the pending latest summary is delivered without another forecast
        proc = start_redis(port, tmp_path)
        wait_for(lambda: redis_py.Redis(port=port).get("kronos:QQQ:latest") is not None, what="the retry")
        assert json.loads(redis_py.Redis(port=port).get("kronos:QQQ:latest")) == hub.latest("QQQ")
        # the publisher counts a batch just after Redis took it
        wait_for(lambda: publisher.sent >= 2, what="the retried message counted")
        assert publisher.sent == 2
    finally:
        if publisher is not None:
            publisher.close(timeout=1)
        stop_redis(proc)
