"""A replay outside its bars file: the line that says why nothing was forecast names the file's range."""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

import cli_kronos_prob_qqq as cli
import forecast.pipeline as pipeline
from app.exits import ExitCode
from support.real_files import POLOILO as BARS
from support.stand_in import StandIn

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("asof, where", [("2025-08-11T15:00:00Z", "after the last bar"),
                                         ("2025-03-11T15:00:00Z", "before the first bar")])
def test_asof_outside_the_file_names_its_range(real_data_dir, tmp_path, monkeypatch, caplog, asof, where):
    monkeypatch.setattr(pipeline, "load_sampler", lambda cfg: StandIn())
    path = real_data_dir / BARS
    stamps = pd.read_csv(path, usecols=["Datetime"])["Datetime"]
    first, last = (pd.Timestamp(stamps.iloc[i]).strftime("%Y-%m-%dT%H:%M:%SZ") for i in (0, -1))
    code = cli.main(["--config", str(ROOT / "config.yaml"), "--csv", str(path), "--asof", asof,
                     "--out", str(tmp_path), "-q"])
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert code == ExitCode.SKIPPED and len(lines) == 1
    assert f"is {where} of {path}, which covers {first} " in lines[0] and f" .. {last} " in lines[0]
    assert not any(tmp_path.glob("pred_summary_*"))
