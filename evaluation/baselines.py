"""Baseline path forecasters that share the Kronos sampler's output shape, for side-by-side backtests.

Every forecaster sees only ``history`` (bars already cut at the origin by the caller) and the start times of the
bars to simulate. Paths are [N, H, 6] = open, high, low, close, volume, amount with open = previous close,
high / low = max / min of open and close, volume = history's mean volume at that time of day and
amount = volume * mean(open, high, low, close) (the convention the Kronos sampler uses for a missing amount).

Returns are 1-minute log returns between consecutive bars of the same New York session; the overnight return is
never used. Time of day is the New York wall-clock minute, so the profile follows daylight-saving changes.
"""
from __future__ import annotations

import math
import warnings
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

NY = "America/New_York"
PROFILE_HALF_WIDTH = 7  # minutes either side when smoothing the time-of-day variance profile
VOL_WINDOW = 390  # returns (one session) behind the current volatility level


@runtime_checkable
class PathForecaster(Protocol):
    name: str

    def sample(self, history: pd.DataFrame, future_times: pd.DatetimeIndex, n_paths: int,
               rng: np.random.Generator) -> np.ndarray:  # [N, H, 6]
        ...


def minute_of_day(times: pd.DatetimeIndex) -> np.ndarray:
    ny = pd.DatetimeIndex(times).tz_convert(NY)
    return (ny.hour * 60 + ny.minute).to_numpy()


def session_returns(history: pd.DataFrame) -> pd.DataFrame:
    """Intraday log returns with their New York minute of day and session date (first bar of a day dropped)."""
    ny = history.index.tz_convert(NY)
    close = history["close"].to_numpy(float)
    day = np.asarray(ny.date)
    r = np.diff(np.log(close))
    same = day[1:] == day[:-1]
    return pd.DataFrame({"r": r[same], "tod": minute_of_day(history.index)[1:][same], "day": day[1:][same]})


def variance_profile(rets: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed mean squared return by minute of day: (minutes lo..hi, variances); gaps interpolated."""
    tod = rets["tod"].to_numpy()
    if tod.size == 0:
        raise ValueError("history holds no intraday returns")
    lo = int(tod.min())
    count = np.bincount(tod - lo).astype(float)
    total = np.bincount(tod - lo, weights=rets["r"].to_numpy() ** 2)
    # Centred moving average of the sums and counts: minutes with fewer samples weigh less.
    kernel = np.ones(2 * PROFILE_HALF_WIDTH + 1)
    count_s = np.convolve(count, kernel, mode="same")
    total_s = np.convolve(total, kernel, mode="same")
    grid = np.arange(lo, lo + count.size)
    seen = count_s > 0
    var = np.interp(grid, grid[seen], total_s[seen] / count_s[seen])
    floor = max(0.05 * float(var.mean()), 1e-14)
    return grid, np.maximum(var, floor)


def _profile_at(minutes: np.ndarray, grid: np.ndarray, var: np.ndarray) -> np.ndarray:
    return np.interp(minutes, grid, var)  # flat beyond the ends of the profile


def volume_by_time(history: pd.DataFrame, future_times: pd.DatetimeIndex) -> np.ndarray:
    """Mean historical volume at each future bar's minute of day (overall mean where that minute is unseen)."""
    vol = pd.Series(history["volume"].to_numpy(float), index=minute_of_day(history.index))
    by = vol.groupby(level=0).mean()
    return by.reindex(minute_of_day(future_times)).fillna(float(vol.mean())).to_numpy()


def assemble_paths(now_close: float, log_increments: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """[N, H] log increments -> [N, H, 6] consistent OHLCV + amount bars."""
    close = now_close * np.exp(np.cumsum(log_increments, axis=1))
    open_ = np.concatenate([np.full((close.shape[0], 1), now_close), close[:, :-1]], axis=1)
    high, low = np.maximum(open_, close), np.minimum(open_, close)
    vol = np.broadcast_to(volume, close.shape)
    amount = vol * (open_ + high + low + close) / 4.0
    return np.stack([open_, high, low, close, vol, amount], axis=-1)


def _check(history: pd.DataFrame, future_times: pd.DatetimeIndex) -> None:
    if len(history) < 2:
        raise ValueError("history needs at least two bars")
    if len(future_times) and future_times[0] <= history.index[-1]:
        raise ValueError("future_times must start after the last history bar")


class RandomWalk:
    """Zero-drift Gaussian random walk in log price; sigma = current deseasonalised vol x time-of-day profile.

    The current level is the RMS of the last ``vol_window`` returns divided by the profile at their minute."""

    def __init__(self, vol_window: int = VOL_WINDOW, vol_mult: float = 1.0, name: str = "random_walk") -> None:
        self.vol_window, self.vol_mult, self.name = vol_window, vol_mult, name

    def sigmas(self, history: pd.DataFrame, future_times: pd.DatetimeIndex) -> np.ndarray:
        rets = session_returns(history)
        grid, var = variance_profile(rets)
        recent = rets.iloc[-self.vol_window:]
        level = math.sqrt(float(np.mean(recent["r"].to_numpy() ** 2 / _profile_at(recent["tod"].to_numpy(), grid, var))))
        return self.vol_mult * level * np.sqrt(_profile_at(minute_of_day(future_times), grid, var))

    def sample(self, history: pd.DataFrame, future_times: pd.DatetimeIndex, n_paths: int,
               rng: np.random.Generator) -> np.ndarray:
        _check(history, future_times)
        sig = self.sigmas(history, future_times)
        inc = rng.standard_normal((n_paths, len(future_times))) * sig
        return assemble_paths(float(history["close"].iloc[-1]), inc, volume_by_time(history, future_times))


class BlockBootstrap:
    """Blocks of ``block`` consecutive same-time-of-day 1-minute returns, each block from a random earlier session.

    Sessions before the origin's own session supply the returns (a minute missing in that session counts as 0);
    with no earlier session it falls back to drawing from all intraday returns seen so far. ``demean`` removes
    the pool's average return first: with three sessions of history the earlier days' trend would otherwise
    become every path's drift. Each block starts at the same minute of day shifted by a random offset of at
    most ``jitter`` minutes (kept inside the minutes seen), so two earlier sessions still give many distinct
    paths instead of 2 ** n_blocks."""

    def __init__(self, block: int = 5, demean: bool = True, jitter: int = 15, name: str = "block_bootstrap") -> None:
        self.block, self.demean, self.jitter, self.name = block, demean, jitter, name

    def sample(self, history: pd.DataFrame, future_times: pd.DatetimeIndex, n_paths: int,
               rng: np.random.Generator) -> np.ndarray:
        _check(history, future_times)
        rets = session_returns(history)
        today = history.index[-1].tz_convert(NY).date()
        past = rets[rets["day"] != today]
        horizon = len(future_times)
        if past.empty:
            pool = rets["r"].to_numpy()
            pool = pool - pool.mean() if self.demean and pool.size else pool
            inc = rng.choice(pool, size=(n_paths, horizon)) if pool.size else np.zeros((n_paths, horizon))
        else:
            days, row = np.unique(past["day"].to_numpy(), return_inverse=True)
            r = past["r"].to_numpy()
            table = np.zeros((days.size, 24 * 60))
            table[row, past["tod"].to_numpy()] = r - r.mean() if self.demean else r
            n_blocks = -(-horizon // self.block)
            pick = rng.integers(0, table.shape[0], size=(n_paths, n_blocks))
            shift = rng.integers(-self.jitter, self.jitter + 1, size=(n_paths, n_blocks))
            rows = np.repeat(pick, self.block, axis=1)[:, :horizon]
            cols = minute_of_day(future_times)[None, :] + np.repeat(shift, self.block, axis=1)[:, :horizon]
            seen = past["tod"].to_numpy()
            inc = table[rows, np.clip(cols, seen.min(), seen.max())]
        return assemble_paths(float(history["close"].iloc[-1]), inc, volume_by_time(history, future_times))


try:  # GARCH is offered only where the optional `arch` package is importable
    from arch import arch_model
except ImportError:  # pragma: no cover - arch is in requirements, but stay usable without it
    arch_model = None


class Garch:
    """GARCH(1,1), zero mean, normal shocks, on deseasonalised returns, re-seasonalised for the future minutes.

    Fitted on the last ``fit_window`` returns at every call; simulated with our own RNG so runs are
    reproducible. If the fit fails it degrades to the random walk's volatility (recorded in ``last_status``)."""

    SCALE = 100.0  # the optimiser is happier with unit-ish numbers

    def __init__(self, fit_window: int = 1170, name: str = "garch") -> None:
        if arch_model is None:
            raise ImportError("the arch package is not installed")
        self.fit_window, self.name, self.last_status = fit_window, name, ""

    def sample(self, history: pd.DataFrame, future_times: pd.DatetimeIndex, n_paths: int,
               rng: np.random.Generator) -> np.ndarray:
        _check(history, future_times)
        rets = session_returns(history).iloc[-self.fit_window:]
        grid, var = variance_profile(session_returns(history))
        x = rets["r"].to_numpy() / np.sqrt(_profile_at(rets["tod"].to_numpy(), grid, var))
        future_sd = np.sqrt(_profile_at(minute_of_day(future_times), grid, var))
        z = rng.standard_normal((n_paths, len(future_times)))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = arch_model(x * self.SCALE, mean="Zero", vol="GARCH", p=1, q=1, rescale=False).fit(
                    disp="off", show_warning=False)
            omega, alpha, beta = (float(res.params[k]) for k in ("omega", "alpha[1]", "beta[1]"))
            h = omega + alpha * float(res.resid[-1]) ** 2 + beta * float(res.conditional_volatility[-1]) ** 2
            if not (np.isfinite(h) and h > 0 and alpha + beta < 1.0):
                raise ValueError(f"non-stationary fit alpha+beta={alpha + beta:.3f}")
            eps = np.empty_like(z)
            h = np.full(n_paths, h)
            for t in range(z.shape[1]):
                eps[:, t] = np.sqrt(h) * z[:, t]
                h = omega + alpha * eps[:, t] ** 2 + beta * h
            inc = eps / self.SCALE * future_sd
            self.last_status = "ok"
        except (ValueError, np.linalg.LinAlgError, RuntimeError) as exc:
            self.last_status = f"fallback: {exc}"
            level = math.sqrt(float(np.mean(x[-VOL_WINDOW:] ** 2)))
            inc = z * level * future_sd
        return assemble_paths(float(history["close"].iloc[-1]), inc, volume_by_time(history, future_times))
