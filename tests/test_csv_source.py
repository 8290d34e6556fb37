"""One meaning for --csv in every script: a bars file given means source csv; beside --source alpaca it is bad
input (exit 2, one line); the rule lives once, in app.config.build_config."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

import backtest
import cli_kronos_prob_qqq as cli
import finetune
import serve
from app.config import ConfigError, load_config
from app.exits import ExitCode

SCRIPTS = ("forecast", "backtest", "serve", "finetune")


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_bars_file_alone_means_source_csv(script, tmp_path):
    cfg = load_config(None, {"csv": "bars.csv"}, script=script)
    assert (cfg.source, cfg.csv) == ("csv", "bars.csv")
    assert load_config(None, {}, script=script).source == "alpaca"  # no file: the default stays


@pytest.mark.parametrize("script", SCRIPTS)
def test_csv_beside_an_explicit_alpaca_source_is_refused(script):
    with pytest.raises(ConfigError, match="contradicts --source alpaca"):
        load_config(None, {"csv": "bars.csv", "source": "alpaca"}, script=script)


def test_the_file_layer_follows_the_same_rule_and_the_command_line_wins(tmp_path):
    only_csv = tmp_path / "a.yaml"
    only_csv.write_text("csv: bars.csv\n")
    assert load_config(only_csv, {}).source == "csv"
    both = tmp_path / "b.yaml"
    both.write_text("source: alpaca\ncsv: bars.csv\n")
    with pytest.raises(ConfigError, match="source: csv"):
        load_config(both, {})
    assert load_config(both, {"csv": "other.csv"}).source == "csv"  # the flag decides
    assert load_config(both, {"source": "alpaca"}).source == "alpaca"
    csv_file = tmp_path / "c.yaml"
    csv_file.write_text("source: csv\ncsv: bars.csv\n")
    assert load_config(csv_file, {"source": "alpaca"}).source == "alpaca"  # an explicit flag still wins


def one_error(caplog) -> str:
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1 and "\n" not in lines[0] and "Traceback" not in lines[0]
    return lines[0]


@pytest.mark.parametrize("main, extra", [(cli.main, ["--asof", "2025-06-02T14:00:00Z"]), (backtest.main, []),
                                         (finetune.main, []), (serve.main, [])])
def test_every_script_exits_2_on_csv_with_source_alpaca(main, extra, tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bars = tmp_path / "bars.csv"
    bars.write_text("timestamp,open,high,low,close,volume\n")
    args = ["--config", str(tmp_path / "none.yaml"), "--csv", str(bars), "--source", "alpaca", *extra]
    (tmp_path / "none.yaml").write_text("{}\n")
    assert main(args) == ExitCode.BAD_INPUT
    assert "contradicts --source alpaca" in one_error(caplog)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bars.csv", "none.yaml"]  # nothing written


def test_the_forecast_cli_reads_the_file_named_by_csv_alone(tmp_path, caplog, monkeypatch):
    """Without --source the CLI goes to the file (its problem is named), never to Alpaca (no keys needed)."""
    for name in ("APCA_API_KEY_ID", "APCA_API_SECRET_KEY", "ALPACA_API_KEY", "ALPACA_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    missing = tmp_path / "missing.csv"
    (tmp_path / "none.yaml").write_text("{}\n")
    code = cli.main(["--config", str(tmp_path / "none.yaml"), "--csv", str(missing), "--asof",
                     "2025-06-02T14:00:00Z", "--out", str(tmp_path / "out")])
    line = one_error(caplog)
    assert code != ExitCode.OK and str(missing) in line and "key" not in line.lower()


def test_serve_plays_the_csv_file_as_a_replay(tmp_path):
    bars = tmp_path / "bars.csv"
    bars.write_text("timestamp,open,high,low,close,volume\n")
    cfg = load_config(None, {"csv": str(bars)}, script="serve")
    args = argparse.Namespace(replay=None, replay_from=None, speed=60.0)
    replay = serve.replay_of(args, ["QQQ"], cfg)
    assert replay.files == {"QQQ": str(bars)}
    other = tmp_path / "other.csv"
    other.write_text("")
    with pytest.raises(ConfigError, match="different bars files"):
        serve.replay_of(argparse.Namespace(replay=[str(other)], replay_from=None, speed=60.0), ["QQQ"], cfg)
