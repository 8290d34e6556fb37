"""The forecast CLI on the pinned real checkpoint over a replay of minute bars: the summary a trader reads is
finite and coherent (test_real_weights runs it on the real weights, the machinery tests on stand-in weights)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from support import real_weights as rw


def minute_bars(path) -> pd.Timestamp:
    """Three regular sessions of 1-minute bars of a random walk near $500 as a CSV; -> a replay instant."""
    rng = np.random.default_rng(23)
    frames, price = [], 500.0
    for day in ("2025-06-02", "2025-06-03", "2025-06-04"):
        idx = pd.date_range(f"{day}T13:30Z", f"{day}T19:59Z", freq="min")
        close = price * np.exp(np.cumsum(rng.normal(0, 4e-4, len(idx))))
        open_ = np.r_[price, close[:-1]]
        wick = np.abs(rng.normal(0, 2e-4, len(idx))) * close
        frames.append(pd.DataFrame({"timestamp": idx.strftime("%Y-%m-%dT%H:%M:%SZ"), "open": open_,
                                    "high": np.maximum(open_, close) + wick, "low": np.minimum(open_, close) - wick,
                                    "close": close, "volume": rng.integers(50_000, 150_000, len(idx)).astype(float)}))
        price = close[-1]
    pd.concat(frames, ignore_index=True).to_csv(path, index=False)
    return pd.Timestamp("2025-06-04T15:00:00Z")


def check_cli_forecast(engine_device: str, tmp_path: Path) -> None:
    """The forecast CLI on the real default checkpoint (pinned) over a replay of minute bars: the summary a trader
    reads is finite and coherent."""
    import cli_kronos_prob_qqq as cli

    bars = tmp_path / "bars.csv"
    asof = minute_bars(bars)
    out = tmp_path / "out"
    code = cli.main(["--source", "csv", "--csv", str(bars), "--asof", asof.isoformat(), "--out", str(out),
                     "--model", rw.MODEL_REPO, "--model-revision", rw.MODEL_REVISION,
                     "--tokenizer", rw.TOKENIZER_REPO, "--tokenizer-revision", rw.TOKENIZER_REVISION,
                     "--device", engine_device, "--seed", "23", "--n-samples", "100", "--time-budget", "900", "-q"])
    assert code == 0
    summary = json.loads((out / "pred_summary_QQQ_latest.json").read_text())
    h = summary["horizon_min"]
    assert h == 30 and summary["n_samples"] == 100
    assert summary["model"]["model_revision"] == rw.MODEL_REVISION
    assert summary["model"]["tokenizer_revision"] == rw.TOKENIZER_REVISION
    s = summary["summary"]
    numbers = list(_numbers(s))
    assert numbers and all(math.isfinite(v) for v in numbers), "non-finite number in the summary"
    for key, value in s.items():
        if key.startswith("p_") and not key.endswith("_ci") and value is not None:
            assert 0.0 <= value <= 1.0, f"{key} = {value} is not a probability"
            lo, hi = s[f"{key}_ci"]  # its Monte Carlo interval holds it and stays in [0, 1]
            assert 0.0 <= lo <= value <= hi <= 1.0, f"{key} = {value} outside its interval [{lo}, {hi}]"
    pct = s["percentiles"]
    levels = sorted(pct, key=lambda k: float(k[1:]))
    bands = np.array([pct[k] for k in levels], dtype=float)  # [levels, minutes]
    assert bands.shape == (len(levels), h) and (np.diff(bands, axis=0) >= 0).all(), "percentiles out of order"
    assert bands[0, -1] < bands[-1, -1], "no spread at the horizon: the paths are all alike"
    stamp = asof.strftime("%Y%m%dT%H%M%SZ")
    paths, highs, lows = (pd.read_csv(out / f"{kind}_QQQ_{stamp}.csv", index_col=0).to_numpy(float)
                          for kind in ("paths", "paths_high", "paths_low"))
    for p in (paths, highs, lows):
        assert p.shape == (100, h) and np.isfinite(p).all() and (p > 0).all()
    assert (highs >= paths - 1e-9).all() and (lows <= paths + 1e-9).all()
    # a forecast of the next 30 minutes stays near the last price: a wild path means broken weights or inputs
    assert np.abs(np.log(paths / summary["now_close"])).max() < 0.2


def _numbers(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _numbers(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _numbers(v)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield float(tree)
