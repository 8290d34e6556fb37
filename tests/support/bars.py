"""Synthetic minute bars and the CLI's common arguments, shared by the CLI, live and bad-input tests."""
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]  # the repository
SESSIONS = ("2025-06-02", "2025-06-03", "2025-06-04")  # Mon..Wed, full days, EDT (13:30Z..20:00Z)


def synthetic_bars(sessions=SESSIONS, seed=0, price=500.0) -> pd.DataFrame:
    """RTH 1-minute bars of a random walk, UTC start labels, like a file the user would replay."""
    rng = np.random.default_rng(seed)
    frames = []
    for day in sessions:
        idx = pd.date_range(f"{day}T13:30Z", f"{day}T19:59Z", freq="min")
        close = price * np.exp(np.cumsum(rng.normal(0, 4e-4, len(idx))))
        open_ = np.r_[price, close[:-1]]
        spread = np.abs(rng.normal(0, 2e-4, len(idx))) * close
        frames.append(pd.DataFrame({
            "timestamp": idx.strftime("%Y-%m-%dT%H:%M:%SZ"), "open": open_, "high": np.maximum(open_, close) + spread,
            "low": np.minimum(open_, close) - spread, "close": close,
            "volume": rng.integers(50_000, 150_000, len(idx)).astype(float)}))
        price = close[-1]
    return pd.concat(frames, ignore_index=True)


# The production time budget (50 s) is a wall-clock limit; a loaded CI machine must not turn it into a failure.
TIMING_FREE = ("--time-budget", "900")


def args_for(ckpt, bars, out, *extra):
    model, tokenizer = ckpt
    return ["--source", "csv", "--csv", str(bars), "--model", str(model), "--tokenizer", str(tokenizer),
            "--out", str(out), "--device", "cpu", "-q", *TIMING_FREE, *map(str, extra)]


# Fake Alpaca keys: the tests check that the secret is never printed.
KEYS = {"ALPACA_KEY_ID": "AKFAKE0001", "ALPACA_SECRET_KEY": "fake-secret-do-not-print"}
