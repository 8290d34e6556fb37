"""Outputs pinned on the real QQQ bars: the files in tests/golden were written by the code before the forecast
pipeline was extracted (commit 5c4c8bc); the Monte Carlo intervals (the summaries' *_ci and *_se keys,
`sampling`, the bands CSVs) were added later, with every earlier value checked unchanged. The forecast CLI (with
a deterministic stand-in for the engine, so the pin covers every rule after sampling: data preparation, horizon,
metrics, calibration, summary, files) and the baselines' backtest must still produce them: text and integers
exactly, floats to a relative 1e-9 (support.compare), so that another numpy, pandas or scikit-learn summing in
another order passes and a changed rule does not."""
import json
import os
from pathlib import Path

import pytest

import backtest
import cli_kronos_prob_qqq as cli
import forecast.pipeline as pipeline
from support.compare import csv_differences, differences
from support.real_files import POLOILO as BARS
from support.stand_in import StandIn

GOLDEN = Path(__file__).parent / "golden"
ROOT = Path(__file__).resolve().parents[1]
CASES = {"midday": "2025-06-02T15:00:00Z", "near_close": "2025-06-03T19:48:30Z",
         "after_close": "2025-06-04T21:00:00Z", "open": "2025-06-05T13:31:00Z"}


def comparable(summary: dict) -> dict:
    summary = dict(summary)
    summary.pop("timings_s")
    for key in ADDED_SUMMARY_KEYS:
        summary.pop(key, None)
    summary["data"] = {k: v for k, v in summary["data"].items() if k != "file"}
    if summary.get("calibrated"):
        summary["calibrated"] = {k: v for k, v in summary["calibrated"].items() if k != "calibrator"}
    return summary


@pytest.fixture(scope="module")
def shared_data() -> Path:
    if not os.environ.get("TEST_DATA_DIR"):
        pytest.skip("TEST_DATA_DIR is not set: the pinned outputs are of the real bars")
    return Path(os.environ["TEST_DATA_DIR"])


@pytest.fixture(scope="module")
def baselines_backtest(shared_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("backtest")
    argv = ["--config", str(ROOT / "config.yaml"), "--csv", str(shared_data / BARS), "--start", "2025-05-27",
            "--end", "2025-06-03", "--every", "15", "--n-samples", "50", "--seed", "0",
            "--forecasters", "random_walk,block_bootstrap", "--no-plots", "--no-progress", "--out", str(out)]
    assert backtest.main(argv) == 0
    return out


# Added after the pin (issue 18): online calibration and trust beside the pinned values, which stay as they were.
ADDED_SUMMARY_KEYS = ("online", "trust")


def pinned_scores(scores: dict) -> dict:
    """The report's scores without what was added after the pin: the online column, the edge-gated rule."""
    out = json.loads(json.dumps(scores))
    for r in out.values():
        for block in [r["p_up"], r["p_hit_vwap"], *r["coverage_by_step"].values()]:
            block.pop("online", None)
        r["toy_rule"].pop("edge", None)
    return out


def test_baselines_backtest_is_unchanged(baselines_backtest: Path) -> None:
    golden = (GOLDEN / "backtest_per_origin.csv").read_text()
    width = len(golden.splitlines()[0].split(","))  # columns added since (the online ones) come after the pinned ones
    got = (baselines_backtest / "per_origin.csv").read_text().splitlines()
    pinned = "".join(",".join(line.split(",")[:width]) + "\n" for line in got)
    assert csv_differences(pinned, golden) == []
    assert got[0].split(",")[width:] == ["p_up_online", "p_hit_vwap_online", "q10_online_end", "q90_online_end"]
    scores = json.loads((baselines_backtest / "report.json").read_text())["forecasters"]
    assert differences(pinned_scores(scores), json.loads((GOLDEN / "backtest_scores.json").read_text())) == []
    assert all("online" in r["p_up"] and "edge" in r["toy_rule"] for r in scores.values())


@pytest.mark.parametrize("case", list(CASES))
def test_forecast_files_are_unchanged(case, real_data_dir, baselines_backtest, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(pipeline, "load_sampler", lambda cfg: StandIn())
    stamp = CASES[case].replace("-", "").replace(":", "")
    for calibrated in ((False, True) if case == "midday" else (False,)):
        out = tmp_path / str(calibrated)
        argv = ["--config", str(ROOT / "config.yaml"), "--source", "csv", "--csv", str(real_data_dir / BARS),
                "--asof", CASES[case], "--seed", "5", "--n-samples", "40", "--out", str(out), "-q"]
        if calibrated:
            argv += ["--calibrator", str(baselines_backtest / "calibrator_random_walk.json")]
        assert cli.main(argv) == 0
        summary = json.loads((out / f"pred_summary_QQQ_{stamp}.json").read_text())
        golden = json.loads((GOLDEN / f"{case}{'_cal' if calibrated else ''}_summary.json").read_text())
        assert differences(comparable(summary), comparable(golden)) == []
        if not calibrated:
            assert csv_differences((out / f"paths_QQQ_{stamp}.csv").read_text(),
                                   (GOLDEN / f"{case}_paths.csv").read_text()) == []
            assert csv_differences((out / f"bands_QQQ_{stamp}.csv").read_text(),
                                   (GOLDEN / f"{case}_bands.csv").read_text()) == []
