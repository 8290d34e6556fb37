"""Forecasts for the web/hub tests: real bars, the pipeline's own context and summary, synthetic paths.

The summary goes through ForecastPipeline.finish (the code every entry point uses) with paths drawn here instead
of by Kronos, then through JSON as the CLI writes it; no model is needed."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from app.config import build_config
from forecast.calibrator import Calibrator, ProbabilityCalibrator
from forecast.pipeline import Context, ForecastPipeline
from marketdata.files import read_bars_file

QQQ_FILE = "QQQ_60day_1min_polygon__Poloilo16-VWAP.csv"
STUB_ENGINE = SimpleNamespace(model_revision=None, tokenizer_revision=None, device="cpu", max_context=512)


@lru_cache(maxsize=1)
def qqq_bars(data_dir: str) -> pd.DataFrame:
    return read_bars_file(Path(data_dir) / QQQ_FILE)


def pipeline(horizon: int = 10, n_samples: int = 40, calibrated: bool = False) -> ForecastPipeline:
    cfg = build_config({}, {"lookback": 120, "n_samples": n_samples, "horizon": horizon})
    # a hand-set Platt map (not fitted): the page must show whatever the summary's calibrated block says
    cal = Calibrator(horizon_min=horizon, p_up=ProbabilityCalibrator("platt", {"a": 0.6, "b": 0.2}, n=100)) \
        if calibrated else None
    return ForecastPipeline(cfg, sampler=STUB_ENGINE, calibrator=cal)


def synthetic_forecast(pipe: ForecastPipeline, bars: pd.DataFrame, now: pd.Timestamp, *, seed: int = 0,
                       drift: float = 0.0) -> tuple[dict, np.ndarray, Context]:
    """(summary JSON as the CLI writes it, close paths [N, H], the pipeline's context) at ``now``."""
    ctx = pipe.prepare(bars[bars.index < now], now)
    n, h = pipe.cfg.n_samples, len(ctx.times)
    rng = np.random.default_rng(seed)
    close = ctx.now_close * np.exp(np.cumsum(rng.normal(drift, 6e-4, (n, h)), axis=1))
    raw = np.stack([close, close * 1.0004, close * 0.9996, close, np.full_like(close, 2e4),
                    np.full_like(close, 1e7)], axis=2)
    fc = pipe.finish(ctx, raw, market_open=True)
    summary = json.loads(json.dumps(fc.summary, indent=2))
    return summary, fc.paths[:, :, 3], ctx


class ServerThread:
    """The app on uvicorn in a thread, on a free loopback port (a real HTTP server, as the service runs it)."""

    def __init__(self, app) -> None:
        import socket
        import threading

        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ServerThread":
        import time

        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
