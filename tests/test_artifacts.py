"""Atomic writes, run artifacts and the run log."""

from __future__ import annotations

import csv
import datetime as dt
import fcntl
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forecast import artifacts as a
from forecast import runlog

STAMP = "20250501T140000Z"
TIMES = pd.date_range("2025-05-01T14:00:00Z", periods=3, freq="1min")


def _paths() -> np.ndarray:
    # path i, minute t: close 100 + i + t/10, high close + 1, low close - 1, volume 1000*i + t
    p = np.zeros((2, 3, 6))
    for i in range(2):
        for t in range(3):
            c = 100 + i + t / 10
            p[i, t] = [c, c + 1, c - 1, c, 1000 * i + t, 0.0]
    return p


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _leftovers(d: Path) -> list[str]:
    return [p.name for p in d.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- atomic writes

def test_atomic_write_creates_and_replaces(tmp_path: Path) -> None:
    f = tmp_path / "x.txt"
    a.atomic_write_text(f, "one")
    a.atomic_write_text(f, "two")
    assert f.read_text() == "two"
    assert _leftovers(tmp_path) == []
    assert os.stat(f).st_mode & 0o777 == 0o644


def test_atomic_write_failure_at_replace_keeps_old(tmp_path: Path, monkeypatch) -> None:
    f = tmp_path / "x.json"
    a.atomic_write_json(f, {"v": 1})

    def boom(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(a.os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        a.atomic_write_json(f, {"v": 2})
    assert json.loads(f.read_text()) == {"v": 1}
    assert _leftovers(tmp_path) == []


def test_atomic_write_failure_midway_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    f = tmp_path / "new.bin"

    def boom(fd):
        raise OSError("fsync failed")

    monkeypatch.setattr(a.os, "fsync", boom)
    with pytest.raises(OSError, match="fsync failed"):
        a.atomic_write_bytes(f, b"x" * 10000)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_json_is_strict_and_ordered(tmp_path: Path) -> None:
    f = tmp_path / "s.json"
    a.atomic_write_json(f, {"b": 1, "a": None})
    assert f.read_text() == '{\n  "b": 1,\n  "a": null\n}\n'
    with pytest.raises(ValueError):
        a.atomic_write_json(tmp_path / "nan.json", {"x": float("nan")})
    assert not (tmp_path / "nan.json").exists() and _leftovers(tmp_path) == []


def test_artifact_stamp() -> None:
    t = dt.datetime(2025, 5, 1, 10, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=-4)))
    assert a.artifact_stamp(t) == "20250501T140005Z"
    with pytest.raises(ValueError):
        a.artifact_stamp(dt.datetime(2025, 5, 1, 14, 0))


# ---------------------------------------------------------------- run artifacts

def test_write_run_artifacts_files_and_csv(tmp_path: Path) -> None:
    out = a.write_run_artifacts(tmp_path / "out", "QQQ", STAMP, {"p_up_3m": 0.5}, _paths(), TIMES)
    names = {k: p.name for k, p in out.items()}
    assert names == {
        "paths_high": "paths_high_QQQ_20250501T140000Z.csv",
        "paths_low": "paths_low_QQQ_20250501T140000Z.csv",
        "paths_volume": "paths_volume_QQQ_20250501T140000Z.csv",
        "paths_close": "paths_QQQ_20250501T140000Z.csv",
        "summary": "pred_summary_QQQ_20250501T140000Z.json",
        "paths_close_latest": "paths_QQQ_latest.csv",
        "summary_latest": "pred_summary_QQQ_latest.json",
    }
    rows = _read_csv(out["paths_close"])
    assert rows[0] == ["path", "2025-05-01T14:00:00Z", "2025-05-01T14:01:00Z", "2025-05-01T14:02:00Z"]
    assert rows[1:] == [["0", "100", "100.1", "100.2"], ["1", "101", "101.1", "101.2"]]
    assert _read_csv(out["paths_volume"])[2] == ["1", "1000", "1001", "1002"]
    assert _read_csv(out["paths_high"])[1][1] == "101"
    assert out["paths_close_latest"].read_bytes() == out["paths_close"].read_bytes()
    summary = json.loads(out["summary_latest"].read_text())
    assert summary["p_up_3m"] == 0.5
    assert summary["artifacts"]["paths_close"] == "paths_QQQ_20250501T140000Z.csv"
    assert summary["artifacts"]["stamp"] == STAMP
    assert _leftovers(tmp_path / "out") == []


def test_write_run_artifacts_latest_written_last(tmp_path: Path, monkeypatch) -> None:
    order: list[str] = []
    real = a.os.replace

    def spy(src, dst):
        order.append(Path(dst).name)
        real(src, dst)

    monkeypatch.setattr(a.os, "replace", spy)
    a.write_run_artifacts(tmp_path, "QQQ", STAMP, {}, _paths(), TIMES, extra=("low",))
    assert order == ["paths_low_QQQ_20250501T140000Z.csv", "paths_QQQ_20250501T140000Z.csv",
                     "pred_summary_QQQ_20250501T140000Z.json", "paths_QQQ_latest.csv",
                     "pred_summary_QQQ_latest.json"]


def test_write_run_artifacts_failure_keeps_previous_latest(tmp_path: Path, monkeypatch) -> None:
    a.write_run_artifacts(tmp_path, "QQQ", STAMP, {"run": 1}, _paths(), TIMES, extra=())
    real = a.os.replace

    def fail_on_summary(src, dst):
        if Path(dst).name.startswith("pred_summary"):
            raise OSError("crash")
        real(src, dst)

    monkeypatch.setattr(a.os, "replace", fail_on_summary)
    with pytest.raises(OSError):
        a.write_run_artifacts(tmp_path, "QQQ", "20250501T140100Z", {"run": 2}, _paths(), TIMES,
                              extra=())
    latest = json.loads((tmp_path / "pred_summary_QQQ_latest.json").read_text())
    assert latest["run"] == 1
    assert not (tmp_path / "pred_summary_QQQ_20250501T140100Z.json").exists()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("kwargs", [
    {"symbol": "../QQQ"}, {"stamp": "2025-05-01"}, {"extra": ("vwap",)},
    {"future_times": TIMES[:2]}, {"future_times": TIMES.tz_localize(None)},
])
def test_write_run_artifacts_rejects_bad_input(tmp_path: Path, kwargs: dict) -> None:
    args = {"symbol": "QQQ", "stamp": STAMP, "future_times": TIMES, "extra": ("high",)} | kwargs
    with pytest.raises(ValueError):
        a.write_run_artifacts(tmp_path, args["symbol"], args["stamp"], {}, _paths(),
                              args["future_times"], extra=args["extra"])
    assert list(tmp_path.iterdir()) == []


def test_format_number_is_plain_decimal() -> None:
    assert a.format_number(1e-7) == "0.0000001"
    assert a.format_number(2.5e16) == "25000000000000000"
    assert a.format_number(float("nan")) == "" and a.format_number(None) == ""
    assert a.format_number(np.int64(3)) == "3"
    # ten significant digits: sub-cent on any price, no float noise in a spreadsheet
    assert a.format_number(540.052530061322) == "540.0525301"
    assert a.format_number(-0.0039799030422786276) == "-0.003979903042"


# ---------------------------------------------------------------- run log

def test_run_log_header_then_rows(tmp_path: Path) -> None:
    log = tmp_path / "runs.csv"
    runlog.append_run_log(log, {"asof": "2025-05-01T14:00:00Z", "symbol": "QQQ", "p_up": 0.5})
    runlog.append_run_log(log, {"symbol": "QQQ", "seed": 7, "p_hit_vwap": None})
    rows = _read_csv(log)
    assert rows[0] == list(runlog.RUN_LOG_COLUMNS)
    assert len(rows) == 3 and all(len(r) == len(runlog.RUN_LOG_COLUMNS) for r in rows)
    first = dict(zip(rows[0], rows[1]))
    assert (first["asof"], first["symbol"], first["p_up"], first["seed"]) == (
        "2025-05-01T14:00:00Z", "QQQ", "0.5", "")
    second = dict(zip(rows[0], rows[2]))
    assert (second["seed"], second["p_hit_vwap"]) == ("7", "")


def test_run_log_rejects_unknown_keys(tmp_path: Path) -> None:
    log = tmp_path / "runs.csv"
    with pytest.raises(ValueError, match="p_upp"):
        runlog.append_run_log(log, {"p_upp": 0.5})
    assert not log.exists() or log.read_bytes() == b""


def test_run_log_header_mismatch_raises_and_keeps_file(tmp_path: Path) -> None:
    log = tmp_path / "runs.csv"
    log.write_text("asof,symbol,p_up\n2025,QQQ,0.5\n")
    with pytest.raises(runlog.RunLogSchemaError, match="header"):
        runlog.append_run_log(log, {"symbol": "QQQ"})
    assert log.read_text() == "asof,symbol,p_up\n2025,QQQ,0.5\n"


def test_run_log_single_write_per_row(tmp_path: Path, monkeypatch) -> None:
    log = tmp_path / "runs.csv"
    calls: list[bytes] = []
    real = runlog.os.write

    def spy(fd, data):
        calls.append(bytes(data))
        return real(fd, data)

    monkeypatch.setattr(runlog.os, "write", spy)
    runlog.append_run_log(log, {"symbol": "QQQ", "model": "kronos, small"})  # comma gets quoted
    assert len(calls) == 1 and calls[0].count(b"\n") == 2
    assert _read_csv(log)[1][runlog.RUN_LOG_COLUMNS.index("model")] == "kronos, small"


def test_run_log_writes_under_exclusive_lock(tmp_path: Path, monkeypatch) -> None:
    log = tmp_path / "runs.csv"
    log.write_text(",".join(runlog.RUN_LOG_COLUMNS) + "\n")
    seen: list[bool] = []
    real = runlog.os.write

    def probe(fd, data):
        # another appender (own descriptor) must not get the lock while we write
        other = os.open(log, os.O_WRONLY | os.O_APPEND)
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append(False)
        except BlockingIOError:
            seen.append(True)
        finally:
            os.close(other)
        return real(fd, data)

    monkeypatch.setattr(runlog.os, "write", probe)
    runlog.append_run_log(log, {"symbol": "QQQ"})
    assert seen == [True]


def test_run_log_concurrent_appends(tmp_path: Path) -> None:
    log = tmp_path / "runs.csv"
    threads = [threading.Thread(target=lambda i=i: [runlog.append_run_log(log, {"seed": i * 100 + k})
                                                     for k in range(20)]) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = _read_csv(log)
    assert rows[0] == list(runlog.RUN_LOG_COLUMNS)
    seeds = sorted(int(r[runlog.RUN_LOG_COLUMNS.index("seed")]) for r in rows[1:])
    assert seeds == sorted(i * 100 + k for i in range(4) for k in range(20))


def test_run_log_of_an_older_version_keeps_its_columns(tmp_path: Path) -> None:
    """A log started before the last columns were added still takes rows (in its own columns) and reads."""
    old = runlog.RUN_LOG_COLUMNS[:runlog.OLDEST_HEADER]
    log = tmp_path / "runs.csv"
    log.write_text(",".join(old) + "\r\n" + ",".join(["2025-05-01T14:00:00Z", "", "QQQ", "500", "30", "10", "0.5"]
                                                      + [""] * (len(old) - 7)) + "\r\n")
    runlog.append_run_log(log, {"asof": "2025-05-01T14:01:00Z", "symbol": "QQQ", "now_close": 501,
                                "horizon_min": 30, "p_up": 0.6, "bad_bars": 2})
    rows = _read_csv(log)
    assert rows[0] == list(old) and len(rows) == 3 and all(len(r) == len(old) for r in rows)
    frame = runlog.read_run_log(log)
    assert frame["p_up"].tolist() == [0.5, 0.6] and "bad_bars" not in frame.columns


def test_held_signals_hold_a_signal_that_another_thread_receives():
    """The kernel may hand SIGTERM to any thread that does not block it (torch's workers do not), and Python then
    runs the handler in the main thread: holding must not depend on which thread received it."""
    handled = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: handled.append(signum))
    try:
        with a.held_signals():
            sender = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGTERM))
            sender.start()
            sender.join()
            time.sleep(0.05)  # a pending handler would run here, between bytecodes of the main thread
            assert handled == [], "the signal was handled inside the block"
        assert handled == [signal.SIGTERM], "the held signal was lost"
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_run_log_new_york_columns_come_last_and_read_in_a_spreadsheet(tmp_path: Path) -> None:
    """asof_new_york and last_bar_new_york are appended after every earlier column (a log of the version before
    them keeps its header), as wall-clock New York times a spreadsheet parses: EDT in June, EST in January."""
    cols = runlog.RUN_LOG_COLUMNS
    assert cols[-2:] == ("asof_new_york", "last_bar_new_york")
    assert runlog.new_york_cell("2025-06-02T15:00:00Z") == "2025-06-02 11:00:00"
    assert runlog.new_york_cell("2025-01-02T15:00:00Z") == "2025-01-02 10:00:00"
    log = tmp_path / "runs.csv"
    previous = cols[:cols.index("asof_new_york")]  # the version before these two columns
    log.write_text(",".join(previous) + "\n")
    runlog.append_run_log(log, {"asof": "2025-06-02T15:00:00Z", "symbol": "QQQ", "now_close": 1, "horizon_min": 30,
                                "p_up": 0.5, "asof_new_york": "2025-06-02 11:00:00"})
    rows = _read_csv(log)
    assert rows[0] == list(previous) and len(rows[1]) == len(previous)
    fresh = tmp_path / "fresh.csv"
    runlog.append_run_log(fresh, {"asof": "2025-06-02T15:00:00Z", "asof_new_york": "2025-06-02 11:00:00"})
    frame = pd.read_csv(fresh, parse_dates=["asof_new_york"])
    assert frame["asof_new_york"].iloc[0] == pd.Timestamp("2025-06-02 11:00:00")
