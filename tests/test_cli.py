"""The forecast CLI end to end: CSV bars + a random-weight local checkpoint -> real files, exit codes, no leftovers.

Numbers in the summary are checked against the paths CSV the run wrote, recomputed here with numpy. The bad-input
contract (every failure's code, line and files) is one table in test_bad_inputs.py.
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cli_kronos_prob_qqq as cli
from app.exits import ExitCode
from support.bars import KEYS, ROOT, TIMING_FREE, args_for, synthetic_bars
from support.kronos_checkpoints import write_checkpoint_pair


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint_pair(tmp_path_factory.mktemp("ckpt"), shape="small", seed=0)


@pytest.fixture(scope="module")
def mini_checkpoint(tmp_path_factory):
    return write_checkpoint_pair(tmp_path_factory.mktemp("mini"), shape="mini", seed=1)


@pytest.fixture
def bars_csv(tmp_path):
    path = tmp_path / "bars.csv"
    synthetic_bars().to_csv(path, index=False)
    return path


def read_paths_csv(path: Path):
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], np.array([[float(x) for x in row[1:]] for row in rows[1:]])


def test_csv_replay_writes_consistent_artifacts(checkpoint, bars_csv, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(args_for(checkpoint, bars_csv, out, "--asof", "2025-06-04T15:00:00Z", "--seed", "7"))
    assert code == ExitCode.OK
    summary = json.loads((out / "pred_summary_QQQ_20250604T150000Z.json").read_text())
    bars = synthetic_bars()
    # Only bars closed by 15:00Z: the last one started 14:59Z.
    last = bars[bars["timestamp"] == "2025-06-04T14:59:00Z"].iloc[0]
    assert summary["now_close"] == pytest.approx(last["close"])
    assert summary["horizon_min"] == 30 and summary["n_samples"] == 100
    assert summary["future_times"][0] == "2025-06-04T15:00:00Z" and summary["future_times"][-1] == "2025-06-04T15:29:00Z"
    assert summary["data"]["bar_count"] == 390 * 2 + 90 and summary["data"]["filled_count"] == 0

    header, closes = read_paths_csv(out / "paths_QQQ_20250604T150000Z.csv")
    assert header[1:] == summary["future_times"] and closes.shape == (100, 30)
    s = summary["summary"]
    assert s["p_up_30m"] == pytest.approx(np.mean(closes[:, -1] > last["close"]))
    assert s["exp_ret_30m"] == pytest.approx(np.mean(closes[:, -1] / last["close"] - 1), rel=1e-6)
    for q in (10, 50, 90):
        assert s["percentiles"][f"p{q}"] == pytest.approx(np.percentile(closes, q, axis=0), rel=1e-6)
    _, highs = read_paths_csv(out / "paths_high_QQQ_20250604T150000Z.csv")
    _, lows = read_paths_csv(out / "paths_low_QQQ_20250604T150000Z.csv")
    assert (highs >= closes - 1e-9).all() and (lows <= closes + 1e-9).all()  # bars were repaired
    # latest copies are byte-identical, and the run log got one row pointing at this run
    assert (out / "pred_summary_QQQ_latest.json").read_bytes() == (out / "pred_summary_QQQ_20250604T150000Z.json").read_bytes()
    with (out / "runs_QQQ.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and float(rows[0]["p_up"]) == pytest.approx(s["p_up_30m"])
    assert rows[0]["summary_file"] == "pred_summary_QQQ_20250604T150000Z.json"
    assert rows[0]["last_bar"] == "2025-06-04T14:59:00Z"  # the forecast starts one minute later
    assert "P(up 30m)" in capsys.readouterr().out


def test_same_seed_same_paths_and_json_output(mini_checkpoint, bars_csv, tmp_path, capsys):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert cli.main(args_for(mini_checkpoint, bars_csv, out, "--asof", "2025-06-04T15:00:00Z", "--seed", "3",
                                 "--n-samples", "20", "--json", "--lookback", "200")) == ExitCode.OK
        printed = json.loads(capsys.readouterr().out)
        assert printed["summary"] == json.loads((out / "pred_summary_QQQ_latest.json").read_text())["summary"]
        runs.append((out / "paths_QQQ_latest.csv").read_text())
    assert runs[0] == runs[1]


def test_file_end_is_the_default_replay_time(mini_checkpoint, bars_csv, tmp_path):
    out = tmp_path / "out"
    assert cli.main(args_for(mini_checkpoint, bars_csv, out, "--n-samples", "5", "--lookback", "200")) == 0
    summary = json.loads((out / "pred_summary_QQQ_latest.json").read_text())
    # The file ends with the 2025-06-04 close: the forecast covers the next session's first 30 minutes.
    assert summary["asof"] == "2025-06-04T20:00:00Z" and summary["market_open"] is False
    assert summary["future_times"][0] == "2025-06-05T13:30:00Z"
    assert any("first 30 minutes of the 2025-06-05 session from the last close" in n for n in summary["notes"])


def test_cron_skips_when_the_market_is_closed(mini_checkpoint, bars_csv, tmp_path):
    out = tmp_path / "out"
    code = cli.main(args_for(mini_checkpoint, bars_csv, out, "--cron", "--asof", "2025-06-04T21:00:00Z"))
    assert code == ExitCode.SKIPPED
    assert not out.exists() or not any(p.name.endswith((".json", ".csv")) for p in out.iterdir())


def test_near_the_close_truncates_and_renames_metrics(mini_checkpoint, bars_csv, tmp_path):
    out = tmp_path / "out"
    # Last closed bar 15:47 ET (19:47Z): 12 minutes remain.
    assert cli.main(args_for(mini_checkpoint, bars_csv, out, "--asof", "2025-06-04T19:48:00Z", "--n-samples", "8",
                             "--lookback", "200")) == 0
    summary = json.loads((out / "pred_summary_QQQ_latest.json").read_text())
    assert summary["horizon_min"] == 12 and summary["horizon_requested_min"] == 30
    assert "p_up_12m" in summary["summary"] and len(summary["summary"]["percentiles"]["p50"]) == 12
    code = cli.main(args_for(mini_checkpoint, bars_csv, tmp_path / "skip", "--asof", "2025-06-04T19:48:00Z",
                             "--near-close", "skip"))
    assert code == ExitCode.SKIPPED


def test_event_quiet_window_flags_or_skips(mini_checkpoint, bars_csv, tmp_path):
    event = "2025-06-04T11:10:00-04:00"  # 15:10Z, inside the 15:00Z..15:30Z forecast
    out = tmp_path / "flag"
    assert cli.main(args_for(mini_checkpoint, bars_csv, out, "--asof", "2025-06-04T15:00:00Z", "--events", event,
                             "--n-samples", "4", "--lookback", "200")) == 0
    summary = json.loads((out / "pred_summary_QQQ_latest.json").read_text())
    assert summary["events_in_window"] == ["2025-06-04T15:10:00+00:00"]
    code = cli.main(args_for(mini_checkpoint, bars_csv, tmp_path / "skip", "--asof", "2025-06-04T15:00:00Z",
                             "--events", event, "--event-action", "skip"))
    assert code == ExitCode.SKIPPED


def test_unsorted_file_is_accepted(mini_checkpoint, tmp_path):
    bars = tmp_path / "shuffled.csv"
    synthetic_bars().sample(frac=1.0, random_state=1).to_csv(bars, index=False)
    out = tmp_path / "out"
    assert cli.main(args_for(mini_checkpoint, bars, out, "--asof", "2025-06-04T15:00:00Z", "--n-samples", "4",
                             "--lookback", "200", "--seed", "1")) == 0
    assert json.loads((out / "pred_summary_QQQ_latest.json").read_text())["now_close"] == pytest.approx(
        synthetic_bars().set_index("timestamp").loc["2025-06-04T14:59:00Z", "close"])


def test_cuda_without_a_gpu_is_a_clean_config_error(mini_checkpoint, bars_csv, tmp_path, caplog, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = cli.main(args_for(mini_checkpoint, bars_csv, tmp_path / "out", "--asof", "2025-06-04T15:00:00Z",
                             "--device", "cuda"))
    assert code == ExitCode.BAD_INPUT
    assert "sees no CUDA GPU" in caplog.records[-1].getMessage()


def test_plot_flag_writes_a_png(mini_checkpoint, bars_csv, tmp_path):
    out = tmp_path / "out"
    assert cli.main(args_for(mini_checkpoint, bars_csv, out, "--asof", "2025-06-04T15:00:00Z", "--plot",
                             "--n-samples", "10", "--lookback", "200")) == 0
    png = out / "fan_QQQ_20250604T150000Z.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_real_qqq_bars_replay(real_data_dir, checkpoint, tmp_path):
    """The real 2025 QQQ file (naive UTC, start-labelled, extended hours): RTH replay on a half day."""
    bars = real_data_dir / "QQQ_60day_1min_polygon__Poloilo16-VWAP.csv"
    out = tmp_path / "out"
    assert cli.main(args_for(checkpoint, bars, out, "--asof", "2025-07-03T16:40:00Z", "--seed", "1")) == 0
    summary = json.loads((out / "pred_summary_QQQ_latest.json").read_text())
    # 2025-07-03 closes at 13:00 ET (17:00Z): 20 minutes left after the 12:39 ET bar.
    assert summary["horizon_min"] == 20 and summary["data"]["sessions"] == ["2025-07-01", "2025-07-02", "2025-07-03"]
    raw = pd.read_csv(bars)
    last = raw[raw["Datetime"] == "2025-07-03 16:39:00"].iloc[0]
    assert summary["now_close"] == pytest.approx(last["Close"])


def test_subprocess_exit_code_and_streams(mini_checkpoint, bars_csv, tmp_path):
    """As cron runs it: a separate process, result on stdout, logs on stderr, secrets nowhere."""
    env = {**os.environ, "ALPACA_KEY_ID": "AKTESTKEY1234", "ALPACA_SECRET_KEY": "very-secret-value-xyz"}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "cli_kronos_prob_qqq.py"),
                           *args_for(mini_checkpoint, bars_csv, out, "--asof", "2025-06-04T15:00:00Z",
                                     "--n-samples", "4", "--lookback", "200")],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "P(up 30m)" in proc.stdout
    everything = proc.stdout + proc.stderr + "".join(p.read_text() for p in out.iterdir() if p.is_file())
    assert "very-secret-value-xyz" not in everything
    bad = subprocess.run([sys.executable, str(ROOT / "cli_kronos_prob_qqq.py"), "--top-k", "-3"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert bad.returncode == ExitCode.BAD_INPUT and bad.stdout == ""
    assert "top_k" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- Alpaca through the real client



def alpaca_bars_server(serve_bars, refuse_sip=False, status=200):
    """A fake bars endpoint serving synthetic_bars() in pages of 500 between the query's start and end."""
    frame = synthetic_bars()
    frame.index = pd.DatetimeIndex(frame["timestamp"])
    page = 500

    def respond(query):
        if status != 200:
            return status, {"message": "internal server error"}
        if refuse_sip and query.get("feed") == "sip":
            return 403, {"code": 42210000, "message": "subscription does not permit querying recent SIP data"}
        rows = frame[(frame.index >= pd.Timestamp(query["start"])) & (frame.index <= pd.Timestamp(query["end"]))]
        offset = int(query.get("page_token", 0))
        chunk = rows.iloc[offset:offset + page]
        bars = [{"t": r.timestamp, "o": r.open, "h": r.high, "l": r.low, "c": r.close, "v": r.volume, "n": 10,
                 "vw": r.close} for r in chunk.itertuples()]
        more = offset + page < len(rows)
        return 200, {"bars": {"QQQ": bars} if bars else {}, "next_page_token": str(offset + page) if more else None}

    return serve_bars(respond)


@pytest.fixture
def serve_bars():
    from support.fake_alpaca import FakeAlpaca

    servers = []
    yield lambda respond: servers.append(FakeAlpaca(respond)) or servers[-1]
    for server in servers:
        server.close()


def alpaca_args(ckpt, out, *extra):
    model, tokenizer = ckpt
    return ["--source", "alpaca", "--model", str(model), "--tokenizer", str(tokenizer), "--out", str(out),
            "--device", "cpu", "--asof", "2025-06-04T15:00:30Z", "--n-samples", "6", "--lookback", "200", "-q",
            *TIMING_FREE, *map(str, extra)]


def test_alpaca_sip_refused_falls_back_to_iex(mini_checkpoint, serve_bars, tmp_path, monkeypatch, capsys):
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    fake = alpaca_bars_server(serve_bars, refuse_sip=True)
    monkeypatch.setenv("ALPACA_DATA_URL", fake.url)
    out = tmp_path / "out"
    assert cli.main(alpaca_args(mini_checkpoint, out, "--feed", "sip", "--sip-fallback", "iex")) == 0
    summary = json.loads((out / "pred_summary_QQQ_latest.json").read_text())
    assert summary["data"]["source"] == "alpaca" and summary["data"]["feed"] == "iex"
    assert any("used the IEX feed" in n for n in summary["notes"])
    # The still-forming 15:00Z bar is dropped: the last bar is 14:59Z, exactly as in the CSV replay.
    assert summary["last_bar"] == "2025-06-04T14:59:00Z" and summary["data"]["bar_count"] == 390 * 2 + 90
    feeds = [r["query"]["feed"] for r in fake.requests]
    assert feeds[0] == "sip" and set(feeds[1:]) == {"iex"} and len(feeds) >= 3  # refused, then paged IEX
    everything = capsys.readouterr()
    assert KEYS["ALPACA_SECRET_KEY"] not in everything.out + everything.err
    assert all(KEYS["ALPACA_SECRET_KEY"] not in p.read_text() for p in out.iterdir() if p.is_file())


def test_alpaca_sip_refused_with_policy_error_is_a_data_source_failure(mini_checkpoint, serve_bars, tmp_path,
                                                                        monkeypatch):
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ALPACA_DATA_URL", alpaca_bars_server(serve_bars, refuse_sip=True).url)
    code = cli.main(alpaca_args(mini_checkpoint, tmp_path / "out", "--feed", "sip", "--sip-fallback", "error"))
    assert code == ExitCode.DATA_SOURCE


def test_alpaca_server_error_and_missing_keys(mini_checkpoint, serve_bars, tmp_path, monkeypatch, caplog):
    for name in (*KEYS, "APCA_API_KEY_ID", "APCA_API_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(alpaca_args(mini_checkpoint, tmp_path / "o1")) == ExitCode.BAD_INPUT
    assert "ALPACA_KEY_ID" in caplog.records[-1].getMessage()
    # Alpaca's own variable names work too.
    monkeypatch.setenv("APCA_API_KEY_ID", "AKFAKE0002")
    monkeypatch.setenv("APCA_API_SECRET_KEY", "another-secret")
    monkeypatch.setenv("ALPACA_DATA_URL", alpaca_bars_server(serve_bars, status=500).url)
    assert cli.main(alpaca_args(mini_checkpoint, tmp_path / "o2")) == ExitCode.DATA_SOURCE
    assert not (tmp_path / "o2").exists() or not list((tmp_path / "o2").glob("pred_summary_*"))


def test_alpaca_empty_answer_skips(mini_checkpoint, serve_bars, tmp_path, monkeypatch):
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ALPACA_DATA_URL", serve_bars(lambda q: (200, {"bars": {}, "next_page_token": None})).url)
    assert cli.main(alpaca_args(mini_checkpoint, tmp_path / "out")) == ExitCode.SKIPPED


def platt_calibrator(path, horizon=30, a=0.5, b=0.2):
    from forecast.calibrator import FORMAT

    path.write_text(json.dumps({"format": FORMAT, "version": 1, "horizon_min": horizon,
                                "p_up": {"method": "platt", "params": {"a": a, "b": b}, "n": 100}}))
    return path


def test_calibrator_is_shown_beside_the_raw_value(mini_checkpoint, bars_csv, tmp_path, capsys):
    cal = platt_calibrator(tmp_path / "cal.json")
    out = tmp_path / "out"
    assert cli.main(args_for(mini_checkpoint, bars_csv, out, "--asof", "2025-06-04T15:00:00Z", "--n-samples", "10",
                             "--lookback", "200", "--calibrator", cal, "--seed", "2")) == 0
    summary = json.loads((out / "pred_summary_QQQ_latest.json").read_text())
    raw = summary["summary"]["p_up_30m"]

    def platt(p):
        clipped = min(max(p, 1e-3), 1 - 1e-3)
        return 1 / (1 + np.exp(-(0.5 * np.log(clipped / (1 - clipped)) + 0.2)))

    expected = platt(raw)
    assert summary["calibrated"]["p_up_30m"] == pytest.approx(expected)
    assert summary["calibrated"]["method"] == "platt"
    # its Monte Carlo interval: the raw interval's ends through the same (increasing) map
    lo, hi = (platt(p) for p in summary["summary"]["p_up_30m_ci"])
    assert summary["calibrated"]["p_up_30m_ci"] == pytest.approx([lo, hi])
    assert f"(calibrated {expected:.1%} ± {(hi - lo) * 50:.1f})" in capsys.readouterr().out
    with (out / "runs_QQQ.csv").open() as fh:
        assert float(next(csv.DictReader(fh))["p_up_cal"]) == pytest.approx(expected)


def test_calibrator_for_another_horizon_is_not_applied(mini_checkpoint, bars_csv, tmp_path):
    cal = platt_calibrator(tmp_path / "cal.json", horizon=30)
    out = tmp_path / "out"
    # 12 minutes left before the close: a 30-minute calibrator does not describe a 12-minute forecast.
    assert cli.main(args_for(mini_checkpoint, bars_csv, out, "--asof", "2025-06-04T19:48:00Z", "--n-samples", "4",
                             "--lookback", "200", "--calibrator", cal)) == 0
    summary = json.loads((out / "pred_summary_QQQ_latest.json").read_text())
    assert summary["calibrated"] is None and any("not applied" in n for n in summary["notes"])
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "something else"}')
    assert cli.main(args_for(mini_checkpoint, bars_csv, tmp_path / "o2", "--asof", "2025-06-04T15:00:00Z",
                             "--calibrator", broken)) == ExitCode.BAD_INPUT


def test_non_finite_model_output_is_a_model_error(mini_checkpoint, bars_csv, tmp_path, monkeypatch):
    from kronos import KronosPathSampler

    real = KronosPathSampler.sample_batch

    def broken(self, *args, **kwargs):
        paths = real(self, *args, **kwargs)
        paths[0, 0, 0, 3] = np.nan
        return paths

    monkeypatch.setattr(KronosPathSampler, "sample_batch", broken)
    out = tmp_path / "out"
    code = cli.main(args_for(mini_checkpoint, bars_csv, out, "--asof", "2025-06-04T15:00:00Z", "--n-samples", "4",
                             "--lookback", "200"))
    assert code == ExitCode.MODEL and not list(out.glob("pred_summary_*"))


def test_online_calibration_learns_resolved_runs_from_the_run_log(mini_checkpoint, bars_csv, tmp_path, capsys):
    """Run at 15:00Z, then at 15:45Z (the first run's window ended at 15:30Z), then at 15:46Z. The second run
    applies exactly one outcome to the online state: its P(up) and its p10/p90 ends are recomputed here from one
    online Newton step and one ACI step by hand; the third run applies nothing twice."""
    from scipy import stats

    from forecast.online import GAMMA, ONS_EPS

    out = tmp_path / "out"
    summaries = []
    for t in ("15:00", "15:45", "15:46"):
        assert cli.main(args_for(mini_checkpoint, bars_csv, out, "--asof", f"2025-06-04T{t}:00Z", "--n-samples", "20",
                                 "--lookback", "200", "--seed", "2")) == 0
        summaries.append(json.loads((out / "pred_summary_QQQ_latest.json").read_text()))
    first, second, third = summaries
    bars = synthetic_bars().set_index("timestamp")
    y_close = bars.loc["2025-06-04T15:29:00Z", "close"]
    up = float(y_close > first["now_close"])
    assert first["online"]["n_updates"] == 0 and second["online"]["n_updates"] == third["online"]["n_updates"] == 1
    # one ONS step from theta = (1, 0) on the first run's (raw: no calibrator) P(up)
    p1 = min(max(first["summary"]["p_up_30m"], 1e-3), 1 - 1e-3)
    x = np.array([np.log(p1 / (1 - p1)), 1.0])
    g = (1 / (1 + np.exp(-x[0])) - up) * x
    theta = np.array([1.0, 0.0]) - np.linalg.solve(ONS_EPS * np.eye(2) + np.outer(g, g), g)
    p2 = min(max(second["summary"]["p_up_30m"], 1e-3), 1 - 1e-3)
    expected = 1 / (1 + np.exp(-(theta[0] * np.log(p2 / (1 - p2)) + theta[1])))
    assert second["online"]["p_up_30m"] == pytest.approx(expected)
    # one ACI step at the horizon's end, which every step borrows; the band from the second run's own paths
    ends = [first["online"]["percentiles"][k][-1] for k in ("p10", "p50", "p90")]
    w = np.array([0.1, 0.5, 0.9]) + GAMMA * (np.array([0.1, 0.5, 0.9]) - (y_close <= np.array(ends)))
    _, closes = read_paths_csv(out / "paths_QQQ_20250604T154500Z.csv")
    r = np.log(closes / second["now_close"])
    q10, q50, q90 = np.quantile(r, [0.1, 0.5, 0.9], axis=0)
    z = stats.norm.ppf(w)
    scale = (q90 - q10) / 2.5631
    for j, k in enumerate(("p10", "p50", "p90")):
        assert second["online"]["percentiles"][k] == pytest.approx(second["now_close"] * np.exp(q50 + scale * z[j]))
    state = json.loads((out / "online_QQQ.json").read_text())
    assert state["last_resolved"].startswith("2025-06-04T15:30") and state["n_band"][-1] == 1
    # raw, walk-forward (none here) and online side by side in the run log; the trust verdict too
    with (out / "runs_QQQ.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[1]["p_up_online"]) == pytest.approx(expected)
    assert float(rows[1]["p90_end_online"]) == pytest.approx(second["online"]["percentiles"]["p90"][-1])
    assert rows[0]["trust_status"] == "uncalibrated" and rows[1]["trust_status"] == "stale"
    assert second["trust"]["edge"] is None  # no backtest of this model known
    assert "trust            stale" in capsys.readouterr().out
