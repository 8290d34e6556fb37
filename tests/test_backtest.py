"""Walk-forward engine: no look-ahead, resume after an interruption, known answers on simulated bars, and a
baseline backtest of the real QQQ bars (TEST_DATA_DIR)."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import backtest as cli
from support import simulated
from evaluation import baselines
from evaluation import forecasters as efc
from evaluation import report as erep
from marketdata.files import read_bars_file
from support.backtest_api import FakeSampler, bt, kronos, settings

NY = "America/New_York"


class Recorder:
    """Random-walk paths, but remembers what it was shown."""

    def __init__(self, name: str = "recorder") -> None:
        self.name, self.inner, self.seen = name, baselines.RandomWalk(), []

    def describe(self) -> dict:
        return {"kind": "recorder"}

    def sample(self, history, future_times, n_paths, rng):
        self.seen.append((history.index.max(), future_times[0], len(future_times)))
        return self.inner.sample(history, future_times, n_paths, rng)


def features(t: pd.Timestamp) -> tuple:
    """The model's time features of a bar start: New York wall-clock minute, hour, weekday, day, month."""
    ny = t.tz_convert(NY)
    return (ny.minute, ny.hour, ny.day_of_week, ny.day, ny.month)


FORECAST_FIELDS = ("p_up", "p_hit_vwap", "exp_ret", "zscore_mid", "vwap", "now_close", "centre", "scale", "q")


def test_no_bar_at_or_after_an_origin_reaches_a_forecaster(sim: pd.DataFrame, tmp_path: Path) -> None:
    rec, fake = Recorder(), FakeSampler()
    s = settings()
    records = bt.run_walk_forward(sim, s, [rec, kronos("kronos_fake", fake, s, lookback=100)], tmp_path / "a",
                                  progress=False)
    origins = bt.make_origins(sim, s)
    assert len(rec.seen) == len(origins) > 50
    for (last_bar, first_future, _), origin in zip(rec.seen, origins):
        assert last_bar < origin and first_future == origin
        assert last_bar == origin - pd.Timedelta(minutes=1)  # and nothing older is withheld
    calls = [c for batch in fake.calls for c in batch]
    assert len(calls) == len(origins)
    # Model stamps are New York wall clock, bar starts (time_label start), of the same bars the recorder saw.
    assert sorted(calls) == sorted((features(last), features(first), h) for last, first, h in rec.seen)
    # Near the close the window is truncated (near_close: truncate), as in the live run.
    assert {h for *_, h in rec.seen} == {30, 10}
    # Changing every bar from some origin on changes no forecast made before it.
    cut = origins[len(origins) // 2]
    shocked = sim.copy()
    later = shocked.index >= cut
    shocked.loc[later, ["open", "high", "low", "close"]] *= 1.05
    shocked.loc[later, "volume"] *= 3
    again = bt.run_walk_forward(shocked, s, [Recorder(), kronos("kronos_fake", FakeSampler(), s, lookback=100)],
                                tmp_path / "b", progress=False)
    for key, r in records.items():
        if key[0] == bt.SKIP:
            continue
        same = [r[k] == again[key][k] for k in FORECAST_FIELDS]
        if pd.Timestamp(key[1]) <= cut:
            assert all(same), key
    assert any(not all(r[k] == again[key][k] for k in FORECAST_FIELDS)
               for key, r in records.items() if key[0] != bt.SKIP and pd.Timestamp(key[1]) > cut)


def test_outcomes_are_the_bars_after_the_origin(sim: pd.DataFrame, tmp_path: Path) -> None:
    s = settings(start="2025-03-10", end="2025-03-10")
    records = bt.run_walk_forward(sim, s, [baselines.RandomWalk()], tmp_path, progress=False)
    for (_, key), r in records.items():
        origin = pd.Timestamp(key)
        real = sim["close"].loc[origin:origin + pd.Timedelta(minutes=r["horizon"] - 1)].to_numpy()
        np.testing.assert_allclose(r["realised"], real, rtol=1e-8)
        assert r["now_close"] == pytest.approx(sim["close"].loc[origin - pd.Timedelta(minutes=1)])
        assert r["up"] == float(real[-1] > r["now_close"])


class CrashAfter:
    """Same paths as the random walk, but raises on the k-th call (an interrupted run)."""

    def __init__(self, k: int) -> None:
        self.name, self.inner, self.k, self.calls = "random_walk", baselines.RandomWalk(), k, 0

    def describe(self) -> dict:
        return bt.describe(self.inner)

    def sample(self, history, future_times, n_paths, rng):
        self.calls += 1
        if self.calls == self.k:
            raise KeyboardInterrupt("simulated interruption")
        return self.inner.sample(history, future_times, n_paths, rng)


def _lines(path: Path) -> list[tuple[str, str]]:
    return [(json.loads(x)["forecaster"], json.loads(x)["origin"]) for x in path.read_text().splitlines()]


def test_resume_after_an_interruption(sim: pd.DataFrame, tmp_path: Path) -> None:
    s = settings(end="2025-03-07")
    full = bt.run_walk_forward(sim, s, [baselines.RandomWalk(), baselines.BlockBootstrap()], tmp_path / "full",
                               progress=False)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        bt.run_walk_forward(sim, s, [CrashAfter(11), baselines.BlockBootstrap()], out, progress=False)
    partial = _lines(out / bt.RESULTS)
    assert 0 < len(partial) < len(full)
    # A crash in the middle of a write leaves a torn line; it must be dropped, not read or kept.
    with open(out / bt.RESULTS, "ab") as fh:
        fh.write(b'{"forecaster": "random_walk", "origin": "2025-')
    resumed = bt.run_walk_forward(sim, s, [baselines.RandomWalk(), baselines.BlockBootstrap()], out, progress=False)
    lines = _lines(out / bt.RESULTS)
    assert len(lines) == len(set(lines)) == len(full)
    assert resumed == full
    # A second resume has nothing left to do and writes nothing.
    before = (out / bt.RESULTS).read_bytes()
    bt.run_walk_forward(sim, s, [baselines.RandomWalk(), baselines.BlockBootstrap()], out, progress=False)
    assert (out / bt.RESULTS).read_bytes() == before
    # Other settings in the same folder are refused instead of mixed in.
    with pytest.raises(ValueError):
        bt.run_walk_forward(sim, settings(end="2025-03-07", every=15), [baselines.RandomWalk()], out, progress=False)


class OverConfident:
    """Random walk with a third of the volatility and a random, useless drift: confident and wrong."""

    name = "overconfident"

    def sample(self, history, future_times, n_paths, rng):
        sig = baselines.RandomWalk().sigmas(history, future_times)
        drift = rng.normal() * float(np.sqrt(np.sum(sig**2))) / len(future_times)
        inc = rng.standard_normal((n_paths, len(future_times))) * sig * 0.3 + drift
        return baselines.assemble_paths(float(history["close"].iloc[-1]), inc,
                                        baselines.volume_by_time(history, future_times))


def test_report_catches_and_calibration_fixes_an_overconfident_forecaster(tmp_path: Path) -> None:
    frame = simulated.simulate_bars("2025-03-03", 12, seed=22)
    s = settings(every=15, n_paths=64, start="2025-03-04", batch=32, refit_every=25)
    records = bt.run_walk_forward(frame, s, [baselines.RandomWalk(), OverConfident()], tmp_path, progress=False)
    report = bt.build_report(records, s, tmp_path, plots=False)
    rw, oc = report["forecasters"]["random_walk"], report["forecasters"]["overconfident"]
    # Caught: reliability term large, 80 % band far below nominal at the horizon, worse CRPS than the random walk.
    assert oc["p_up"]["raw"]["reliability"] > 0.05 > rw["p_up"]["raw"]["reliability"]
    assert oc["coverage_by_step"]["p10_p90"]["raw"][-1] < 0.45
    assert abs(rw["coverage_by_step"]["p10_p90"]["raw"][-1] - 0.8) < 0.1
    dm = oc["diebold_mariano_vs_random_walk"]["crps_end"]
    assert dm["stat"] > 2 and dm["p_value"] < 0.05 and dm["h"] == 2
    # The report opens with the plain verdict: the random walk is better.
    assert list(report)[0] == "verdict_vs_random_walk"
    assert report["verdict_vs_random_walk"][0]["sentence"].startswith("overconfident: the random walk is better")
    assert erep.console_table(report).splitlines()[1].startswith("  overconfident: the random walk is better")
    # Fixed walk-forward: calibrated p_up is reliable, calibrated bands cover about 80 %.
    assert oc["p_up"]["calibrated"]["reliability"] < 0.02
    assert oc["p_up"]["calibrated"]["brier"] < oc["p_up"]["raw_after_warmup"]["brier"]
    assert abs(oc["coverage_by_step"]["p10_p90"]["calibrated"][-1] - 0.8) < 0.1
    # Online (forecast.online) beside them, scored on the same origins: as reliable, bands as close to nominal.
    assert oc["p_up"]["online"]["n"] == oc["p_up"]["calibrated"]["n"]
    assert oc["p_up"]["online"]["reliability"] < 0.02
    for band in ("p05_p95", "p10_p90", "p25_p75"):
        cov = oc["coverage_by_step"][band]
        assert abs(np.mean(cov["online"]) - cov["nominal"]) < 0.06
    w = report["independent_windows"]
    assert w["n_sessions"] == 11 and w["n_independent"] == 11 * 13  # 09:45 .. 15:45 ET, 30-minute windows
    assert (tmp_path / "calibrator_overconfident.json").exists() and (tmp_path / "per_origin.csv").exists()
    # No skill against the random walk: the edge-gated rule never trades; the calibrator records why (trust.edge).
    assert oc["toy_rule"]["edge"]["n_trades"] == 0 and oc["toy_rule"]["edge"]["skill"] is False
    meta = json.loads((tmp_path / "calibrator_overconfident.json").read_text())["meta"]
    assert meta["versus_random_walk"]["outcome"] == "worse" and meta["forecaster_settings"] is not None


def test_baseline_backtest_on_real_bars(real_data_dir: Path, tmp_path: Path, capsys) -> None:
    """Several sessions of the real QQQ bars through the command line, baselines only."""
    csv = real_data_dir / "QQQ_60day_1min_polygon__Poloilo16-VWAP.csv"
    argv = ["--config", str(Path(cli.__file__).parent / "config.yaml"), "--csv", str(csv), "--start", "2025-05-06", "--end", "2025-05-09",
            "--every", "30", "--n-samples", "64", "--out", str(tmp_path), "--no-progress"]
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    names = list(report["forecasters"])
    assert names[:2] == ["random_walk", "block_bootstrap"]
    w = report["independent_windows"]
    assert w["n_sessions"] == 4 and w["n_origins"] == 4 * 12 == w["n_independent"]
    table = pd.read_csv(tmp_path / "per_origin.csv")
    assert len(table) == 4 * 12 * len(names) and table["up"].isin([0, 1]).all()
    frame = read_bars_file(csv)
    row = table[(table["forecaster"] == "random_walk")].iloc[0]
    origin = pd.Timestamp(row["origin_utc"], tz="UTC")
    assert row["realised_end"] == pytest.approx(frame["close"].loc[origin + pd.Timedelta(minutes=29)], rel=1e-6)
    for png in ("reliability.png", "pit_histogram.png", "coverage_by_step.png", "equity.png"):
        assert (tmp_path / png).stat().st_size > 1000
    rw = report["forecasters"]["random_walk"]
    assert 0.15 < rw["p_up"]["raw"]["brier"] < 0.35 and rw["close_end"]["crps_fair_bp"] > 0
    out = capsys.readouterr().out
    assert "random_walk" in out and "independent" in out
    assert "against the random walk" in out.splitlines()[0] or any(
        ln.startswith("against the random walk") for ln in out.splitlines()[:3])
    assert [v["forecaster"] for v in report["verdict_vs_random_walk"]] == names[1:]


def tiny_kronos(root: Path) -> tuple[Path, Path]:
    """A random-weight Kronos pair far smaller than the published ones, in the published layout."""
    from support.kronos_checkpoints import write_checkpoint_pair

    return write_checkpoint_pair(root, "tiny", seed=0)


def test_kronos_settings_side_by_side_through_the_command_line(tmp_path: Path) -> None:
    model, tok = tiny_kronos(tmp_path / "ck")
    frame = simulated.simulate_bars("2025-03-03", 4, seed=23)
    csv = tmp_path / "bars.csv"
    frame.rename_axis("timestamp").reset_index().to_csv(csv, index=False)
    common = f"model={model},tokenizer={tok},lookback=64,max_context=128"
    argv = ["--config", str(Path(cli.__file__).parent / "config.yaml"), "--csv", str(csv), "--start", "2025-03-06",
            "--every", "60", "--n-samples", "8", "--batch", "4", "--forecasters", "random_walk",
            "--kronos", f"name=k_p09,top_p=0.9,{common}", "--kronos", f"name=k_p10_end,top_p=1.0,time_label=end,{common}",
            "--out", str(tmp_path / "out"), "--no-progress", "--no-plots"]
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert list(report["forecasters"]) == ["random_walk", "k_p09", "k_p10_end"]
    run = json.loads((tmp_path / "out" / bt.RUN_FILE).read_text())
    assert run["forecasters"]["k_p10_end"]["time_label"] == "end" and run["forecasters"]["k_p09"]["top_p"] == 0.9
    # lookback 64 < the config's 480: origins still need the config's history, so all forecasters share origins.
    assert run["settings"]["lookback"] == 480
    n = {name: r["n_origins"] for name, r in report["forecasters"].items()}
    assert len(set(n.values())) == 1 and n["k_p09"] > 0


def test_forecaster_names_and_settings_are_one_rule_in_both_modes(tmp_path: Path) -> None:
    """What a Ray driver pins in run.json without building a forecaster is what the built ones describe (else a
    run could not resume in the other mode); the names are build_forecasters' and clashes are refused."""
    from app.config import ConfigError

    model, tok = tiny_kronos(tmp_path / "ck")
    s = settings(model=str(model), tokenizer=str(tok), max_context=128, device="cpu")
    specs = [{"name": "k_p09", "top_p": 0.9}, {"top_p": 1.0, "time_label": "end"}]
    built = efc.build_forecasters(s, ["random_walk"], specs)
    assert [f.name for f in built] == efc.forecaster_names(["random_walk"], specs) == ["random_walk", "k_p09",
                                                                                         "kronos_2"]
    described = efc.describe_forecasters(s, ["random_walk"], specs)
    assert described == {f.name: bt.describe(f) for f in built}
    assert described["kronos_2"]["time_label"] == "end" and described["k_p09"]["top_p"] == 0.9
    for names, clash in ((["random_walk"], [{"name": "random_walk"}]), ([], [{}, {"name": "kronos_1"}]),
                         ([], [{"name": bt.SKIP}])):
        with pytest.raises(ConfigError, match="unique"):
            efc.forecaster_names(names, clash)
    with pytest.raises(ConfigError, match="unique"):  # the walk-forward itself keeps the rule
        bt.run_walk_forward(simulated.simulate_bars("2025-03-03", 4, seed=24), settings(), [Recorder(), Recorder()],
                            tmp_path / "out")


def test_fit_a_calibrator_from_the_forecast_run_log(tmp_path: Path) -> None:
    from forecast.calibrator import load_calibrator
    from forecast.runlog import RUN_LOG_COLUMNS, append_run_log

    frame = simulated.simulate_bars("2025-03-03", 3, seed=24)
    csv = tmp_path / "bars.csv"
    frame.rename_axis("timestamp").reset_index().to_csv(csv, index=False)
    rng = np.random.default_rng(25)
    log_path = tmp_path / "runs_QQQ.csv"
    for origin in frame.index[(frame.index.minute % 5 == 0)][1:-12]:
        now = float(frame["close"].loc[:origin - pd.Timedelta(minutes=1)].iloc[-1])
        sd = 0.001
        row = {"asof": origin + pd.Timedelta(seconds=5), "symbol": "QQQ", "now_close": now, "horizon_min": 30,
               "p_up": float(rng.choice([0.05, 0.95])), "p10_end": now * (1 - sd), "p50_end": now,
               "p90_end": now * (1 + sd), "p_hit_vwap": 0.99, "vwap_mode": "moving"}
        append_run_log(log_path, {k: v for k, v in row.items() if k in RUN_LOG_COLUMNS})
    argv = ["--config", str(Path(cli.__file__).parent / "config.yaml"), "--csv", str(csv),
            "--fit-run-log", str(log_path), "--out", str(tmp_path / "cal"), "--lookback", "60"]
    assert cli.main(argv) == 0
    c = load_calibrator(tmp_path / "cal" / "calibrator_QQQ_runlog.json")
    # rows near the close (a truncated live horizon) and before 60 bars of history have no 30-minute outcome
    assert c.p_up.n > 150 and c.p_up.method == "platt"
    assert abs(float(c.apply([0.95])[0]) - 0.5) < 0.15  # a coin flip dressed as certainty is brought back
    # p_hit_vwap is learnt too: a constant 0.99 maps to the observed touch rate.
    assert c.p_hit_vwap.n > 150 and float(c.apply_p_hit_vwap([0.99])[0]) < 0.95


def test_alpaca_history_source(tmp_path: Path, monkeypatch) -> None:
    """backtest.py without a file asks Alpaca (the real client, a fake endpoint) for the range plus history."""
    from support.fake_alpaca import FakeAlpaca, bars_page

    frame = simulated.simulate_bars("2025-03-03", 5, seed=26)

    fake = FakeAlpaca(lambda query: bars_page(frame, query))
    try:
        monkeypatch.setenv("ALPACA_KEY_ID", "AKFAKE0001")
        monkeypatch.setenv("ALPACA_SECRET_KEY", "fake-secret")
        monkeypatch.setenv("ALPACA_DATA_URL", fake.url)
        argv = ["--config", str(Path(cli.__file__).parent / "config.yaml"), "--start", "2025-03-06", "--end",
                "2025-03-07", "--every", "60", "--n-samples", "16", "--forecasters", "random_walk",
                "--out", str(tmp_path), "--no-progress", "--no-plots"]
        assert cli.main(argv) == 0
    finally:
        fake.close()
    first = pd.Timestamp(fake.requests[0]["query"]["start"])
    assert first <= pd.Timestamp("2025-03-03 14:30", tz="UTC")  # three sessions of history before the start
    run = json.loads((tmp_path / bt.RUN_FILE).read_text())
    assert run["data"]["source"] == "alpaca"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["independent_windows"]["n_sessions"] == 2 and report["forecasters"]["random_walk"]["n_origins"] == 12


def test_command_line_errors_exit_with_the_cli_codes(tmp_path: Path, monkeypatch, caplog) -> None:
    def last_error() -> str:
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        caplog.clear()
        return errors[-1] if errors else ""

    for name in ("ALPACA_KEY_ID", "ALPACA_SECRET_KEY", "APCA_API_KEY_ID", "APCA_API_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    config = str(Path(cli.__file__).parent / "config.yaml")
    assert cli.main(["--config", config, "--start", "2025-05-05", "--end", "2025-05-06", "--out", str(tmp_path)]) == 2
    assert "Alpaca keys" in last_error()
    assert cli.main(["--config", config, "--start", "2025-05-06", "--end", "2025-04-01", "--out", str(tmp_path)]) == 2
    assert "'end' (2025-04-01) is before 'start' (2025-05-06)" in last_error()  # before asking Alpaca
    csv = tmp_path / "bars.csv"
    simulated.simulate_bars("2025-03-03", 4, seed=27).rename_axis("timestamp").reset_index().to_csv(csv, index=False)
    base = ["--config", config, "--csv", str(csv), "--forecasters", "random_walk", "--n-samples", "8",
            "--out", str(tmp_path / "o"), "--no-progress", "--no-plots"]
    assert cli.main(base + ["--every", "60"]) == 0
    assert cli.main(base + ["--every", "30"]) == 2  # another run's folder: refused, not mixed
    assert "other settings" in last_error()
    assert cli.main(base + ["--kronos", "name=k,top_p"]) == 2  # a malformed setting is one line, not a traceback
    assert "key=value pairs" in last_error()


class SometimesNaN:
    """Random-walk paths, but NaN at every third call: counted as failed forecasts, the run goes on."""

    name = "flaky"

    def __init__(self) -> None:
        self.inner, self.calls = baselines.RandomWalk(), 0

    def sample(self, history, future_times, n_paths, rng):
        self.calls += 1
        paths = self.inner.sample(history, future_times, n_paths, rng)
        if self.calls % 3 == 0:
            paths[0, -1, 3] = np.nan
        return paths


def test_unusable_paths_are_counted_not_fatal(sim: pd.DataFrame, tmp_path: Path) -> None:
    s = settings(start="2025-03-10", end="2025-03-10")
    records = bt.run_walk_forward(sim, s, [SometimesNaN()], tmp_path, progress=False)
    failed = [r for r in records.values() if "error" in r]
    assert len(failed) == len(records) // 3 and "non-finite" in failed[0]["error"]
    report = bt.build_report(records, s, tmp_path, plots=False)
    assert report["failed_forecasts"]["flaky"]["n"] == len(failed)
    assert report["forecasters"]["flaky"]["n_origins"] == len(records) - len(failed)


def test_a_backtest_row_is_the_cli_replay_of_its_origin(tmp_path: Path) -> None:
    """The seeding rule: origin T of `backtest --seed S` has exactly the paths of `cli --asof T --seed S`, however
    the backtest batches its origins."""
    import cli_kronos_prob_qqq as forecast_cli

    model, tok = tiny_kronos(tmp_path / "ck")
    frame = simulated.simulate_bars("2025-03-03", 4, seed=28)
    csv = tmp_path / "bars.csv"
    frame.rename_axis("timestamp").reset_index().to_csv(csv, index=False)
    common = ["--config", str(Path(cli.__file__).parent / "config.yaml"), "--csv", str(csv), "--model", str(model),
              "--tokenizer", str(tok), "--max-context", "256", "--lookback", "120", "--n-samples", "6", "--seed", "3"]
    for batch in ("1", "5"):
        argv = common + ["--start", "2025-03-06", "--every", "45", "--batch", batch, "--forecasters", "kronos",
                         "--out", str(tmp_path / f"bt{batch}"), "--no-progress", "--no-plots"]
        assert cli.main(argv) == 0
    rows = [pd.read_csv(tmp_path / f"bt{b}" / "per_origin.csv") for b in ("1", "5")]
    pd.testing.assert_frame_equal(rows[0], rows[1])  # batching changes nothing
    row = rows[0].iloc[3]
    origin = pd.Timestamp(row["origin_utc"], tz="UTC")
    out = tmp_path / "cli"
    assert forecast_cli.main(common + ["--source", "csv", "--asof", origin.isoformat(), "--out", str(out), "-q"]) == 0
    summary = json.loads((out / "pred_summary_QQQ_latest.json").read_text())
    assert summary["summary"]["p_up_30m"] == pytest.approx(row["p_up"], abs=1e-9)
    paths = pd.read_csv(out / "paths_QQQ_latest.csv").drop(columns="path").to_numpy()
    assert row["q50_end"] == pytest.approx(np.quantile(paths[:, -1], 0.5), rel=1e-7)
