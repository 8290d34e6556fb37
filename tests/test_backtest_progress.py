"""The backtest's bar moves per origin: one unit per (origin, forecaster); a Kronos engine call of a batch of
origins tells its origins' shares as its decode steps complete, not once per batch; a resumed run starts where it
stopped; tqdm shows the time left."""
from __future__ import annotations

import io
import re


from evaluation import baselines, walkforward
from forecast.pipeline import ForecastPipeline, origin_ticker
from support.backtest_api import FakeSampler, kronos, settings  # the fixture sim is in conftest.py


class SteppingSampler(FakeSampler):
    """The fake engine, reporting its decode steps through the progress hook as KronosPathSampler does."""
    progress = None

    def __init__(self) -> None:
        super().__init__()
        self.told: list[int] = []

    def sample_batch(self, values, x_stamp, y_stamp, n_paths, temperature, top_k, top_p, seeds):
        steps = y_stamp.shape[1]
        for done in range(1, steps + 1):
            if self.progress is not None:
                self.progress(done, steps)
        return super().sample_batch(values, x_stamp, y_stamp, n_paths, temperature, top_k, top_p, seeds)


def test_origin_ticker_tells_whole_origins_adding_up():
    told: list[int] = []
    hook = origin_ticker(16, told.append)
    for done in range(1, 31):
        hook(done, 30)
    assert sum(told) == 16 and len(told) == 16  # 16 origins over 30 steps: one more origin every step or two
    told.clear()
    hook = origin_ticker(4, told.append)
    hook(1, 1)
    assert told == [4]


def test_a_kronos_batch_moves_the_bar_origin_by_origin(sim, tmp_path, monkeypatch):  # noqa: F811
    s = settings(batch=8, horizon=10, min_horizon=5)
    engine = SteppingSampler()
    ticks: list[int] = []
    pipe = ForecastPipeline(s, sampler=engine, calibrator=None)
    origins = walkforward.make_origins(sim, s)[:8]
    cases = [walkforward.prepare_case(sim, t, pipe) for t in origins]
    live = [c for c in cases if not c.skip]
    assert len(live) == 8
    f = kronos("k", engine, s)
    walkforward.sample_cases(f, live, s, on_origins=ticks.append)
    assert sum(ticks) == 8 and len(ticks) == 8  # within one engine call, not one jump of 8


def test_the_backtest_bar_counts_origins_times_forecasters_and_resumes(sim, tmp_path, monkeypatch):  # noqa: F811
    s = settings()
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    fs = [baselines.RandomWalk(), kronos("k", SteppingSampler(), s)]
    n = len(walkforward.make_origins(sim, s))
    walkforward.run_walk_forward(sim, ForecastPipeline(s, calibrator=None), fs, tmp_path, progress=True)
    final = err.getvalue().split("\r")[-1]
    assert f"{2 * n}/{2 * n}" in final and "forecast" in final and "ET" in final
    # a rerun finds every pair stored: the bar starts full
    err.seek(0)
    err.truncate()
    walkforward.run_walk_forward(sim, ForecastPipeline(s, calibrator=None), fs, tmp_path, progress=True)
    first = [p for p in err.getvalue().split("\r") if p.strip()][0]
    assert re.search(rf"\b{2 * n}/{2 * n}\b", first)
