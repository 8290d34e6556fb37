"""web.app endpoints: JSON, 404s, /metrics text, tokens, no secrets in any response, and SSE over real HTTP."""
from __future__ import annotations

import json
import threading

import httpx
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from live.hub import LiveHub
from web.app import create_app
from support.web_forecasts import ServerThread, pipeline, qqq_bars, synthetic_forecast

NOW = pd.Timestamp("2025-06-10 15:00", tz="UTC")
TOKEN = "tok-3f9a-never-shown"
ENDPOINTS = ["/", "/forecast", "/forecast/history", "/state", "/health", "/metrics", "/static/app.js",
             "/static/style.css"]


@pytest.fixture
def fed_hub(real_data_dir):
    bars = qqq_bars(str(real_data_dir))
    hub = LiveHub(["QQQ", "SPY"])
    hub.set_model({"model": "tiny", "tokenizer": "tiny-tok", "device": "cpu", "dtype": "float32", "load_s": 0.2})
    hub.on_bars("QQQ", bars[bars.index < NOW], NOW)
    summary, closes, ctx = synthetic_forecast(pipeline(calibrated=True), bars, NOW)
    hub.on_forecast("QQQ", summary, closes, 1.5, context=ctx)
    hub.on_skip("QQQ", NOW + pd.Timedelta(minutes=1), "overrun", "70 s > budget 50 s")
    return hub, summary, bars


def test_forecast_history_health_and_404s(fed_hub):
    hub, summary, _ = fed_hub
    with TestClient(create_app(hub)) as client:
        r = client.get("/forecast")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert r.json() == summary                                   # the CLI's JSON, unchanged
        assert client.get("/forecast?symbol=qqq").json() == summary
        r = client.get("/forecast?symbol=SPY")                       # served, but nothing forecast yet
        assert r.status_code == 404 and r.json() == {"error": "no forecast for SPY yet"}
        r = client.get("/forecast?symbol=IWM")
        assert r.status_code == 404 and "unknown symbol 'IWM'" in r.json()["error"]
        assert client.get("/forecast/history?symbol=IWM").status_code == 404
        hist = client.get("/forecast/history?limit=5").json()
        assert hist["symbol"] == "QQQ" and len(hist["forecasts"]) == 1
        assert hist["forecasts"][0]["p_up"] == summary["summary"]["p_up_10m"]
        assert hist["forecasts"][0]["outcome"] is None
        assert client.get("/forecast/history?limit=0").status_code == 422
        health = client.get("/health").json()
        assert health["model_loaded"] is True and health["symbols_served"] == ["QQQ", "SPY"]
        assert health["symbols"]["QQQ"]["last_bar"] == "2025-06-10T14:59:00Z"
        assert health["skipped"] == {"overrun": 1} and health["last_error"] is None
        state = client.get("/state").json()
        assert state["summary"] == summary and len(state["paths"]) == 20
        assert client.get("/static/nope.js").status_code == 404
        page = client.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "cdn" not in page.text.lower() and "static/plotly.min.js" in page.text
        js = client.get("/static/plotly.min.js")
        assert js.status_code == 200 and len(js.content) > 1_000_000 and b"plotly" in js.content[:2000].lower()


def test_metrics_text_parses(fed_hub):
    hub, _, _ = fed_hub
    with TestClient(create_app(hub)) as client:
        r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(r.text) for s in f.samples}
    assert samples[("kronos_forecasts_total", (("symbol", "QQQ"),))] == 1
    assert samples[("kronos_forecast_latency_seconds_sum", (("symbol", "QQQ"),))] == 1.5
    assert samples[("kronos_forecast_latency_seconds_bucket", (("le", "2.0"), ("symbol", "QQQ")))] == 1
    assert samples[("kronos_forecast_latency_seconds_bucket", (("le", "1.0"), ("symbol", "QQQ")))] == 0
    assert samples[("kronos_skips_total", (("reason", "overrun"), ("symbol", "QQQ")))] == 1
    assert samples[("kronos_stream_reconnects_total", ())] == 0


def test_token_required_everywhere_and_never_echoed(fed_hub, monkeypatch):
    hub, _, _ = fed_hub
    secrets = ["PKTESTKEYID0000000", "sk-test-secret-0000000000000000"]
    monkeypatch.setenv("APCA_API_KEY_ID", secrets[0])
    monkeypatch.setenv("APCA_API_SECRET_KEY", secrets[1])
    with TestClient(create_app(hub, token=TOKEN)) as client:
        for path in ENDPOINTS + ["/stream", "/static/plotly.min.js"]:
            for headers, query in [({}, ""), ({"Authorization": "Bearer wrong"}, ""), ({}, "?token=wrong"),
                                   ({"Authorization": TOKEN}, "")]:  # the scheme is required
                r = client.get(path + query, headers=headers)
                assert r.status_code == 401, (path, headers, query)
                assert r.headers["www-authenticate"] == "Bearer" and TOKEN not in r.text
        bodies = []
        for path in ENDPOINTS:
            r = client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200, path
            bodies.append(r.text)
            r = client.get(f"{path}?token={TOKEN}")
            assert r.status_code == 200, path
            bodies.append(r.text + json.dumps(dict(r.headers)))
    for body in bodies:
        for secret in secrets + [TOKEN]:
            assert secret not in body


def test_sse_stream_over_http(fed_hub):
    """A real HTTP client on /stream receives the next forecast, pushed by another thread, with its page state."""
    hub, _, bars = fed_hub
    later = NOW + pd.Timedelta(minutes=2)
    summary2, closes2, ctx2 = synthetic_forecast(pipeline(), bars, later, seed=9, drift=4e-4)
    with ServerThread(create_app(hub, token=TOKEN)) as server:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            with client.stream("GET", f"/stream?symbol=QQQ&token={TOKEN}") as r:
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
                lines = r.iter_lines()
                assert next(lines) == "retry: 3000"

                def produce() -> None:
                    hub.on_skip("SPY", later, "gap", "11 fills")            # another symbol: filtered out
                    hub.on_bars("QQQ", bars[bars.index < later], later)
                    hub.on_forecast("QQQ", summary2, closes2, 2.0, context=ctx2)

                threading.Thread(target=produce).start()
                event = data = None
                for line in lines:
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "forecast":
                        data = json.loads(line[6:])
                        break
                    assert event != "skip"
                hub.close()  # the service's shutdown: every stream ends, so uvicorn need not wait them out
                rest = list(lines)
                assert all(line in ("", ": ping") or not line.startswith("event: forecast") for line in rest)
            r = client.get(f"/stream?token={TOKEN}")  # a stream opened after close ends at once
            assert r.status_code == 200 and r.text == "retry: 3000\n\n"
    assert data["summary"] == summary2 and data["symbol"] == "QQQ"
    assert data["candles"]["times"][-1] == "2025-06-10T15:01:00Z"
