"""Shared pieces of the live-service tests: a settable clock, a sampler wrapper that counts, waits or runs a
hook mid-call, the service config over a tiny checkpoint, and the synthetic bars as a canonical frame."""
from __future__ import annotations

import threading
import time

import pandas as pd

from app.config import build_config
from live.book import BarBook
from live.hub import LiveHub
from live.loop import ForecastLoop
from live.outputs import Outputs, RedisPublisher
from support.bars import synthetic_bars


def canonical_bars(sessions=("2025-06-02", "2025-06-03", "2025-06-04"), seed=0, price=500.0) -> pd.DataFrame:
    frame = synthetic_bars(sessions, seed=seed, price=price)
    frame.index = pd.DatetimeIndex(pd.to_datetime(frame.pop("timestamp"), utc=True), name="timestamp")
    return frame


class ManualClock:
    """Market time the test sets; waits are zero."""

    speed = 1.0

    def __init__(self, now: str | pd.Timestamp) -> None:
        self.t = pd.Timestamp(now)

    def now(self) -> pd.Timestamp:
        return self.t

    def wall_seconds_until(self, t: pd.Timestamp) -> float:
        return 0.0


class SpySampler:
    """Wraps the real engine: counts calls and batch sizes, sleeps ``delay`` seconds, runs ``during`` once."""

    def __init__(self, inner, delay: float = 0.0, during=None) -> None:
        self.inner, self.delay, self.during = inner, delay, during
        self.batches: list[int] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def sample_batch(self, values, *args, **kwargs):
        self.batches.append(len(values))
        if self.during is not None:
            hook, self.during = self.during, None
            hook()
        if self.delay:
            time.sleep(self.delay)
        return self.inner.sample_batch(values, *args, **kwargs)


def serve_config(ckpt, out, **over):
    model, tokenizer = ckpt
    values = {"model": str(model), "tokenizer": str(tokenizer), "device": "cpu", "n_samples": 4, "seed": 3,
              "lookback": 120, "horizon": 10, "live_out": str(out), "out": str(out), "time_budget": 600.0}
    values.update(over)
    return build_config(values, {}, script="serve")


def make_loop(cfg, symbols=("QQQ",), clock=None, budget=None, sampler=None):
    """The forecasting loop over a fresh book and hub, the pipelines sharing one (possibly wrapped) engine."""
    from forecast.pipeline import ForecastPipeline

    hub = LiveHub(list(symbols), rth=cfg.rth)
    clock = clock or ManualClock("2025-06-04T15:01:00Z")
    book = BarBook(list(symbols), on_change=lambda s, f: hub.on_bars(s, f, clock.now()))
    base = ForecastPipeline(cfg.replace(symbol=symbols[0]))
    base.load()
    engine = sampler(base.sampler) if sampler else base.sampler
    pipelines = {s: ForecastPipeline(cfg.replace(symbol=s), sampler=engine, calibrator=None) for s in symbols}
    redis = None
    if cfg.redis_url:  # short timeouts and back-off: the tests stop and restart the server
        redis = RedisPublisher(cfg.redis_url, cfg.redis_prefix, hub, timeout_s=0.5, max_backoff_s=0.2)
    outputs = Outputs(cfg.live_out, hub, timestamped=cfg.timestamped_files, redis=redis)
    outputs.preflight(list(symbols))
    loop = ForecastLoop(pipelines, book, clock, outputs, hub, budget_s=budget or cfg.time_budget, rth=cfg.rth,
                        provenance={s: {"source": "test"} for s in symbols}, stop=threading.Event())
    return loop, hub, book, clock, engine


def wait_for(condition, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll until condition() is true; fail the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
