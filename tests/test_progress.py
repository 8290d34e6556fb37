"""Progress on a terminal: stage lines (and the sampling bar) on stderr when it is a terminal, nothing under cron
(not a terminal) or with -q; a run stopped by its time budget says which stage was slow and what to lower."""
from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import numpy as np
import pytest

import cli_kronos_prob_qqq as cli
import forecast.pipeline as pipeline
from app.exits import ExitCode
from app.operation import TimeBudgetExceeded, time_budget
from app.progress import Stages
from support.real_files import POLOILO as BARS
from support.stand_in import StandIn

ROOT = Path(__file__).resolve().parents[1]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_stage_lines_and_the_bar_show_on_a_terminal_only():
    tty = Terminal()
    stages = Stages.for_terminal(quiet=False, stream=tty)
    with stages.stage("sampling"):
        for done in range(1, 11):
            stages.progress(done, 10)
    text = tty.getvalue()
    assert text.startswith("sampling paths ...\n") and "10/10" in text
    assert text.rstrip().splitlines()[-1].startswith("sampling paths: ") and text.rstrip().endswith(" s")
    for stream, quiet in ((io.StringIO(), False), (Terminal(), True)):  # cron's stderr; a terminal with -q
        silent = Stages.for_terminal(quiet=quiet, stream=stream)
        with silent.stage("sampling"):
            silent.progress(1, 1)
        assert stream.getvalue() == "" and "sampling" in silent.done  # still timed, for the budget


class ReportingStandIn(StandIn):
    """The pinned tests' stand-in engine, reporting its decode steps as the real sampler does."""
    progress = None

    def sample_batch(self, values, x_stamp, y_stamp, n_paths, seeds=None, **kw):
        for step in range(1, y_stamp.shape[1] + 1):
            if self.progress is not None:
                self.progress(step, y_stamp.shape[1])
        return super().sample_batch(values, x_stamp, y_stamp, n_paths, seeds, **kw)


def argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", str(ROOT / "config.yaml"), "--csv", str(data / BARS), "--asof", "2025-06-04T15:00:00Z",
            "--seed", "5", "--n-samples", "8", "--out", str(out), *extra]


@pytest.mark.parametrize("stderr, quiet, shown", [(Terminal, False, True), (Terminal, True, False),
                                                  (io.StringIO, False, False)])
def test_the_forecast_cli_shows_its_stages_on_a_terminal(real_data_dir, tmp_path, monkeypatch, stderr, quiet, shown):
    monkeypatch.setattr(pipeline, "load_sampler", lambda cfg: ReportingStandIn())
    err = stderr()
    monkeypatch.setattr("sys.stderr", err)
    assert cli.main(argv(real_data_dir, tmp_path, *(["-q"] if quiet else []))) == ExitCode.OK
    starts = [line for line in err.getvalue().splitlines() if line.endswith(" ...")]
    if shown:
        assert starts == ["reading bars ...", "preparing the context ...", "loading the model ...",
                          "sampling paths ...", "writing files ..."]
        assert "30/30" in err.getvalue()  # the bar followed the engine's 30 decode steps
    else:
        assert starts == [] and "sampling:" not in err.getvalue()


class SlowStandIn(StandIn):
    def sample_batch(self, *args, **kw):
        time.sleep(120)


def test_a_tripped_budget_names_the_slow_stage_and_what_to_lower(real_data_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(pipeline, "load_sampler", lambda cfg: SlowStandIn())
    assert cli.main(argv(real_data_dir, tmp_path, "-q", "--time-budget", "15")) == ExitCode.TIME_BUDGET
    line = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR][0]
    assert "time budget of 15 s" in line and "during sampling paths" in line
    assert "slowest: sampling paths (lower --n-samples or --lookback" in line and "reading bars" in line
    assert "nothing was written" in line


def test_the_budget_account_is_read_when_the_budget_trips():
    stages = Stages(show=False)
    with pytest.raises(TimeBudgetExceeded) as caught:
        with time_budget(0.3, stages.account):
            with stages.stage("data"):
                pass
            with stages.stage("loading"):
                time.sleep(5)
    text = str(caught.value)
    assert "during loading the model" in text and "slowest: loading the model" in text
    assert np.isclose(float(text.split("loading the model ")[1].split(" s")[0]), 0.3, atol=0.25)
