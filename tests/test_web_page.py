"""The page in a real headless Chromium (Debian's chromium + chromium-driver, via Selenium), served by uvicorn.

It must load with no console errors, draw the band and path traces, show the JSON's P(up), and take the next
forecast from the SSE stream without a reload. The screenshot is kept under pytest's tmp dir, and written to
docs/serve_page.png when KRONOS_KEEP_SCREENSHOT=1."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from forecast.metrics import session_vwap
from live.hub import LiveHub
from web.app import create_app
from support.web_forecasts import ServerThread, pipeline, qqq_bars, synthetic_forecast

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
NOW = pd.Timestamp("2025-06-10 17:45", tz="UTC")   # 13:45 New York: most of the session drawn
TOKEN = "page-token-123"
REPO = Path(__file__).resolve().parents[1]


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("chromium and chromium-driver are needed (apt-get install chromium chromium-driver; "
                    "bash setup_venv.sh --test installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1250", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))


def _wait(driver, script: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {script}")
        time.sleep(0.05)


def test_page_in_headless_chromium(real_data_dir, tmp_path):
    bars = qqq_bars(str(real_data_dir))
    pipe = pipeline(horizon=30, n_samples=60, calibrated=True)
    hub = LiveHub(["QQQ"])
    hub.set_model({"model": "synthetic paths (test)", "tokenizer": "none", "device": "cpu", "dtype": "float32",
                   "load_s": 0.1})
    # the morning's forecasts, most of them reconciled, so the reliability panel has numbers
    for k, t in enumerate(pd.date_range(NOW - pd.Timedelta(minutes=150), NOW - pd.Timedelta(minutes=5), freq="5min")):
        s, c, ctx = synthetic_forecast(pipe, bars, t, seed=100 + k)
        hub.on_bars("QQQ", bars[bars.index < t], t)
        hub.on_forecast("QQQ", s, c, 1.1, context=ctx)
    hub.on_bars("QQQ", bars[bars.index < NOW], NOW + pd.Timedelta(seconds=2))
    first, c1, ctx1 = synthetic_forecast(pipe, bars, NOW, seed=1, drift=-6e-5)
    hub.on_forecast("QQQ", first, c1, 1.3, context=ctx1)
    later = NOW + pd.Timedelta(minutes=1)
    second, c2, ctx2 = synthetic_forecast(pipe, bars, later, seed=2, drift=8e-5)
    p1, p2 = first["summary"]["p_up_30m"], second["summary"]["p_up_30m"]
    assert f"{p1:.1%}" != f"{p2:.1%}"  # the update must be visible

    with ServerThread(create_app(hub, token=TOKEN)) as server:
        shown = httpx.get(f"{server.url}/forecast", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert shown == first
        driver = _driver()
        try:
            driver.get(f"{server.url}/?token={TOKEN}")
            _wait(driver, "return document.getElementById('p-up').dataset.value !== undefined")
            _wait(driver, "return document.getElementById('conn').textContent === 'live'")
            p_up = driver.find_element("id", "p-up")
            assert p_up.text == f"{shown['summary']['p_up_30m'] * 100:.1f}%"
            assert float(p_up.get_attribute("data-value")) == shown["summary"]["p_up_30m"]
            cal = driver.find_element("id", "p-up-cal")
            assert cal.text == f"{shown['calibrated']['p_up_30m'] * 100:.1f}%"
            for node, (lo, hi) in (("p-up-ci", shown["summary"]["p_up_30m_ci"]),
                                   ("p-up-cal-ci", shown["calibrated"]["p_up_30m_ci"])):  # the Monte Carlo error
                text = f"± {(hi - lo) * 50:.1f} pp ({lo * 100:.1f}–{hi * 100:.1f} %)"
                assert driver.find_element("id", node).text == text
            se = shown["summary"]["exp_ret_30m_se"]
            assert driver.find_element("id", "exp-ret-se").text == f"s.e. {se * 100:.3f}%"
            traces = driver.execute_script(
                "return document.getElementById('chart').data.map(t => ({name: t.name, type: t.type, "
                "n: (t.y || t.close).length, y: t.y}))")
            by_name = {t["name"]: t for t in traces}
            assert by_name["bars"]["type"] == "candlestick"
            session = bars[(bars.index >= "2025-06-10 13:30") & (bars.index < NOW)]  # 09:30 NY to now
            assert by_name["bars"]["n"] == len(session)
            band = by_name["p10–p90 band"]
            assert band["y"][1:] == pytest.approx(shown["summary"]["percentiles"]["p90"])
            assert by_name["median"]["y"][1:] == pytest.approx(shown["summary"]["percentiles"]["p50"])
            assert by_name["p10"]["y"][1:] == pytest.approx(shown["summary"]["percentiles"]["p10"])
            assert by_name["paths (20 of 60)"]["n"] == 20 * (30 + 2)  # 20 paths of now + 30 minutes, gaps between
            assert any(n.startswith("VWAP ") for n in by_name) and any(n.startswith("mid band ") for n in by_name)
            rel = driver.find_element("id", "reliability").text
            panel = hub.page_state("QQQ")["reliability"]
            assert panel["n"] > 10 and f"{panel['brier']:.3f}" in rel and "coin flip 0.25" in rel
            fresh = driver.find_element("id", "freshness").text
            assert "last bar 13:44 NY" in fresh and "after its close" in fresh
            # the header is the last bar's close; the forecast's anchor is shown apart
            last = bars[bars.index < NOW]["close"].iloc[-1]
            assert driver.find_element("id", "last-close").text == f"{last:.2f}"
            anchor = driver.find_element("id", "anchor")
            assert float(anchor.get_attribute("data-value")) == shown["now_close"]
            assert anchor.text == f"forecast from {shown['now_close']:.2f} (13:44 bar)"
            assert driver.find_element("id", "conn").get_attribute("data-state") == "live"
            # time to the close from the 13:44 bar's close; volume bars and the session VWAP under the candles;
            # the default view frames the last hour and the whole fan
            assert driver.find_element("id", "to-close").text == "2 h 15 min to the close"
            session = bars[(bars.index >= "2025-06-10 13:30") & (bars.index < NOW)]
            assert by_name["volume"]["y"] == pytest.approx(session["volume"].tolist())
            assert by_name["session VWAP"]["y"][-1] == pytest.approx(session_vwap(session), rel=1e-9)
            x_range = driver.execute_script("return document.getElementById('chart').layout.xaxis.range")
            end = pd.Timestamp(shown["future_times"][-1]).tz_convert("America/New_York")
            assert x_range == ["2025-06-10 12:44:30", (end + pd.Timedelta(seconds=30)).strftime("%Y-%m-%d %H:%M:%S")]
            # the drawdown and run-up rows: basis points, dollars and levels from the JSON's fractions
            risk = {r.find_elements("tag name", "td")[0].text: r.find_elements("tag name", "td")[1].text
                    for r in driver.find_elements("css selector", "#risk tr")}
            sm, close = shown["summary"], shown["now_close"]
            for label, key, side in (("drawdown p50 / p90 / p95", "drawdown", -1), ("run-up p50 / p90 / p95", "runup", 1)):
                f = [sm[f"{key}_p{q}_30m"] for q in (50, 90, 95)]
                assert risk[label] == (" / ".join(f"{x * 1e4:.1f}" for x in f) + " bp = " +
                                       " / ".join(f"${x * close:.2f}" for x in f) + " → " +
                                       " / ".join(f"{close * (1 + side * x):.2f}" for x in f))
            # the trust badge says the summary's trust block; the session's P(up) history: raw, calibrated, the
            # calibrated interval as a band, realised ups and downs marked, each checked against the records
            badge = driver.find_element("id", "trust")
            assert badge.get_attribute("data-status") == shown["trust"]["status"]
            assert badge.text.startswith(shown["trust"]["status"]) and "edge unknown" in badge.text
            hist = driver.execute_script(
                "return document.getElementById('p-history').data.map(t => ({name: t.name, y: t.y, x: t.x}))")
            h = {t["name"]: t for t in hist}
            records = [r for r in hub.history("QQQ", 500)]
            assert h["P(up) raw"]["y"] == pytest.approx([r["p_up"] for r in records])
            assert h["P(up) calibrated"]["y"] == pytest.approx([r["p_up_calibrated"] for r in records])
            lo_hi = [r["p_up_interval"] for r in records]
            assert h["interval lo"]["y"] == pytest.approx([x[0] for x in lo_hi])
            assert h["calibrated 95% interval"]["y"] == pytest.approx([x[1] for x in lo_hi])
            assert all(lo <= c <= hi for (lo, hi), c in zip(lo_hi, h["P(up) calibrated"]["y"]))
            ups = [r for r in records if r["outcome"] is not None and r["outcome"]["up"] == 1]
            downs = [r for r in records if r["outcome"] is not None and r["outcome"]["up"] == 0]
            assert len(h["realised: up"]["x"]) == len(ups) and len(h["realised: down"]["x"]) == len(downs)
            assert len(ups) + len(downs) == panel["n"] and set(h["realised: up"]["y"]) <= {1}

            driver.execute_script("window.__noReload = 'still here'")
            hub.on_bars("QQQ", bars[bars.index < later], later)
            hub.on_forecast("QQQ", second, c2, 1.2, context=ctx2)
            _wait(driver, f"return parseFloat(document.getElementById('p-up').dataset.value) === {p2!r}")
            assert driver.find_element("id", "p-up").text == f"{p2 * 100:.1f}%"
            assert driver.execute_script("return window.__noReload") == "still here"
            median = driver.execute_script(
                "return document.getElementById('chart').data.find(t => t.name === 'median').y")
            assert median[1:] == pytest.approx(second["summary"]["percentiles"]["p50"])

            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert errors == []
            shot = tmp_path / "serve_page.png"
            driver.save_screenshot(str(shot))
            assert shot.stat().st_size > 10_000
            if os.environ.get("KRONOS_KEEP_SCREENSHOT") == "1":
                shutil.copyfile(shot, REPO / "docs" / "serve_page.png")
        finally:
            driver.quit()


def test_replay_page_says_replay_and_claims_no_latency(real_data_dir):
    """A replay's page: the pill says "replay ×60" from /state and /health, the freshness line gives no arrival
    latency (the replay clock's lags are not the market's), and the header is still the last bar's close."""
    bars = qqq_bars(str(real_data_dir))
    hub = LiveHub(["QQQ"], mode="replay", speed=60)
    hub.set_model({"model": "synthetic paths (test)", "tokenizer": "none", "device": "cpu", "dtype": "float32",
                   "load_s": 0.1})
    hub.on_bars("QQQ", bars[bars.index < NOW], NOW + pd.Timedelta(seconds=0.5))
    summary, closes, ctx = synthetic_forecast(pipeline(horizon=30, n_samples=40), bars, NOW, seed=3)
    hub.on_forecast("QQQ", summary, closes, 0.4, context=ctx)
    with ServerThread(create_app(hub)) as server:
        driver = _driver()
        try:
            driver.get(f"{server.url}/")
            _wait(driver, "return document.getElementById('conn').dataset.state === 'replay'")
            assert driver.find_element("id", "conn").text == "replay ×60"
            fresh = driver.find_element("id", "freshness").text
            assert fresh == "last bar 13:44 NY · replay ×60 of recorded bars"
            assert "arrived" not in fresh and "ago" not in fresh
            assert driver.find_element("id", "last-close").text == f"{bars[bars.index < NOW]['close'].iloc[-1]:.2f}"
            assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
        finally:
            driver.quit()


def test_static_view_screenshots_with_plain_headless_chromium(real_data_dir, tmp_path):
    """The README's screenshot recipe: ``?static=1`` draws once and opens no event stream, so Chromium's own
    ``--screenshot`` with a virtual-time budget finishes (the live page's stream would keep it waiting). With two
    symbols served, a switcher lists them and picking one shows it, the token and ?static=1 kept."""
    bars = qqq_bars(str(real_data_dir))
    hub = LiveHub(["QQQ", "SPY"])
    hub.on_bars("QQQ", bars[bars.index < NOW], NOW + pd.Timedelta(seconds=1))
    other = bars[bars.index < NOW].copy()
    other[["open", "high", "low", "close"]] *= 1.1          # a second symbol: the same minutes at other prices
    hub.on_bars("SPY", other, NOW + pd.Timedelta(seconds=1))
    summary, closes, ctx = synthetic_forecast(pipeline(horizon=30, n_samples=40), bars, NOW, seed=5)
    hub.on_forecast("QQQ", summary, closes, 0.4, context=ctx)
    with ServerThread(create_app(hub, token=TOKEN)) as server:
        driver = _driver()
        try:
            driver.get(f"{server.url}/?static=1&token={TOKEN}")
            _wait(driver, "return window.KRONOS_DRAWN === true")
            assert driver.execute_script("return window.KRONOS_STREAM === undefined")   # no event stream
            assert driver.find_element("id", "p-up").text == f"{summary['summary']['p_up_30m'] * 100:.1f}%"
            assert driver.find_element("id", "conn").text == "live"
            from selenium.webdriver.support.ui import Select

            box = driver.find_element("id", "switch")
            assert box.is_displayed() and [o.text for o in Select(box).options] == ["QQQ", "SPY"]
            Select(box).select_by_value("SPY")
            _wait(driver, "return document.getElementById('symbol').textContent === 'SPY'")
            _wait(driver, "return window.KRONOS_DRAWN === true")
            query = driver.execute_script("return location.search")
            assert "symbol=SPY" in query and "static=1" in query and f"token={TOKEN}" in query
            assert driver.find_element("id", "last-close").text == f"{other['close'].iloc[-1]:.2f}"
            assert driver.find_element("id", "p-up").text == "—"          # no SPY forecast yet
            assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
        finally:
            driver.quit()
        if not Path(CHROMIUM).exists():
            pytest.fail("chromium is needed (apt-get install chromium)")
        shot = tmp_path / "page.png"
        proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                               "--hide-scrollbars", "--window-size=1400,1250", "--virtual-time-budget=8000",
                               f"--screenshot={shot}", f"{server.url}/?static=1&token={TOKEN}"],
                              capture_output=True, text=True, timeout=90, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert shot.stat().st_size > 10_000


def test_page_at_the_open_draws_the_previous_sessions_last_hour(real_data_dir, tmp_path):
    """At 09:40 New York the chart also draws the previous session's last hour (dimmed), hides the night between,
    and frames the last 60 bars across it plus the fan."""
    bars = qqq_bars(str(real_data_dir))
    at = pd.Timestamp("2025-06-10 13:40", tz="UTC")
    hub = LiveHub(["QQQ"])
    hub.on_bars("QQQ", bars[bars.index < at], at + pd.Timedelta(seconds=1))
    summary, closes, ctx = synthetic_forecast(pipeline(horizon=30, n_samples=40), bars, at, seed=7)
    hub.on_forecast("QQQ", summary, closes, 0.4, context=ctx)
    with ServerThread(create_app(hub)) as server:
        driver = _driver()
        try:
            driver.get(f"{server.url}/?static=1")
            _wait(driver, "return window.KRONOS_DRAWN === true")
            chart = driver.execute_script(
                "var c = document.getElementById('chart'); return {data: c.data.map(t => ({name: t.name, "
                "n: (t.close || t.y || []).length})), x: c.layout.xaxis}")
            n = {t["name"]: t["n"] for t in chart["data"]}
            assert n["previous session"] == 60 and n["bars"] == 10
            assert chart["x"]["range"][0] == "2025-06-09 15:09:30"        # 50 bars of yesterday + 10 of today
            assert chart["x"]["rangebreaks"][0]["bounds"] == ["2025-06-09 16:00:00", "2025-06-10 09:30:00"]
            assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
            driver.save_screenshot(str(tmp_path / "open.png"))
        finally:
            driver.quit()
