"""Online against walk-forward calibration on a finished baseline backtest of the real QQQ bars. Prints Markdown.

    .venv/bin/python backtest.py --csv $TEST_DATA_DIR/QQQ_60day_1min_polygon__Poloilo16-VWAP.csv --csv-tz UTC \\
        --every 5 --forecasters random_walk,block_bootstrap --out outputs/bt5 --no-plots
    .venv/bin/python bench/online_calibration.py outputs/bt5 [--gammas 0.005,0.01,0.02,0.05]

Besides the stored forecasters it scores "overconfident_0.4x": the random walk's records with every band 0.4 times
as wide around its median (and P(up) as sharp in logit terms). For each forecaster and ACI step gamma:
coverage of the 10-90 band at the horizon's end (raw, walk-forward calibrated, online; on the origins after the
walk-forward warm-up), how many weeks' online coverage lies inside the 95 % range that sampling allows for that
week's count of independent windows (Binomial(n, 0.8)), and the Brier reliability of P(up) walk-forward vs online.
Then a regime break: from the first origin of the middle session on, every realised log-return is doubled (the
volatility doubles at a known minute while the forecasts stay as they were); the table gives the trading minutes
until the trailing coverage of the 80 % band (last ``--window`` origins) is back above ``--recovered``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluation import scoring  # noqa: E402
from evaluation.online import calibrated_columns  # noqa: E402
from evaluation.evaluate import _end, frames_by_forecaster  # noqa: E402
from evaluation.store import RESULTS, ResultStore  # noqa: E402
from evaluation.walkforward import LEVELS  # noqa: E402

LO, HI = LEVELS.index(0.10), LEVELS.index(0.90)


def overconfident(f, factor: float = 0.4):
    """The frame with bands ``factor`` times as wide around the median and P(up) as sharp in logit terms."""
    from dataclasses import replace

    now = f.table["now_close"].to_numpy(float)[:, None, None]
    c = f.centre[:, None, :]
    q = now * np.exp(c + factor * (np.log(f.q / now) - c))
    p = np.clip(f.table["p_up"].to_numpy(float), 1e-3, 1 - 1e-3)
    table = f.table.assign(p_up=1 / (1 + np.exp(-np.log(p / (1 - p)) / factor)))
    return replace(f, name=f"overconfident_{factor}x", table=table, scale=f.scale * factor, q=q)


def regime_break(f, start: int, factor: float = 2.0):
    """Realised log-returns (and P(up)'s outcome, unchanged in sign) of origins from ``start`` on times ``factor``."""
    from dataclasses import replace

    now = f.table["now_close"].to_numpy(float)[:, None]
    realised = f.realised.copy()
    realised[start:] = now[start:] * np.exp(factor * np.log(f.realised[start:] / now[start:]))
    return replace(f, realised=realised)


def inside_end(q: np.ndarray, f) -> np.ndarray:
    hz = f.table["horizon"].to_numpy(int)
    real, lo, hi = _end(f.realised, hz), _end(q[:, LO], hz), _end(q[:, HI], hz)
    ok = np.isfinite(real) & np.isfinite(lo) & np.isfinite(hi)
    return np.where(ok, (real >= lo) & (real <= hi), np.nan)


def weekly(inside: np.ndarray, f, horizon: int) -> tuple[int, int]:
    """(weeks whose online coverage is inside the 95 % sampling range for its independent windows, weeks)."""
    t = f.table
    week = t["origin"].dt.tz_convert("America/New_York").dt.strftime("%G-W%V").to_numpy()
    ok, n = 0, 0
    for w in np.unique(week):
        sel = (week == w) & np.isfinite(inside)
        if sel.sum() < 10:
            continue
        n_ind = scoring.independent_windows(pd.DatetimeIndex(t["origin"][sel]), horizon,
                                            t["session"][sel].to_numpy())["n_independent"]
        lo, hi = stats.binom.ppf([0.025, 0.975], n_ind, 0.8) / n_ind
        ok += int(lo <= np.nanmean(inside[sel]) <= hi)
        n += 1
    return ok, n


def recovery_minutes(inside: np.ndarray, start: int, every: int, window: int, level: float) -> float:
    """Trading minutes from the break until the trailing coverage is back at ``level`` (after first dropping)."""
    x = pd.Series(inside[start:]).rolling(window, min_periods=window).mean().to_numpy()
    below = np.nonzero(x < level)[0]
    if below.size == 0:
        return 0.0
    back = np.nonzero((np.arange(x.size) > below[0]) & (x >= level))[0]
    return float(back[0] * every) if back.size else float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a backtest's --out folder")
    ap.add_argument("--gammas", default="0.005,0.01,0.02,0.05")
    ap.add_argument("--refit-every", type=int, default=50)
    ap.add_argument("--window", type=int, default=48, help="trailing origins for the recovery measure")
    ap.add_argument("--recovered", type=float, default=0.75)
    args = ap.parse_args()
    records = ResultStore(args.results / RESULTS).load()
    horizon = max(int(r["horizon"]) for r in records.values() if "horizon" in r)
    frames = frames_by_forecaster(records, horizon)
    frames["overconfident_0.4x"] = overconfident(frames["random_walk"])
    gammas = [float(g) for g in args.gammas.split(",")]
    every = int(pd.Series(frames["random_walk"].table["origin"]).diff().dt.total_seconds().div(60).mode().iloc[0])
    print("| forecaster | gamma | cov80 raw | cov80 walk-forward | cov80 online | weeks inside 95 % range "
          "| Brier REL walk-forward | Brier REL online | Brier walk-forward | Brier online |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, f in frames.items():
        y = f.table["up"].to_numpy(float)
        for g in gammas:
            c = calibrated_columns(f, horizon, args.refit_every, 500, LEVELS, g)
            warm = np.isfinite(c.q_cal).any(axis=(1, 2))
            cov = [np.nanmean(inside_end(q, f)[warm]) for q in (f.q, c.q_cal, c.q_online)]
            ok, n = weekly(np.where(warm, inside_end(c.q_online, f), np.nan), f, horizon)
            pw = np.isfinite(c.p_cal)
            wf = scoring.brier_decomposition(c.p_cal[pw], y[pw])
            on = scoring.brier_decomposition(c.p_online["p_up"][pw], y[pw])
            print(f"| {name} | {g:g} | {cov[0]:.3f} | {cov[1]:.3f} | {cov[2]:.3f} | {ok} of {n} | "
                  f"{wf['reliability']:.4f} | {on['reliability']:.4f} | {wf['brier']:.4f} | {on['brier']:.4f} |")
    sessions = frames["random_walk"].table["session"].to_numpy()
    middle = sorted(set(sessions))[len(set(sessions)) // 2]
    print(f"\nRegime break: realised log-returns doubled from the first origin of session {middle} on; trading "
          f"minutes until the trailing {args.window}-origin coverage of the 80 % band is back at "
          f"{args.recovered:.2f} (inf: not within the run), and the coverage over the rest of the run.\n")
    print("| forecaster | gamma | walk-forward: minutes | online: minutes | cov80 after break walk-forward "
          "| cov80 after break online |")
    print("|---|---|---|---|---|---|")
    for name, f in frames.items():
        start = int(np.nonzero(f.table["session"].to_numpy() == middle)[0][0])
        fb = regime_break(f, start)
        for g in gammas:
            c = calibrated_columns(fb, horizon, args.refit_every, 500, LEVELS, g)
            wf, on = inside_end(c.q_cal, fb), inside_end(c.q_online, fb)
            mins = [recovery_minutes(x, start, every, args.window, args.recovered) for x in (wf, on)]
            print(f"| {name} | {g:g} | {mins[0]:g} | {mins[1]:g} | {np.nanmean(wf[start:]):.3f} "
                  f"| {np.nanmean(on[start:]):.3f} |")


if __name__ == "__main__":
    main()
