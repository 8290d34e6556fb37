"""Fan chart from written artifacts, and the plot_paths.py command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forecast import artifacts
from forecast.plotting import _title, fan_chart

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "plot_paths.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STAMP = "20250501T160000Z"


def _write_run(out_dir: Path, with_history: bool = True) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    h_times = pd.date_range("2025-05-01T14:00Z", periods=120, freq="1min")
    f_times = pd.date_range("2025-05-01T16:00Z", periods=30, freq="1min")
    hist_close = 480 + np.cumsum(rng.normal(0, 0.1, 120))
    close = hist_close[-1] + np.cumsum(rng.normal(0, 0.1, (40, 30)), axis=1)
    paths = np.stack([close, close + 0.05, close - 0.05, close, np.ones_like(close), close], axis=2)
    summary = {"symbol": "QQQ", "asof": "2025-05-01T16:00:00Z", "now_close": float(hist_close[-1]),
               "p_up_30m": 0.55, "exp_ret_30m": 0.0004, "vwap": 480.2, "mid_band": None}
    if with_history:
        summary["history"] = {"times": [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in h_times],
                              "close": [float(c) for c in hist_close]}
    return artifacts.write_run_artifacts(out_dir, "QQQ", STAMP, summary, paths, f_times)


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 20_000  # a blank 10x5.5in canvas compresses far below this


def test_fan_chart_from_artifacts(tmp_path: Path) -> None:
    files = _write_run(tmp_path)
    header = pd.read_csv(files["paths_close"], index_col="path")
    times = pd.to_datetime(header.columns, utc=True)
    hist = pd.Series([480.0, 480.5], index=pd.to_datetime(["2025-05-01T15:58Z", "2025-05-01T15:59Z"]))
    out = fan_chart(hist, times, header.to_numpy(), {"p_up_30m": 0.5, "vwap": 480.0},
                    tmp_path / "fan.png", n_show=10)
    _assert_png(out)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_title_reads_flat_and_nested_summaries() -> None:
    metrics = {"p_up_30m": 0.55, "exp_ret_30m": 0.0004}
    want = "QQQ  2025-05-01 12:00 ET\nP(up 30m) = 55.0%   E[ret 30m] = +0.040%"
    head = {"symbol": "QQQ", "asof": "2025-05-01T16:00:00Z"}  # 16:00Z is 12:00 EDT
    assert _title({**head, **metrics}, 30, None) == want
    assert _title({**head, "summary": metrics}, 30, None) == want  # the CLI's layout


def test_fan_chart_overnight_gap(tmp_path: Path) -> None:
    # forecast made after the close for the next open: must still render
    hist = pd.Series(np.linspace(480, 481, 60),
                     index=pd.date_range("2025-05-01T19:00Z", periods=60, freq="1min"))
    times = pd.date_range("2025-05-02T13:30Z", periods=30, freq="1min")
    closes = 481 + np.cumsum(np.random.default_rng(1).normal(0, 0.1, (20, 30)), axis=1)
    _assert_png(fan_chart(hist, times, closes, {"summary": {"vwap": 480.5}}, tmp_path / "o.png"))


def test_fan_chart_rejects_mismatched_times(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        fan_chart(None, pd.date_range("2025-05-01T16:00Z", periods=3, freq="1min"),
                  np.zeros((5, 4)), {}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_cli_default_latest_and_seeded(tmp_path: Path) -> None:
    _write_run(tmp_path / "outputs")
    res = _run(cwd=tmp_path)  # defaults: --dir outputs --symbol QQQ
    assert res.returncode == 0, res.stderr
    png = tmp_path / "outputs" / "fan_QQQ_latest.png"
    _assert_png(png)
    first = png.read_bytes()
    assert _run("--out", "again.png", cwd=tmp_path).returncode == 0
    assert (tmp_path / "again.png").read_bytes() == first  # same seed, same picture


def test_cli_summary_without_history(tmp_path: Path) -> None:
    files = _write_run(tmp_path, with_history=False)
    res = _run("--summary", str(files["summary"]), "--out", str(tmp_path / "f.png"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    _assert_png(tmp_path / "f.png")


def test_cli_history_csv(tmp_path: Path) -> None:
    files = _write_run(tmp_path, with_history=False)
    good, bad = tmp_path / "bars.csv", tmp_path / "nobars.csv"
    good.write_text("time,close\n2025-05-01T15:58:00Z,480.1\n2025-05-01T15:59:00Z,480.3\n")
    bad.write_text("time,price\n2025-05-01T15:59:00Z,480.3\n")
    res = _run("--summary", str(files["summary"]), "--history-csv", str(good), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    _assert_png(tmp_path / f"fan_QQQ_{STAMP}.png")
    res = _run("--summary", str(files["summary"]), "--history-csv", str(bad), cwd=tmp_path)
    assert res.returncode == 2 and "close" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_cli_missing_summary_exit_2_one_line(tmp_path: Path) -> None:
    res = _run("--summary", str(tmp_path / "nope.json"), cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope.json" in lines[0] and lines[0].startswith("plot_paths: error:")


def test_cli_missing_paths_csv_exit_2(tmp_path: Path) -> None:
    files = _write_run(tmp_path)
    files["paths_close"].unlink()
    res = _run("--summary", str(files["summary"]), cwd=tmp_path)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "paths_QQQ_" in res.stderr


def test_cli_bad_arguments_exit_2_one_line(tmp_path: Path) -> None:
    res = _run("--summary", "a.json", "--dir", "out", cwd=tmp_path)  # mutually exclusive
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1
