"""The online calibrator (forecast.online) replayed over a backtest: one more calibrated column, scored like the
walk-forward one.

Each origin's forecast is issued with the trackers as they stand after every outcome resolved by that origin (an
outcome of origin t at step h resolves at t + h minutes; its probabilities at t + horizon), applied in resolution
order. The ACI warm start at each origin is the walk-forward band calibrator in force there (standard normal score
quantiles before the first fit); the online Platt maps sit on the walk-forward calibrated probability (raw until
the first fit).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from evaluation.calibration import bands_from_fits, walk_forward_band_fits, walk_forward_probability
from forecast.calibrator import BandCalibrator
from forecast.online import GAMMA, OnlineCalibrator, score_table
from forecast.trust import Recent


def band_tables(n_origins: int, fits: Sequence[tuple[int, int, BandCalibrator]],
                horizon: int) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """The walk-forward score table in force at each origin (None before the first fit)."""
    out: list = [None] * n_origins
    for start, stop, cal in fits:
        t = score_table(cal, horizon)
        for i in range(start, stop):
            out[i] = t
    return out


def replay_online(origins: pd.DatetimeIndex, horizons: np.ndarray, centre: np.ndarray, scale: np.ndarray,
                  now_close: np.ndarray, realised: np.ndarray, levels: Sequence[float],
                  tables: Sequence[tuple[np.ndarray, np.ndarray] | None],
                  probs: dict[str, tuple[np.ndarray, np.ndarray]], gamma: float = GAMMA,
                  ) -> tuple[np.ndarray, dict[str, np.ndarray], OnlineCalibrator]:
    """Online quantiles [O, L, H] and online probabilities per key, from sorted origins.

    probs maps a key to (base probability [O], outcome [O]); realised [O, H] is NaN where unknown."""
    O, H = centre.shape
    cal = OnlineCalibrator(H, tuple(levels), gamma)
    t_ns = pd.DatetimeIndex(origins).as_unit("ns").asi8
    minute = 60 * 10**9
    q = np.full((O, len(cal.levels), H), np.nan)
    p_out = {k: np.full(O, np.nan) for k in probs}
    events: list[tuple[int, int, int, int]] = []  # (resolve time, origin index, step (0 = probabilities), seq)
    for i in range(O):
        while events and events[0][0] <= t_ns[i]:
            _, j, h, _ = heapq.heappop(events)
            if h == 0:
                for k, (p, y) in probs.items():
                    cal.update_prob(k, p[j], y[j])
            else:
                cal.update_band(h, q[j, :, h - 1], realised[j, h - 1])
        grid, table = tables[i] if tables[i] is not None else (None, None)
        q[i] = cal.band_quantiles(centre[i], scale[i], now_close[i], grid, table).T
        for k, (p, _) in probs.items():
            p_out[k][i] = cal.prob(k, p[i]) if np.isfinite(p[i]) else np.nan
        hz = int(horizons[i])
        for h in range(1, hz + 1):
            heapq.heappush(events, (t_ns[i] + h * minute, i, h, len(events)))
        heapq.heappush(events, (t_ns[i] + hz * minute, i, 0, len(events)))
    return q, p_out, cal


def base_probability(p_raw: np.ndarray, p_walk_forward: np.ndarray) -> np.ndarray:
    """What the online Platt map recalibrates: the walk-forward value where one exists, else the raw one."""
    return np.where(np.isfinite(p_walk_forward), p_walk_forward, p_raw)


@dataclass
class Columns:
    """A forecaster's walk-forward calibrated and online columns (probabilities [O], quantiles [O, L, H])."""
    p_cal: np.ndarray
    p_fits: list[dict[str, Any]]
    v_cal: np.ndarray
    q_cal: np.ndarray
    q_online: np.ndarray
    p_online: dict[str, np.ndarray]
    online: OnlineCalibrator
    p_cal_interval: tuple[np.ndarray, np.ndarray]  # the Monte Carlo interval of p_up mapped like p_cal (NaN before)


def path_interval(p: np.ndarray, n_paths: int) -> tuple[np.ndarray, np.ndarray]:
    """The Jeffreys interval (forecast.mc_error) of each p read as k = round(p * n_paths) up-paths of n_paths."""
    from forecast.mc_error import proportion_interval

    lo, hi = np.full(p.shape, np.nan), np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    k = np.rint(np.where(ok, p, 0) * n_paths).astype(int)
    for kk in np.unique(k[ok]):
        sel = ok & (k == kk)
        lo[sel], hi[sel] = proportion_interval(int(kk), n_paths)
    return lo, hi


def calibrated_columns(f: Any, horizon: int, refit_every: int, isotonic_min: int, levels: Sequence[float],
                       gamma: float = GAMMA, n_paths: int = 100) -> Columns:
    """Walk-forward and online calibration of one forecaster's frame (evaluation.report.ForecasterFrame): what
    the report scores and what bench/online_calibration.py measures."""
    t = f.table
    origins = pd.DatetimeIndex(t["origin"])
    p, y = t["p_up"].to_numpy(float), t["up"].to_numpy(float)
    pv, yv = t["p_hit_vwap"].to_numpy(float), t["hit_vwap"].to_numpy(float)
    lo, hi = path_interval(p, n_paths)
    p_cal, p_fits = walk_forward_probability(origins, p, y, horizon, refit_every, isotonic_min, also=(lo, hi))
    lo[~np.isfinite(p_cal)] = np.nan
    hi[~np.isfinite(p_cal)] = np.nan
    v_cal, _ = walk_forward_probability(origins, pv, yv, horizon, refit_every, isotonic_min)
    now = t["now_close"].to_numpy(float)
    fits = walk_forward_band_fits(origins, f.centre, f.scale, now, f.realised, horizon, refit_every)
    q_cal = bands_from_fits(fits, f.centre, f.scale, now, np.array(levels))
    q_on, p_on, cal = replay_online(origins, t["horizon"].to_numpy(int), f.centre, f.scale, now, f.realised, levels,
                                    band_tables(len(t), fits, f.centre.shape[-1]),
                                    {"p_up": (base_probability(p, p_cal), y),
                                     "p_hit_vwap": (base_probability(pv, v_cal), yv)}, gamma)
    return Columns(p_cal, p_fits, v_cal, q_cal, q_on, p_on, cal, (lo, hi))


# ---------------------------------------------------------------------------------------- the cron CLI's run log

STATE_NAME = "online_{symbol}.json"


def load_state(path: Path, horizon: int, levels: tuple[float, ...]) -> OnlineCalibrator:
    """The saved online state, or a fresh one (also when it was kept for another horizon or levels); a file
    that is not an online state is a SettingsError: it is not ours to replace."""
    from forecast.errors import SettingsError

    if path.exists():
        try:
            state = OnlineCalibrator.load(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SettingsError(f"{path} is not an online calibration state ({exc}); move it aside") from None
        if state.matches(horizon, levels):
            return state
    return OnlineCalibrator(horizon, levels)


def recent_outcomes(state: OnlineCalibrator, horizon: int, nominal: float) -> Recent | None:
    """trust.status's input from the outcomes the state remembers, with their count of independent windows."""
    from evaluation.scoring import independent_windows

    rows = [r for r in state.recent if r.get("up") is not None]
    if not rows:
        return None
    num = lambda k: np.array([np.nan if r.get(k) is None else r[k] for r in rows], float)  # noqa: E731
    n_ind = independent_windows(pd.DatetimeIndex(pd.to_datetime([r["origin"] for r in rows], utc=True)), horizon,
                                np.array([r["session"] for r in rows]))["n_independent"]
    return Recent(num("inside"), num("p_up"), num("up"), n_ind, nominal)


def update_from_run_log(state: OnlineCalibrator, log: pd.DataFrame, bars: pd.DataFrame, pipeline: Any,
                        now: pd.Timestamp) -> int:
    """Apply the outcomes of logged runs resolved by ``now`` and not yet applied, in resolution order: the end
    step's band trackers (when the log holds the online p10/p50/p90 ends and those are the state's levels) and
    the online Platt maps (on the walk-forward value the run published, its raw one without). -> how many."""
    from evaluation.calibration import run_log_outcomes

    h = state.horizon
    log = log[(log["horizon_min"] == h) & (log["symbol"] == pipeline.cfg.symbol)].copy()
    asof = pd.to_datetime(log["asof"], utc=True)
    done = pd.Timestamp(state.last_resolved) if state.last_resolved else None
    resolve = asof.dt.floor("min") + pd.Timedelta(minutes=h)
    keep = (resolve <= now) & (asof >= bars.index[0]) & (True if done is None else resolve > done)
    if not keep.any():
        return 0
    rows = run_log_outcomes(log[keep], bars, pipeline)
    rows["resolve"] = rows["origin"] + pd.Timedelta(minutes=h)
    rows = rows[np.isfinite(rows["realised_close"]) & (rows["resolve"] <= now)].sort_values("resolve", kind="stable")
    col = lambda k: pd.to_numeric(rows[k], errors="coerce").to_numpy(float) if k in rows else np.full(len(rows), np.nan)  # noqa: E731
    ends = np.stack([col(f"{k}_end_online") for k in ("p10", "p50", "p90")], axis=1)
    bands_ok = np.allclose(state.levels, (0.1, 0.5, 0.9))
    p_cal, p_raw, v_raw = col("p_up_cal"), col("p_up"), col("p_hit_vwap")
    cal = pipeline.calibrator
    n = 0
    for i, (_, r) in enumerate(rows.iterrows()):
        if bands_ok and np.isfinite(ends[i]).all():
            state.update_band(h, ends[i], float(r["realised_close"]))
        state.update_prob("p_up", p_cal[i] if np.isfinite(p_cal[i]) else p_raw[i], float(r["up"]))
        v = float(cal.apply_p_hit_vwap(v_raw[i])) if cal is not None and np.isfinite(v_raw[i]) else v_raw[i]
        state.update_prob("p_hit_vwap", v, float(r["hit_vwap"]))
        inside = float(ends[i, 0] <= r["realised_close"] <= ends[i, 2]) if np.isfinite(ends[i]).all() else None
        shown = next((x for x in (col("p_up_online")[i], p_cal[i], p_raw[i]) if np.isfinite(x)), None)
        session = r["origin"].tz_convert("America/New_York").date().isoformat()
        state.remember(r["origin"].isoformat(), session, inside, shown, float(r["up"]))
        state.last_resolved = r["resolve"].isoformat()
        n += 1
    return n


def cli_online(out_dir: Path, symbol: str, pipeline: Any, bars: pd.DataFrame,
               now: pd.Timestamp) -> tuple[OnlineCalibrator, Path, int]:
    """The cron CLI's step before each forecast: load the online state, learn the outcomes of its run log resolved
    by now, and hand it (and the recent outcomes for trust) to the pipeline. -> (state, its file, outcomes learnt):
    the caller saves it once the run's files are published, so a failed run writes nothing (its successor learns
    the same outcomes again: ``last_resolved`` did not move on disk)."""
    from forecast.runlog import read_run_log, run_log_path

    cfg = pipeline.cfg
    levels = tuple(q / 100 for q in cfg.percentiles)
    path = Path(out_dir) / STATE_NAME.format(symbol=symbol)
    state = load_state(path, cfg.horizon, levels)
    log_path = run_log_path(out_dir, symbol)
    n = 0
    if log_path.exists() and len(bars):
        n = update_from_run_log(state, read_run_log(log_path), bars, pipeline, now)
    pipeline.online = state
    pipeline.recent = recent_outcomes(state, cfg.horizon, levels[-1] - levels[0])
    return state, path, n
