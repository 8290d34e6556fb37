"""The walk-forward API as the backtest tests use it: settings from the key table, a Kronos forecaster around any
sampler, the bt namespace of the engine's modules, and FakeSampler, a stand-in for the engine's sample_batch."""
import numpy as np

from app.config import build_config
from evaluation import forecasters as efc
from evaluation import replay, report as erep, store, walkforward
from forecast.pipeline import ForecastPipeline


def settings(**kw):
    """A backtest config: the key table's defaults with these changes (n_paths and min_history by their config
    names n_samples and lookback)."""
    names = {"n_paths": "n_samples", "min_history": "lookback"}
    base = dict(every=20, n_samples=32, lookback=60, batch=4, start="2025-03-06", seed=0)
    return build_config({}, base | {names.get(k, k): v for k, v in kw.items()}, script="backtest")


def run_walk_forward(frame, s, forecasters, out, **kw):
    return walkforward.run_walk_forward(frame, ForecastPipeline(s, calibrator=None), forecasters, out, progress=False)


def kronos(name: str, sampler, s, **changes):
    return efc.KronosForecaster(name, ForecastPipeline(s.replace(**changes), sampler=sampler, calibrator=None))


class bt:  # the walk-forward API the tests use, from its modules
    run_walk_forward = staticmethod(run_walk_forward)
    make_origins = staticmethod(replay.make_origins)
    build_report = staticmethod(erep.build_report)
    describe = staticmethod(store.describe)
    SKIP, RESULTS, RUN_FILE = store.SKIP, store.RESULTS, store.RUN_FILE


class FakeSampler:
    """Stands in for KronosPathSampler.sample_batch and records the model's inputs (time features)."""

    model_revision = tokenizer_revision = None
    device, max_context = "cpu", 512

    def __init__(self) -> None:
        self.calls = []

    def sample_batch(self, values, x_stamp, y_stamp, n_paths, temperature, top_k, top_p, seeds):
        self.calls.append([(tuple(x[-1]), tuple(y[0]), len(y)) for x, y in zip(x_stamp, y_stamp)])
        out = []
        for v, y, seed in zip(values, y_stamp, seeds):
            rng = np.random.default_rng(seed)
            close = v[-1, 3] * np.exp(np.cumsum(rng.normal(0, 5e-4, (n_paths, len(y))), axis=1))
            out.append(np.stack([close, close * 1.0005, close * 0.9995, close, np.full_like(close, 1e4),
                                 close * 1e4], axis=-1))
        return np.stack(out)
