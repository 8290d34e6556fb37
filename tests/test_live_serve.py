"""serve.py as a user runs it: a replay of a bars file with a local checkpoint serves the page and the API while
forecasting minute by minute, stops cleanly on SIGTERM; bad settings end in one line and a documented code."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

import serve
from app.exits import ExitCode
from app.operation import run_lock
from live.book import BarBook
from live.clock import ReplayClock
from live.playback import ReplaySource
from support.live_support import canonical_bars

ROOT = Path(__file__).resolve().parents[1]
ONE_MINUTE = pd.Timedelta(minutes=1)


@pytest.fixture(scope="module")
def ckpt(checkpoint_pairs):
    return checkpoint_pairs("tiny", 0)  # read only: shared by the session (conftest.py)


@pytest.fixture
def bars_csv(tmp_path):
    path = tmp_path / "bars.csv"
    canonical_bars().rename_axis("timestamp").reset_index().to_csv(path, index=False)
    return path


def flags(ckpt, out, *extra):
    model, tokenizer = ckpt
    return ["--model", str(model), "--tokenizer", str(tokenizer), "--device", "cpu", "--n-samples", "4",
            "--horizon", "10", "--lookback", "120", "--seed", "3", "--live-out", str(out), "--port", "0", *extra]


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_replay_serves_the_page_and_the_api_minute_by_minute(ckpt, bars_csv, tmp_path):
    out = tmp_path / "live"
    proc = subprocess.Popen([sys.executable, "serve.py", "--replay", str(bars_csv), "--from", "2025-06-04T15:00:00Z",
                             "--speed", "120", *flags(ckpt, out)], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "KRONOS_SERVE_TOKEN": ""})
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        port = None
        while port is None:
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            found = [re.search(r"web page on http://127\.0\.0\.1:(\d+)/", line) for line in list(lines)]
            port = next((int(m.group(1)) for m in found if m), None)
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        seen = set()
        while len(seen) < 2:  # two forecasts of consecutive minutes, each also in the latest file
            assert time.monotonic() < deadline, "".join(lines)
            try:
                api = get_json(f"{base}/forecast?symbol=QQQ")
            except urllib.error.HTTPError as exc:
                assert exc.code == 404  # no forecast yet
                time.sleep(0.05)
                continue
            on_disk = json.loads((out / "pred_summary_QQQ_latest.json").read_text())
            if on_disk["asof"] == api["asof"]:
                assert on_disk == api
                seen.add(api["asof"])
            time.sleep(0.05)
        assert min(seen) >= "2025-06-04T15:00:00Z"
        health = get_json(f"{base}/health")
        assert health["model_loaded"] is True and health["symbols"]["QQQ"]["last_bar"] >= "2025-06-04T15:00:00Z"
        assert (health["mode"], health["speed"], health["symbols"]["QQQ"]["feed"]) == ("replay", 120.0, "replay")
        with urllib.request.urlopen(f"{base}/", timeout=5) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == ExitCode.OK, "".join(lines)
    assert not [line for line in lines if "Traceback" in line]


def test_replay_plays_bars_at_their_close_and_skips_the_night():
    bars = canonical_bars()
    clock = ReplayClock(pd.Timestamp("2025-06-03T19:55:00Z"), speed=600)
    delivered = []
    book = BarBook(["QQQ"], on_change=lambda s, f: delivered.append((f.index[-1], clock.now())))
    stop = threading.Event()
    source = ReplaySource({"QQQ": bars}, book, clock, rth=True, stop=stop)
    source.start()
    try:
        assert book.last_minute("QQQ") == pd.Timestamp("2025-06-03T19:54Z")  # history: closed by the start
        t0 = time.monotonic()
        while book.last_minute("QQQ") < pd.Timestamp("2025-06-04T13:32Z"):
            assert time.monotonic() - t0 < 5, "the replay waited through the night"
            time.sleep(0.01)
    finally:
        stop.set()
        source.join(5)
    played = delivered[1:]
    assert [m for m, _ in played][:8] == list(pd.date_range("2025-06-03T19:55Z", periods=5, freq="min")) + \
        list(pd.date_range("2025-06-04T13:30Z", periods=3, freq="min"))
    early = [(minute, now) for minute, now in played if minute + ONE_MINUTE > now]
    assert not early, early[:3]  # never before its minute closed


def test_listening_beyond_loopback_needs_a_token(ckpt, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("KRONOS_SERVE_TOKEN", raising=False)
    assert serve.main(flags(ckpt, tmp_path / "o", "--host", "0.0.0.0")) == ExitCode.BAD_INPUT
    assert "KRONOS_SERVE_TOKEN" in caplog.text


def test_bad_replay_flags_are_one_line_errors(ckpt, bars_csv, tmp_path, caplog):
    assert serve.main(flags(ckpt, tmp_path / "o", "--from", "2025-06-04T15:00:00Z")) == ExitCode.BAD_INPUT
    assert "--from needs --replay FILE" in caplog.text
    assert serve.main(flags(ckpt, tmp_path / "o", "--replay", str(tmp_path / "nope.csv"))) == ExitCode.BAD_INPUT
    assert "file not found" in caplog.text
    assert serve.main(flags(ckpt, tmp_path / "o", "--replay", str(bars_csv), "--from", "2030-01-02T15:00:00Z")) \
        == ExitCode.BAD_INPUT
    assert "outside the replay data" in caplog.text
    caplog.clear()
    assert serve.main(flags(ckpt, tmp_path / "o", "--replay", str(bars_csv), "--from", "yesterday")) \
        == ExitCode.BAD_INPUT
    assert "--from must be an ISO 8601 time like 2025-06-02T14:00:00Z, got 'yesterday'" in caplog.text
    assert "--asof" not in caplog.text  # the flag the user gave is the one named


def test_a_second_service_on_the_same_folder_is_refused(ckpt, bars_csv, tmp_path, caplog):
    out = tmp_path / "live"
    out.mkdir()
    with run_lock(out / ".serve.lock"):
        assert serve.main(flags(ckpt, out, "--replay", str(bars_csv))) == ExitCode.LOCKED
    assert "another run holds the lock" in caplog.text


def test_out_is_the_services_folder(ckpt, bars_csv, tmp_path):
    """--out on serve.py's command line is where its files go (the same as --live-out)."""
    out = tmp_path / "mine"
    argv = [a for a in flags(ckpt, tmp_path / "unused") if a not in ("--live-out", str(tmp_path / "unused"))]
    assert serve.serve_overrides(serve.parse_args(argv + ["--out", str(out)]))["live_out"] == str(out)
    proc = subprocess.Popen([sys.executable, "serve.py", "--replay", str(bars_csv), "--from", "2025-06-04T15:00:00Z",
                             "--speed", "120", *argv, "--out", str(out)], cwd=ROOT, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "KRONOS_SERVE_TOKEN": ""})
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        while not (out / "pred_summary_QQQ_latest.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == ExitCode.OK, "".join(lines)
    assert {"pred_summary_QQQ_latest.json", "paths_QQQ_latest.csv", "runs_QQQ.csv"} <= {p.name for p in out.iterdir()}
    assert not (tmp_path / "unused").exists()


def test_out_and_live_out_naming_two_folders_is_refused(ckpt, tmp_path, caplog):
    assert serve.main(flags(ckpt, tmp_path / "a", "--out", str(tmp_path / "b"))) == ExitCode.BAD_INPUT
    assert "--out" in caplog.text and "--live-out" in caplog.text and "two folders" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_replay_file_of_another_symbol_is_refused(ckpt, tmp_path, caplog):
    """QQQ's bars (its Symbol column says so) replayed as SPY: exit 2 naming both, nothing written."""
    path = tmp_path / "spy.csv"
    canonical_bars().rename_axis("timestamp").reset_index().assign(Symbol="QQQ").to_csv(path, index=False)
    out = tmp_path / "live"
    assert serve.main(flags(ckpt, out, "--symbol", "SPY", "--replay", str(path))) == ExitCode.BAD_INPUT
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "symbol column says QQQ" in errors[0] and "the run is for SPY" in errors[0]
    assert not out.exists()


def test_a_live_folder_holding_other_files_is_refused_and_left_alone(ckpt, bars_csv, tmp_path, caplog):
    out = tmp_path / "live"
    out.mkdir()
    (out / "pred_summary_QQQ_latest.json").write_text("{}")  # the CLI's name: the service may replace it
    (out / "budget.xlsx").write_text("mine")
    assert serve.main(flags(ckpt, out, "--replay", str(bars_csv))) == ExitCode.BAD_INPUT
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "budget.xlsx" in errors[0] and "not written by serve.py" in errors[0]
    assert sorted(p.name for p in out.iterdir()) == ["budget.xlsx", "pred_summary_QQQ_latest.json"]
    assert (out / "pred_summary_QQQ_latest.json").read_text() == "{}"
