"""Many symbols and Ray: two symbols of real bars (QQQ 2025, SPY 2013) with a baseline and a tiny random Kronos,
on a local Ray (2 CPUs) that this module starts once. The Ray run must store exactly the one-process run's
records, survive a worker killed mid-shard, resume after an interruption, and report a missing symbol."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray  # optional for users; setup_venv.sh --test installs it (requirements-ray.txt)

import backtest as cli
from evaluation import scoring
from evaluation.shards import FAULT_ENV
from evaluation.store import PARTS, RESULTS, RUN_FILE, SKIP, ResultStore
from support.real_files import write_universe

SYMBOLS = ("QQQ", "SPY")
N_SHARDS = 2 * 2 * 2  # symbols x sessions x (baselines, kronos)


@pytest.fixture(scope="module")
def universe(tmp_path_factory) -> dict:
    value = os.environ.get("TEST_DATA_DIR")
    if not value:
        pytest.skip("TEST_DATA_DIR is not set: real-bar tests need the shared data folder")
    from support.kronos_checkpoints import write_checkpoint_pair

    root = tmp_path_factory.mktemp("universe")
    model, tok = write_checkpoint_pair(root / "ck", "tiny", seed=0)
    data = write_universe(Path(value), root / "bars")
    argv = ["--config", str(Path(cli.__file__).parent / "config.yaml"), "--symbols", "QQQ,IWM,SPY,BAD",
            "--data-dir", str(data), "--every", "90", "--days", "2", "--n-samples", "4", "--lookback", "100",
            "--top-p", "1.0", "--batch", "4",
            "--seed", "5", "--forecasters", "random_walk,kronos", "--model", str(model), "--tokenizer", str(tok),
            "--max-context", "160", "--device", "cpu", "--no-progress", "--no-plots"]
    single = root / "single"
    import torch

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "ray", None)  # the one-process path must never import Ray
        torch.set_num_threads(1)  # as each Ray worker of one CPU slot (and quicker on two busy cores)
        try:
            assert cli.main(argv + ["--out", str(single)]) == 0
        finally:
            torch.set_num_threads(threads)
    records = {s: ResultStore(single / s / RESULTS).load() for s in SYMBOLS}
    return {"argv": argv, "records": records, "report": json.loads((single / "report.json").read_text())}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _lines(folder: Path) -> list[tuple[str, str]]:
    """(forecaster, origin) of every stored line of a symbol folder, parts and results.jsonl together."""
    files = sorted((folder / PARTS).glob("*.jsonl")) + ([folder / RESULTS] if (folder / RESULTS).exists() else [])
    return [(json.loads(x)["forecaster"], json.loads(x)["origin"]) for f in files for x in f.read_text().splitlines()]


def test_one_process_report_pools_symbols_and_names_the_missing_ones(universe) -> None:
    report, records = universe["report"], universe["records"]
    assert report["symbols"] == ["QQQ", "SPY"] and set(report["by_symbol"]) == {"QQQ", "SPY"}
    left = report["left_out_symbols"]
    assert set(left) == {"IWM", "BAD"} and "no bars file" in left["IWM"] and "BAD.csv" in left["BAD"]
    pooled_rows, windows = [], 0
    for sym in SYMBOLS:
        rows = [r for (n, _), r in records[sym].items() if n == "kronos" and r.get("up") is not None]
        assert len(rows) >= 6  # each symbol's own origins, forecast and resolved
        w = scoring.independent_windows(pd.DatetimeIndex([pd.Timestamp(r["origin"]) for r in rows]), 30,
                                        np.array([r["session"] for r in rows]))
        assert report["by_symbol"][sym]["independent_windows"] == w
        windows += w["n_independent"]
        pooled_rows += rows
    # Pooled: the windows of both symbols add up; the Brier score is the mean over both symbols' origins.
    assert report["independent_windows"]["n_independent"] == windows
    assert report["independent_windows"]["n_origins"] == len(pooled_rows)
    brier = np.mean([(r["p_up"] - r["up"]) ** 2 for r in pooled_rows])
    assert report["forecasters"]["kronos"]["p_up"]["raw"]["brier"] == pytest.approx(brier, rel=1e-9)
    assert report["forecasters"]["kronos"]["p_up"]["raw"]["n"] == len(pooled_rows)


def test_ray_run_stores_the_one_process_records_though_a_worker_dies_mid_shard(universe, local_ray, tmp_path: Path,
                                                                              monkeypatch, capsys) -> None:
    """The Kronos worker dies (os._exit, as a lost node) on its first attempt at one shard: Ray restarts it and
    retries the shard; the stored records are the one-process run's, none lost or doubled."""
    marker = tmp_path / "killed"
    monkeypatch.setenv(FAULT_ENV, f"SPY/2013-10-09.kronos@{marker}")
    out = tmp_path / "ray"
    assert cli.main(universe["argv"] + ["--out", str(out), "--ray"]) == 0
    dead = int(marker.read_text())  # the worker that took the shard first died in it
    with pytest.raises(ProcessLookupError):
        os.kill(dead, 0)
    for sym in SYMBOLS:
        assert ResultStore(out / sym / RESULTS).load() == universe["records"][sym]  # origin by origin
        assert not (out / sym / RESULTS).exists()  # all of it came in shard parts
        lines = _lines(out / sym)
        assert len(lines) == len(set(lines)) == len(universe["records"][sym])  # nothing doubled
        shards = json.loads((out / sym / RUN_FILE).read_text())["shards"]
        assert len(shards) == N_SHARDS // 2 and all(t["seconds"] > 0 and t["origins"] == 4 for t in shards.values())
    retried = json.loads((out / "SPY" / RUN_FILE).read_text())["shards"]["2013-10-09.kronos"]
    assert not retried["worker"].endswith(f":{dead}")
    report = json.loads((out / "report.json").read_text())
    assert report["execution"]["mode"] == "ray" and report["execution"]["shards_run"] == N_SHARDS
    assert report["forecasters"] == universe["report"]["forecasters"]
    assert set(report["left_out_symbols"]) == {"IWM", "BAD"}
    printed = capsys.readouterr().out
    assert "== QQQ ==" in printed and "== pooled: QQQ, SPY ==" in printed and "left out IWM" in printed


def test_an_interrupted_ray_run_resumes_without_redoing_finished_shards(universe, local_ray, tmp_path: Path,
                                                                          monkeypatch) -> None:
    """Baselines only (plain Ray tasks): interrupted after three shards were stored, then resumed."""
    written = []
    real_write = ResultStore.write_part

    def interrupt_after_three(self, name, records):
        if len(written) == 3:
            raise KeyboardInterrupt("simulated Ctrl-C")
        written.append(self.parts / f"{name}.jsonl")
        return real_write(self, name, records)

    out = tmp_path / "ray"
    argv = universe["argv"] + ["--out", str(out), "--ray", "--forecasters", "random_walk"]
    monkeypatch.setattr(ResultStore, "write_part", interrupt_after_three)
    assert cli.main(argv) == 130
    monkeypatch.setattr(ResultStore, "write_part", real_write)
    before = {p: p.stat().st_mtime_ns for p in written}
    assert len(before) == 3
    assert cli.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in written} == before  # finished shards were not redone
    report = json.loads((out / "report.json").read_text())
    assert report["execution"]["shards_run"] == N_SHARDS // 2 - 3
    for sym in SYMBOLS:
        lines = _lines(out / sym)
        assert len(lines) == len(set(lines)) and {k for k in lines if k[0] == SKIP}  # one skip record each
        expected = {k: r for k, r in universe["records"][sym].items() if k[0] in (SKIP, "random_walk")}
        assert ResultStore(out / sym / RESULTS).load() == expected


def test_one_symbol_on_ray_stores_its_one_process_records_and_resumes_in_that_mode(universe, local_ray,
                                                                                    tmp_path: Path) -> None:
    """Without --symbols the run is one job in --out itself, on Ray as in one process: the same records, and
    the same run.json, so a one-process rerun of the same folder resumes it (nothing left to do, nothing refused)."""
    argv, drop = [], {"--symbols", "--data-dir"}
    for flag, value in zip(universe["argv"][::2], universe["argv"][1::2]):
        argv += [] if flag in drop else [flag, value]
    spy = Path(universe["argv"][universe["argv"].index("--data-dir") + 1]) / "SPY.csv"
    out = tmp_path / "one"
    argv += ["--csv", str(spy), "--symbol", "SPY", "--forecasters", "random_walk", "--out", str(out)]
    assert cli.main(argv + ["--ray"]) == 0
    expected = {k: r for k, r in universe["records"]["SPY"].items() if k[0] in (SKIP, "random_walk")}
    assert ResultStore(out / RESULTS).load() == expected and not (out / RESULTS).exists()
    parts = {p: p.stat().st_mtime_ns for p in (out / PARTS).glob("*.jsonl")}
    assert len(parts) == 2  # two sessions, baselines only
    assert cli.main(argv) == 0
    assert not (out / RESULTS).exists() and {p: p.stat().st_mtime_ns for p in (out / PARTS).glob("*.jsonl")} == parts


def test_without_ray_installed_ray_runs_are_refused_with_the_way_to_install_it(universe, tmp_path: Path,
                                                                                monkeypatch, caplog) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    argv = universe["argv"] + ["--forecasters", "random_walk", "--symbols", "QQQ", "--out", str(tmp_path), "--ray"]
    assert cli.main(argv) == 2
    assert "--ray needs Ray: pip install -r requirements-ray.txt" in caplog.text


def test_alpaca_bars_are_fetched_once_per_symbol_and_cached_per_session(tmp_path: Path, monkeypatch) -> None:
    """Without --data-dir: one request per symbol (the real client, a fake endpoint), one Parquet file per
    symbol and session; a second run reads the cache and asks again only for the symbol that failed."""
    from support import simulated
    from support.fake_alpaca import FakeAlpaca, bars_page

    frames = {"QQQ": simulated.simulate_bars("2025-03-03", 5, seed=31),
              "SPY": simulated.simulate_bars("2025-03-03", 5, price=400.0, seed=32)}

    def respond(query):
        frame = frames.get(query["symbols"])
        if frame is None:
            return 500, {"message": "internal error"}
        return bars_page(frame, query)

    fake = FakeAlpaca(respond)
    monkeypatch.setenv("ALPACA_KEY_ID", "AKFAKE0001")
    monkeypatch.setenv("ALPACA_SECRET_KEY", "fake-secret")
    monkeypatch.setenv("ALPACA_DATA_URL", fake.url)
    cache = tmp_path / "cache"
    argv = ["--config", str(Path(cli.__file__).parent / "config.yaml"), "--symbols", "QQQ,SPY,OOPS",
            "--start", "2025-03-06", "--end", "2025-03-07", "--every", "60", "--n-samples", "16",
            "--forecasters", "random_walk", "--bars-cache", str(cache), "--no-progress", "--no-plots"]
    try:
        assert cli.main(argv + ["--out", str(tmp_path / "a")]) == 0
        assert sorted(r["query"]["symbols"] for r in fake.requests) == ["OOPS", "QQQ", "SPY"]
        assert cli.main(argv + ["--out", str(tmp_path / "b")]) == 0
        assert sorted(r["query"]["symbols"] for r in fake.requests) == ["OOPS", "OOPS", "QQQ", "SPY"]
    finally:
        fake.close()
    sessions = ["2025-03-03", "2025-03-04", "2025-03-05", "2025-03-06", "2025-03-07"]  # 3 of history, then the run
    for sym in ("QQQ", "SPY"):
        assert sorted(p.stem for p in (cache / sym / "iex").glob("*.parquet")) == sessions
        assert ResultStore(tmp_path / "b" / sym / RESULTS).load() == ResultStore(tmp_path / "a" / sym / RESULTS).load()
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert "HTTP 500" in report["left_out_symbols"]["OOPS"] and report["symbols"] == ["QQQ", "SPY"]
    assert report["by_symbol"]["QQQ"]["forecasters"]["random_walk"]["n_origins"] == 12
