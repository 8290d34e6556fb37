"""Walk-forward backtest engine: origins, the per-origin loop with a resumable results store, and the report.

One run
    Origins every ``every`` minutes inside each session's regular hours (the first one ``every`` minutes after
    the open). Each origin is a replay of the live run at that instant: ``prepare_bars`` sees only the bars
    that started before the origin (the frame is cut there first), ``plan_horizon`` picks the forecast
    minutes (a window that would cross the close is truncated or skipped, as ``near_close`` says), and every
    forecaster gets the same prepared history. Outcomes come from the bars of the forecast minutes, filled
    like ``prepare_bars`` fills (a minute without a bar keeps the previous close).

Results store
    ``results.jsonl``: one JSON object per (forecaster, origin), appended a batch at a time with a single
    write on an O_APPEND descriptor and fsync'd. On load, duplicates are dropped (first wins) and a torn
    final line (a crash mid-write) is cut off, so an interrupted run resumes where it stopped and never
    counts a result twice. ``run.json`` pins the settings: resuming with other settings is refused.
    A record keeps what the report needs instead of the paths: the live metrics, per-step median and scale
    of the log-return ensemble, quantiles at ``LEVELS``, PIT and fair CRPS per step, and the outcome.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from market import calendar as mcal
from market import scoring
from market.artifacts import atomic_write_json, atomic_write_text
from market.calibration import (BandCalibrator, Calibrator, ProbabilityCalibrator, ensemble_centre_scale,
                                walk_forward_bands_from_summary, walk_forward_probability)
from market.horizon import model_time_index, plan_horizon
from market.metrics import compute_metrics, p_hit_vwap, repair_paths, session_bars_of_last_day
from market.operation import Skipped
from market.prepare import prepare_bars

LEVELS = (0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95)
BANDS = scoring.DEFAULT_BANDS
SKIP = "_skipped"  # pseudo-forecaster name of the records that say why an origin was skipped
RESULTS = "results.jsonl"
RUN_FILE = "run.json"
DIAGRAM_MIN_BIN = 20  # reliability-diagram bins with fewer outcomes are left out of the chart (kept in the JSON)


class RunMismatch(ValueError):
    """The output folder holds results of a run with other settings, data or forecaster settings."""


@dataclass(frozen=True)
class Settings:
    """Everything that decides a run's results (the report reads its own knobs from here too)."""
    symbol: str = "QQQ"
    horizon: int = 30
    every: int = 10
    start: str | None = None  # first session (New York date), inclusive
    end: str | None = None  # last session, inclusive
    n_paths: int = 100
    seed: int = 0
    days: int = 3
    rth: bool = True
    near_close: str = "truncate"
    min_horizon: int = 5
    min_history: int = 60  # origins with fewer prepared bars are skipped (a Kronos lookback raises it)
    recent_window: int = 30
    max_recent_filled: int = 10
    mid_window: int = 20
    mid_kind: str = "sma"
    vol_window: int = 60
    vwap_mode: str = "moving"
    batch: int = 16
    refit_every: int = 50
    isotonic_min: int = 500
    rule_p_up: float = 0.60
    rule_z: float = -1.0  # "stretched": price at least this many std below the 20-bar mid band
    rule_stop_bp: float = 25.0
    fee_bp: float = 0.5  # per side
    slippage_bp: float = 1.0  # per side

    def fingerprint(self) -> dict[str, Any]:
        # Report-only knobs may change between a run and its resume; these decide the stored records.
        keep = ("symbol", "horizon", "every", "start", "end", "n_paths", "seed", "days", "rth", "near_close",
                "min_horizon", "min_history", "recent_window", "max_recent_filled", "mid_window", "mid_kind",
                "vol_window", "vwap_mode", "batch")
        return {k: getattr(self, k) for k in keep}


# ------------------------------------------------------------------------------------------------ origins

def sessions_in(frame: pd.DataFrame, start: str | None, end: str | None, rth: bool = True) -> list[pd.Timestamp]:
    """XNYS sessions between start and end (default: the frame's span) that hold at least one bar."""
    if frame.empty:
        return []
    first = mcal.ny_date(frame.index[0]) if start is None else mcal.to_session_label(start)
    last = mcal.ny_date(frame.index[-1]) if end is None else mcal.to_session_label(end)
    cal = mcal.xnys()
    labels = cal.sessions_in_range(max(first, cal.first_session), min(last, cal.last_session))
    out = []
    for s in labels:
        lo, hi = mcal.session_window(s, rth)
        i, j = frame.index.searchsorted(lo), frame.index.searchsorted(hi)
        if j > i:
            out.append(pd.Timestamp(s))
    return out


def make_origins(frame: pd.DataFrame, settings: Settings) -> pd.DatetimeIndex:
    """Every ``every`` minutes from open + every up to (not including) the close, in each session."""
    origins: list[pd.Timestamp] = []
    step = pd.Timedelta(minutes=settings.every)
    for s in sessions_in(frame, settings.start, settings.end, settings.rth):
        lo, hi = mcal.session_window(s, settings.rth)
        t = lo + step
        while t < hi:
            origins.append(t)
            t += step
    return pd.DatetimeIndex(origins, name="origin").as_unit("ns")


@dataclass
class Case:
    """One origin, replayed: the history the live run would have had, its forecast minutes and the outcome."""
    origin: pd.Timestamp
    session: str
    history: pd.DataFrame | None = None
    times: pd.DatetimeIndex | None = None
    truncated: bool = False
    now_close: float = math.nan
    realised: pd.DataFrame | None = None  # filled bars of the forecast minutes; None while unresolved
    skip: str | None = None

    @property
    def key(self) -> str:
        return self.origin.isoformat()


def _fill_window(frame: pd.DataFrame, times: pd.DatetimeIndex, prev_close: float) -> pd.DataFrame:
    """The bars of the forecast minutes; a minute without a bar keeps the previous close, volume 0."""
    out = frame.reindex(times)
    missing = out["close"].isna().to_numpy()
    close = out["close"].ffill().fillna(prev_close)
    for col in ("open", "high", "low", "close"):
        out[col] = np.where(missing, close, out[col])
    out["volume"] = out["volume"].fillna(0.0)
    return out[["open", "high", "low", "close", "volume"]]


def prepare_case(frame: pd.DataFrame, origin: pd.Timestamp, settings: Settings) -> Case:
    """Replay the live run's data steps at ``origin``; the frame is cut at the origin before anything else."""
    session = mcal.ny_date(origin).date().isoformat()
    case = Case(origin=origin, session=session)
    first = mcal.recent_sessions(origin, settings.days, settings.rth)
    lo = frame.index.searchsorted(mcal.session_window(first[0], settings.rth)[0]) if first else 0
    past = frame.iloc[lo:frame.index.searchsorted(origin, side="left")]  # bars starting before the origin only
    bars, info = prepare_bars(past, origin, days=settings.days, rth=settings.rth,
                              max_recent_filled=settings.max_recent_filled, recent_window=settings.recent_window)
    if info.skip_reason:
        case.skip = info.skip_reason
        return case
    if len(bars) < settings.min_history:
        case.skip = f"only {len(bars)} bars of history, fewer than {settings.min_history}"
        return case
    try:
        plan = plan_horizon(bars.index[-1], settings.horizon, settings.rth, settings.near_close,
                            settings.min_horizon)
    except Skipped as exc:
        case.skip = str(exc)
        return case
    if plan.next_session:
        case.skip = "the last bar closed its session"
        return case
    case.history, case.times, case.truncated = bars, plan.times, plan.truncated
    case.now_close = float(bars["close"].iloc[-1])
    if len(frame) and frame.index[-1] >= plan.times[-1]:
        case.realised = _fill_window(frame, plan.times, case.now_close)
    return case


# ------------------------------------------------------------------------------------------------ forecasters

class KronosForecaster:
    """Kronos through ``KronosPathSampler`` with one set of sampling settings; batches origins."""

    def __init__(self, name: str, sampler: Any, lookback: int = 480, time_label: str = "start",
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 0.9, spec: dict | None = None) -> None:
        self.name, self.sampler, self.lookback, self.time_label = name, sampler, lookback, time_label
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.spec = dict(spec or {})

    def describe(self) -> dict[str, Any]:
        return {"kind": "kronos", "lookback": self.lookback, "time_label": self.time_label,
                "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p, **self.spec}

    def sample(self, history: pd.DataFrame, future_times: pd.DatetimeIndex, n_paths: int,
               rng: np.random.Generator) -> np.ndarray:
        return self.sample_batch([history], [future_times], n_paths, rng)[0]

    def sample_batch(self, histories: Sequence[pd.DataFrame], future_times: Sequence[pd.DatetimeIndex],
                     n_paths: int, rng: np.random.Generator) -> np.ndarray:
        contexts = [h.iloc[-self.lookback:] for h in histories]
        return self.sampler.sample_batch(
            contexts, [model_time_index(c.index, self.time_label) for c in contexts],
            [model_time_index(t, self.time_label) for t in future_times], n_paths=n_paths,
            temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, seed=int(rng.integers(2**31 - 1)))


def describe(forecaster: Any) -> dict[str, Any]:
    """What identifies a forecaster's settings (stored in run.json to refuse mixing settings under one name)."""
    if hasattr(forecaster, "describe"):
        return dict(forecaster.describe())
    simple = {k: v for k, v in vars(forecaster).items()
              if isinstance(v, (int, float, str, bool)) and k != "name" and not k.startswith("last_")}  # run state
    return {"kind": type(forecaster).__name__, **simple}


def _rng(seed: int, name: str, origin: pd.Timestamp) -> np.random.Generator:
    # One stream per (forecaster, origin): results do not depend on batching, order or resumption.
    return np.random.default_rng([seed, zlib.crc32(name.encode()), int(origin.value // 60_000_000_000)])


def sample_cases(forecaster: Any, cases: Sequence[Case], settings: Settings) -> list[np.ndarray]:
    """Paths [N, h, 6] for each case; forecasters with ``sample_batch`` get one call per horizon length."""
    out: list[np.ndarray | None] = [None] * len(cases)
    if hasattr(forecaster, "sample_batch"):
        by_len: dict[int, list[int]] = {}
        for i, c in enumerate(cases):
            by_len.setdefault(len(c.times), []).append(i)
        for idx in by_len.values():
            paths = forecaster.sample_batch([cases[i].history for i in idx], [cases[i].times for i in idx],
                                            settings.n_paths, _rng(settings.seed, forecaster.name, cases[idx[0]].origin))
            for j, i in enumerate(idx):
                out[i] = paths[j]
    else:
        for i, c in enumerate(cases):
            out[i] = forecaster.sample(c.history, c.times, settings.n_paths,
                                       _rng(settings.seed, forecaster.name, c.origin))
    return out  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------ records

def _num(x: Any) -> float | None:
    x = float(x)
    return float(f"{x:.9g}") if math.isfinite(x) else None


def _nums(a: np.ndarray) -> list:
    return [_num(v) for v in np.asarray(a, dtype=float).ravel()] if np.ndim(a) <= 1 else [_nums(r) for r in a]


def score_case(name: str, case: Case, paths: np.ndarray, settings: Settings) -> dict[str, Any]:
    """The stored record of one forecaster at one origin."""
    h = len(case.times)
    paths = np.asarray(paths, dtype=float)
    if paths.shape[:2] != (settings.n_paths, h) or paths.shape[2] != 6:
        raise ValueError(f"{name} returned paths of shape {paths.shape}, expected ({settings.n_paths}, {h}, 6)")
    m = compute_metrics(paths, case.history, case.now_close, percentiles=[50], mid_window=settings.mid_window,
                        mid_kind=settings.mid_kind, vol_window=settings.vol_window, vwap_mode=settings.vwap_mode)
    sfx = f"_{h}m"
    repaired, info = repair_paths(paths)
    closes = repaired[:, :, 3]
    centre, scale = ensemble_centre_scale(closes, case.now_close)
    rec: dict[str, Any] = {
        "forecaster": name, "origin": case.key, "session": case.session, "horizon": h,
        "truncated": bool(case.truncated), "now_close": case.now_close,
        "p_up": m[f"p_up{sfx}"], "p_hit_vwap": m.get(f"p_hit_vwap{sfx}"), "exp_ret": m[f"exp_ret{sfx}"],
        "zscore_mid": m.get("zscore_mid"), "vwap": m.get("vwap"), "repaired_share": _num(info["share"]),
        "centre": _nums(centre), "scale": _nums(scale), "q": _nums(np.quantile(closes, LEVELS, axis=0)),
        "realised": None, "low": None, "pit": None, "crps": None, "up": None, "hit_vwap": None,
    }
    if case.realised is not None:
        real = case.realised
        y = real["close"].to_numpy(float)
        rng = _rng(settings.seed + 1, name, case.origin)
        realised_path = np.concatenate([real.to_numpy(float), np.zeros((h, 1))], axis=1)[None]  # amount unused
        hit = p_hit_vwap(realised_path, session_bars_of_last_day(case.history), case.now_close, settings.vwap_mode)
        rec |= {"realised": _nums(y), "low": _nums(real["low"].to_numpy(float)),
                "pit": _nums(scoring.pit_values(closes.T, y, rng)), "crps": _nums(scoring.crps_fair(y, closes.T)),
                "up": float(y[-1] > case.now_close), "hit_vwap": _num(hit) if rec["p_hit_vwap"] is not None else None}
    for k in ("p_up", "p_hit_vwap", "exp_ret", "zscore_mid", "vwap", "now_close"):
        rec[k] = None if rec[k] is None else _num(rec[k])
    return rec


def scored_or_failed(name: str, case: Case, paths: np.ndarray, settings: Settings) -> dict[str, Any]:
    """The record, or a failure record when the paths are unusable (NaN, wrong shape): one bad forecast must
    not stop a night's run, and it is counted in the report instead of silently dropped."""
    try:
        return score_case(name, case, paths, settings)
    except ValueError as exc:
        return {"forecaster": name, "origin": case.key, "session": case.session, "error": str(exc)[:300]}


class ResultStore:
    """Append-only JSON-lines file of finished records, keyed by (forecaster, origin)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[tuple[str, str], dict[str, Any]]:
        out: dict[tuple[str, str], dict[str, Any]] = {}
        if not self.path.exists():
            return out
        with open(self.path, "rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # a torn last line: that batch never finished
                rec = json.loads(raw)
                out.setdefault((rec["forecaster"], rec["origin"]), rec)
        return out

    def _cut_torn_tail(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as fh:
            data = fh.read()
            if not data.endswith(b"\n"):
                fh.truncate(data.rfind(b"\n") + 1)

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        data = "".join(json.dumps(r, allow_nan=False, separators=(",", ":")) + "\n" for r in records).encode()
        if not data:
            return
        self._cut_torn_tail()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)


def check_run_file(out_dir: Path, settings: Settings, data: dict[str, Any], forecasters: Sequence[Any]) -> None:
    """Create or verify run.json; a resume must use the same settings, data and forecaster settings."""
    path = out_dir / RUN_FILE
    current = {"settings": settings.fingerprint(), "data": data,
               "forecasters": {f.name: describe(f) for f in forecasters}}
    if path.exists():
        old = json.loads(path.read_text())
        if old["settings"] != current["settings"] or old["data"] != current["data"]:
            raise RunMismatch(f"{out_dir} holds a run with other settings or data; use another --out or --fresh")
        for name, desc in current["forecasters"].items():
            if name in old["forecasters"] and old["forecasters"][name] != json.loads(json.dumps(desc)):
                raise RunMismatch(f"forecaster {name!r} ran with other settings in {out_dir}: rename it or --fresh")
        current["forecasters"] = {**old["forecasters"], **current["forecasters"]}
    atomic_write_json(path, current)


def run_walk_forward(frame: pd.DataFrame, settings: Settings, forecasters: Sequence[Any], out_dir: Path,
                     data: dict[str, Any] | None = None, progress: bool = True) -> dict[tuple[str, str], dict]:
    """Forecast every origin with every forecaster, appending finished batches; returns all stored records."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [f.name for f in forecasters]
    if len(set(names)) != len(names) or SKIP in names:
        raise ValueError(f"forecaster names must be unique and not {SKIP!r}: {names}")
    check_run_file(out_dir, settings, data or {}, forecasters)
    store = ResultStore(out_dir / RESULTS)
    done = set(store.load())
    origins = make_origins(frame, settings)
    from tqdm import tqdm

    bar = tqdm(total=len(origins), desc="origins", unit="origin", file=sys.stderr, disable=not progress)
    try:
        for start in range(0, len(origins), settings.batch):
            batch = origins[start:start + settings.batch]
            keys = [t.isoformat() for t in batch]
            if all((SKIP, k) in done or all((n, k) in done for n in names) for k in keys):
                bar.update(len(batch))
                continue
            cases = [prepare_case(frame, t, settings) for t in batch]
            skipped = [c for c in cases if c.skip and (SKIP, c.key) not in done]
            store.append({"forecaster": SKIP, "origin": c.key, "session": c.session, "reason": c.skip}
                         for c in skipped)
            done |= {(SKIP, c.key) for c in skipped}
            live = [c for c in cases if not c.skip]
            for f in forecasters:
                todo = [c for c in live if (f.name, c.key) not in done]
                if not todo:
                    continue
                records = [scored_or_failed(f.name, c, p, settings)
                           for c, p in zip(todo, sample_cases(f, todo, settings))]
                store.append(records)  # one write per forecaster and batch: all of it or (after a crash) none
                done |= {(f.name, c.key) for c in todo}
            bar.update(len(batch))
    finally:
        bar.close()
    return store.load()


# ------------------------------------------------------------------------------------------------ report

def _arr(values: Sequence[Any], width: int) -> np.ndarray:
    """Ragged lists (None = NaN) -> [n, width] float array padded with NaN."""
    out = np.full((len(values), width), np.nan)
    for i, v in enumerate(values):
        if v is not None:
            row = np.array(v, dtype=float)
            out[i, :row.size] = row
    return out


@dataclass
class ForecasterFrame:
    """One forecaster's records as arrays, sorted by origin."""
    name: str
    table: pd.DataFrame  # scalar fields, one row per origin
    centre: np.ndarray  # [O, H]
    scale: np.ndarray
    q: np.ndarray  # [O, L, H]
    realised: np.ndarray  # [O, H]
    low: np.ndarray
    pit: np.ndarray
    crps: np.ndarray


def frames_by_forecaster(records: dict[tuple[str, str], dict], horizon: int) -> dict[str, ForecasterFrame]:
    out = {}
    by_name: dict[str, list[dict]] = {}
    for (name, _), rec in records.items():
        if name != SKIP and "error" not in rec:
            by_name.setdefault(name, []).append(rec)
    for name, recs in by_name.items():
        recs.sort(key=lambda r: r["origin"])
        scalars = ["origin", "session", "horizon", "truncated", "now_close", "p_up", "p_hit_vwap", "exp_ret",
                   "zscore_mid", "vwap", "up", "hit_vwap", "repaired_share"]
        table = pd.DataFrame([{k: r.get(k) for k in scalars} for r in recs])
        table["origin"] = pd.to_datetime(table["origin"], utc=True)
        for k in scalars[4:]:
            table[k] = pd.to_numeric(table[k], errors="coerce").astype(float)
        q = np.full((len(recs), len(LEVELS), horizon), np.nan)
        for i, r in enumerate(recs):
            row = np.array(r["q"], dtype=float)
            q[i, :, :row.shape[1]] = row
        out[name] = ForecasterFrame(name, table, _arr([r["centre"] for r in recs], horizon),
                                    _arr([r["scale"] for r in recs], horizon), q,
                                    _arr([r["realised"] for r in recs], horizon), _arr([r["low"] for r in recs], horizon),
                                    _arr([r["pit"] for r in recs], horizon), _arr([r["crps"] for r in recs], horizon))
    return out


def _end(a: np.ndarray, horizons: np.ndarray) -> np.ndarray:
    """Each origin's value at its own last step (a truncated window ends early): [O, ..., H] -> [O, ...]."""
    idx = horizons.astype(int) - 1
    return np.take_along_axis(a, idx.reshape((-1,) + (1,) * (a.ndim - 1)), axis=-1)[..., 0]


def probability_scores(p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    ok = np.isfinite(p) & np.isfinite(y)
    p, y = p[ok], y[ok]
    return {**scoring.brier_decomposition(p, y), "log_loss": scoring.log_loss(p, y), **scoring.hit_rate(p, y),
            "mean_p": float(p.mean()) if p.size else math.nan, "base_rate": float(y.mean()) if y.size else math.nan,
            "reliability_table": scoring.reliability_table(p, y).to_dict(orient="records")}


def toy_rule(table: pd.DataFrame, p: np.ndarray, low: np.ndarray, realised: np.ndarray,
             settings: Settings) -> dict[str, Any]:
    """Long at the origin's close when p >= rule_p_up and zscore_mid <= rule_z; out at the horizon's close or
    at the stop (filled at the stop, or at the bar's open when it gaps through). One position at a time.
    Net return = exit / entry - 1 with slippage on both fills and fees on both sides."""
    slip, fee, stop = settings.slippage_bp / 1e4, settings.fee_bp / 1e4, settings.rule_stop_bp / 1e4
    trades = []
    free_at = pd.Timestamp.min.tz_localize("UTC")
    for i, row in enumerate(table.itertuples()):
        if row.origin < free_at or not (np.isfinite(p[i]) and np.isfinite(row.zscore_mid)) \
                or not np.isfinite(realised[i, 0]):
            continue
        if p[i] < settings.rule_p_up or row.zscore_mid > settings.rule_z:
            continue
        h = int(row.horizon)
        now = row.now_close
        stop_px = now * (1 - stop)
        hit = np.nonzero(low[i, :h] <= stop_px)[0]
        if hit.size:
            t = int(hit[0])
            bar_open = realised[i, t - 1] if t > 0 else now
            exit_px = min(stop_px, bar_open)
        else:
            t, exit_px = h - 1, realised[i, h - 1]
        ret = exit_px * (1 - slip) / (now * (1 + slip)) - 1 - 2 * fee
        exit_time = row.origin + pd.Timedelta(minutes=t + 1)
        trades.append({"origin": row.origin.isoformat(), "exit": exit_time.isoformat(), "stopped": bool(hit.size),
                       "ret_bp": ret * 1e4})
        free_at = exit_time
    rets = np.array([t["ret_bp"] for t in trades])
    equity = np.cumsum(rets) if rets.size else np.zeros(0)
    peak = np.maximum.accumulate(np.concatenate([[0.0], equity]))[1:] if rets.size else np.zeros(0)
    return {"n_trades": int(rets.size), "win_rate": float((rets > 0).mean()) if rets.size else math.nan,
            "mean_bp": float(rets.mean()) if rets.size else math.nan, "total_bp": float(rets.sum()),
            "t_stat": float(rets.mean() / (rets.std(ddof=1) / math.sqrt(rets.size))) if rets.size > 2 and rets.std() > 0
            else math.nan, "max_drawdown_bp": float((peak - equity).max()) if rets.size else 0.0,
            "stopped": int(sum(t["stopped"] for t in trades)), "trades": trades}


@dataclass
class Evaluation:
    """Derived per-forecaster arrays the report, the CSV and the charts share."""
    f: ForecasterFrame
    p_cal: np.ndarray
    vwap_cal: np.ndarray
    q_cal: np.ndarray  # [O, L, H] walk-forward calibrated quantiles
    report: dict[str, Any] = field(default_factory=dict)
    calibrator: Calibrator | None = None


def evaluate(f: ForecasterFrame, settings: Settings, baseline: ForecasterFrame | None) -> Evaluation:
    t = f.table
    H = settings.horizon
    horizons = t["horizon"].to_numpy(int)
    y = t["up"].to_numpy(float)
    p = t["p_up"].to_numpy(float)
    origins = pd.DatetimeIndex(t["origin"])
    p_cal, p_fits = walk_forward_probability(origins, p, y, H, settings.refit_every, settings.isotonic_min)
    pv, yv = t["p_hit_vwap"].to_numpy(float), t["hit_vwap"].to_numpy(float)
    v_cal, _ = walk_forward_probability(origins, pv, yv, H, settings.refit_every, settings.isotonic_min)
    q_cal = walk_forward_bands_from_summary(origins, f.centre, f.scale, t["now_close"].to_numpy(float),
                                            f.realised, H, np.array(LEVELS), settings.refit_every)
    warm = np.isfinite(p_cal)
    rep: dict[str, Any] = {"n_origins": int(len(t)), "n_resolved": int(np.isfinite(y).sum())}
    rep["p_up"] = {"raw": probability_scores(p, y), "raw_after_warmup": probability_scores(p[warm], y[warm]),
                   "calibrated": probability_scores(p_cal[warm], y[warm]), "refits": p_fits}
    vwarm = np.isfinite(v_cal)
    rep["p_hit_vwap"] = {"raw": probability_scores(pv, yv), "raw_after_warmup": probability_scores(pv[vwarm], yv[vwarm]),
                         "calibrated": probability_scores(v_cal[vwarm], yv[vwarm])}
    end_real = _end(f.realised, horizons)
    q_end = _end(f.q, horizons)  # [O, L]
    crps_end = _end(f.crps, horizons)
    rep["close_end"] = {
        "crps_fair": float(np.nanmean(crps_end)), "crps_fair_bp": float(np.nanmean(crps_end / t["now_close"]) * 1e4),
        "crps_by_step_bp": _nums(np.nanmean(f.crps / t["now_close"].to_numpy()[:, None], axis=0) * 1e4),
        "pinball": {f"{lv:g}": float(np.nanmean(scoring.pinball_loss(q_end[:, j], end_real, lv)))
                    for j, lv in enumerate(LEVELS)},
        "pit_histogram": scoring.pit_histogram(_end(f.pit, horizons)),
    }
    cov: dict[str, Any] = {}
    band_warm = np.isfinite(q_cal).any(axis=(1, 2))
    for band in BANDS:
        i, j = LEVELS.index(band.lo), LEVELS.index(band.hi)
        cov[band.name] = {
            "nominal": band.nominal,
            "raw": _nums(scoring.band_coverage(f.q[:, i], f.q[:, j], f.realised)),
            "raw_after_warmup": _nums(scoring.band_coverage(f.q[band_warm, i], f.q[band_warm, j], f.realised[band_warm])),
            "calibrated": _nums(scoring.band_coverage(q_cal[band_warm, i], q_cal[band_warm, j], f.realised[band_warm])),
        }
    rep["coverage_by_step"] = cov
    rep["toy_rule"] = {"raw": toy_rule(t, p, f.low, f.realised, settings),
                       "calibrated": toy_rule(t, p_cal, f.low, f.realised, settings)}
    if baseline is not None and baseline.name != f.name:
        rep["diebold_mariano_vs_" + baseline.name] = diebold_mariano_vs(f, baseline, settings)
    return Evaluation(f, p_cal, v_cal, q_cal, rep, final_calibrator(f, settings))


def diebold_mariano_vs(f: ForecasterFrame, base: ForecasterFrame, settings: Settings) -> dict[str, Any]:
    """DM tests on common origins: end-of-horizon CRPS and the Brier loss of p_up (negative = f is better)."""
    a = f.table.assign(crps_end=_end(f.crps, f.table["horizon"].to_numpy(int))).set_index("origin")
    b = base.table.assign(crps_end=_end(base.crps, base.table["horizon"].to_numpy(int))).set_index("origin")
    common = a.index.intersection(b.index)
    a, b = a.loc[common], b.loc[common]
    h = math.ceil(settings.horizon / settings.every)  # windows overlap up to h origins apart
    return {"crps_end": scoring.diebold_mariano(a["crps_end"].to_numpy(), b["crps_end"].to_numpy(), h=h),
            "brier_p_up": scoring.diebold_mariano((a["p_up"] - a["up"]).to_numpy() ** 2,
                                                  (b["p_up"] - b["up"]).to_numpy() ** 2, h=h)}


def final_calibrator(f: ForecasterFrame, settings: Settings) -> Calibrator:
    """Fitted on every resolved outcome of the run: what the live forecast should apply from now on."""
    t = f.table
    origins = pd.DatetimeIndex(t["origin"])
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = (np.log(f.realised / t["now_close"].to_numpy()[:, None]) - f.centre) / f.scale
    meta = {"forecaster": f.name, "source": "backtest", "symbol": settings.symbol, "every_min": settings.every,
            "n_paths": settings.n_paths}
    return Calibrator(settings.horizon,
                      ProbabilityCalibrator.fit(t["p_up"].to_numpy(float), t["up"].to_numpy(float), origins,
                                                settings.isotonic_min),
                      ProbabilityCalibrator.fit(t["p_hit_vwap"].to_numpy(float), t["hit_vwap"].to_numpy(float),
                                                origins, settings.isotonic_min),
                      BandCalibrator.fit(scores, pit=f.pit, times=origins), meta)


def per_origin_table(evals: dict[str, Evaluation]) -> pd.DataFrame:
    """One spreadsheet row per (origin, forecaster)."""
    rows = []
    for name, ev in evals.items():
        t = ev.f.table
        hz = t["horizon"].to_numpy(int)
        q_end, qc_end = _end(ev.f.q, hz), _end(ev.q_cal, hz)
        d = pd.DataFrame({
            "origin_utc": t["origin"].dt.strftime("%Y-%m-%d %H:%M"),
            "origin_et": t["origin"].dt.tz_convert("America/New_York").dt.strftime("%Y-%m-%d %H:%M"),
            "session": t["session"], "forecaster": name, "horizon_min": hz, "truncated": t["truncated"],
            "now_close": t["now_close"], "p_up": t["p_up"], "p_up_cal": ev.p_cal, "up": t["up"],
            "p_hit_vwap": t["p_hit_vwap"], "p_hit_vwap_cal": ev.vwap_cal, "hit_vwap": t["hit_vwap"],
            "exp_ret": t["exp_ret"], "zscore_mid": t["zscore_mid"], "vwap": t["vwap"],
            "realised_end": _end(ev.f.realised, hz)})
        for j, lv in enumerate(LEVELS):
            d[f"q{round(lv * 100):02d}_end"] = q_end[:, j]
        for band in BANDS[:2]:
            d[f"q{round(band.lo * 100):02d}_cal_end"] = qc_end[:, LEVELS.index(band.lo)]
            d[f"q{round(band.hi * 100):02d}_cal_end"] = qc_end[:, LEVELS.index(band.hi)]
        d["pit_end"], d["crps_end"] = _end(ev.f.pit, hz), _end(ev.f.crps, hz)
        trades = {tr["origin"]: tr["ret_bp"] for tr in ev.report["toy_rule"]["raw"]["trades"]}
        d["rule_trade_bp"] = [trades.get(o.isoformat(), np.nan) for o in t["origin"]]
        rows.append(d)
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    return out.sort_values(["origin_utc", "forecaster"], kind="stable") if len(out) else out


def _fmt(x: Any, width: int, digits: int) -> str:
    ok = isinstance(x, (int, float)) and math.isfinite(x)
    return f"{x:>{width}.{digits}f}" if ok else f"{'-':>{width}}"


def _last(xs: Sequence[Any]) -> float:
    return next((x for x in reversed(xs) if x is not None), math.nan)


def console_table(report: dict[str, Any]) -> str:
    """A short fixed-width comparison of the forecasters."""
    head = (f"{'forecaster':<22}{'n':>6}{'Brier':>8}{'cal':>8}{'REL':>8}{'logloss':>9}{'hit':>6}"
            f"{'CRPS bp':>9}{'cov80':>7}{'cal80':>7}{'DM crps':>9}{'p':>7}{'trades':>7}{'net bp':>8}")
    lines = [head, "-" * len(head)]
    for name, r in report["forecasters"].items():
        pu = r["p_up"]
        cov = r["coverage_by_step"]["p10_p90"]
        dm = next((v["crps_end"] for k, v in r.items() if k.startswith("diebold_mariano_vs_")), None)
        rule = r["toy_rule"]["raw"]
        lines.append(
            f"{name[:21]:<22}{pu['raw']['n']:>6}{_fmt(pu['raw']['brier'], 8, 4)}{_fmt(pu['calibrated']['brier'], 8, 4)}"
            f"{_fmt(pu['raw']['reliability'], 8, 4)}{_fmt(pu['raw']['log_loss'], 9, 4)}{_fmt(pu['raw']['hit_rate'], 6, 2)}"
            f"{_fmt(r['close_end']['crps_fair_bp'], 9, 2)}{_fmt(_last(cov['raw']), 7, 2)}"
            f"{_fmt(_last(cov['calibrated']), 7, 2)}{_fmt(dm and dm['stat'], 9, 2)}{_fmt(dm and dm['p_value'], 7, 3)}"
            f"{rule['n_trades']:>7}{_fmt(rule['total_bp'], 8, 1)}")
    w = report["independent_windows"]
    lines.append(f"{w['n_origins']} origins in {w['n_sessions']} sessions = {w['n_independent']} independent "
                 f"{report['settings']['horizon']}-minute windows; cal = walk-forward calibrated (after warm-up), "
                 f"cov80 = 10-90 band coverage at the last step, DM < 0 = better than the random walk")
    return "\n".join(lines)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    return x


def failed_forecasts(records: dict[tuple[str, str], dict]) -> dict[str, Any]:
    """Per forecaster: how many origins gave unusable paths, and the first message."""
    out: dict[str, Any] = {}
    for (name, _), rec in sorted(records.items()):
        if "error" in rec:
            entry = out.setdefault(name, {"n": 0, "first": rec["error"]})
            entry["n"] += 1
    return out


def build_report(records: dict[tuple[str, str], dict], settings: Settings, out_dir: Path,
                 data: dict[str, Any] | None = None, baseline: str = "random_walk",
                 plots: bool = True) -> dict[str, Any]:
    """Scores, calibrators, the per-origin CSV, report.json and the PNGs from the stored records."""
    frames = frames_by_forecaster(records, settings.horizon)
    if not frames:
        raise ValueError("no forecast records to report on")
    base = frames.get(baseline)
    evals = {name: evaluate(f, settings, base) for name, f in frames.items()}
    skipped = [r for (n, _), r in records.items() if n == SKIP]
    # Numbers and times vary per origin; without them the reasons group into a few kinds.
    kinds = [re.sub(r"\d[\d:.+TZ-]*", "#", r["reason"])[:100] for r in skipped]
    reasons = pd.Series(kinds, dtype=object).value_counts().to_dict() if skipped else {}
    any_f = next(iter(frames.values()))
    resolved = any_f.table[np.isfinite(any_f.table["up"])]
    report: dict[str, Any] = {
        "settings": dataclasses.asdict(settings), "data": data or {}, "levels": list(LEVELS),
        "independent_windows": scoring.independent_windows(pd.DatetimeIndex(resolved["origin"]), settings.horizon,
                                                           resolved["session"].to_numpy()),
        "overlap_h": math.ceil(settings.horizon / settings.every),
        "first_origin": any_f.table["origin"].min().isoformat(), "last_origin": any_f.table["origin"].max().isoformat(),
        "skipped_origins": {"n": len(skipped), "reasons": reasons},
        "failed_forecasts": failed_forecasts(records),
        "forecasters": {name: ev.report for name, ev in evals.items()},
        "calibrators": {},
    }
    for name, ev in evals.items():
        path = ev.calibrator.save(out_dir / f"calibrator_{name}.json")
        report["calibrators"][name] = path.name
    atomic_write_text(out_dir / "per_origin.csv", per_origin_table(evals).to_csv(index=False, float_format="%.8g"))
    report = _jsonable(report)
    if plots:
        report["plots"] = write_plots(evals, report, out_dir)
    atomic_write_json(out_dir / "report.json", report)
    return report


# ------------------------------------------------------------------------------------------------ charts

def write_plots(evals: dict[str, Evaluation], report: dict[str, Any], out_dir: Path) -> list[str]:
    """Reliability diagram, PIT histograms, coverage by step and the toy rule's equity curve (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(evals)
    colours = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}
    files = []

    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls=":")
    for n in names:
        for kind, ls in (("raw", "-"), ("calibrated", "--")):
            tab = pd.DataFrame(report["forecasters"][n]["p_up"][kind]["reliability_table"])
            tab = tab[tab["n"] >= DIAGRAM_MIN_BIN] if len(tab) else tab  # a bin of 3 outcomes is noise
            if len(tab):
                ax.plot(tab["mean_p"], tab["obs_freq"], ls, marker="o", ms=3, color=colours[n],
                        label=f"{n} ({kind})")
    ax.set(xlabel="forecast p_up (bin mean)", ylabel="observed frequency of close > now", xlim=(0, 1), ylim=(0, 1),
           title=f"Reliability of p_up (dashed: walk-forward calibrated; bins of >= {DIAGRAM_MIN_BIN})")
    ax.legend(fontsize=7)
    files.append(_save(fig, out_dir / "reliability.png"))

    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
    for ax, n in zip(axes[0], names):
        h = report["forecasters"][n]["close_end"]["pit_histogram"]
        counts = np.array(h["counts"], dtype=float)
        width = 1 / counts.size
        ax.bar(np.arange(counts.size) * width, counts / max(counts.sum(), 1) / width, width=width, align="edge",
               color=colours[n], alpha=0.7)
        ax.axhline(1.0, color="black", lw=1, ls=":")
        ax.set(title=n, xlabel="PIT of the horizon close", xlim=(0, 1))
    axes[0][0].set_ylabel("density (flat = calibrated)")
    files.append(_save(fig, out_dir / "pit_histogram.png"))

    fig, axes = plt.subplots(1, len(BANDS), figsize=(4.5 * len(BANDS), 3.5), squeeze=False)
    for ax, band in zip(axes[0], BANDS):
        for n in names:
            cov = report["forecasters"][n]["coverage_by_step"][band.name]
            steps = np.arange(1, len(cov["raw"]) + 1)
            ax.plot(steps, np.array(cov["raw"], dtype=float), "-", color=colours[n], label=f"{n}")
            ax.plot(steps, np.array(cov["calibrated"], dtype=float), "--", color=colours[n])
        ax.axhline(band.nominal, color="black", lw=1, ls=":")
        ax.set(title=f"{band.name} band (nominal {band.nominal:.0%})", xlabel="minutes ahead", ylim=(0, 1))
    axes[0][0].set_ylabel("coverage (dashed: calibrated)")
    axes[0][0].legend(fontsize=7)
    files.append(_save(fig, out_dir / "coverage_by_step.png"))

    fig, ax = plt.subplots(figsize=(8, 4))
    for n in names:
        for kind, ls in (("raw", "-"), ("calibrated", "--")):
            trades = report["forecasters"][n]["toy_rule"][kind]["trades"]
            if trades:
                t = pd.to_datetime([x["exit"] for x in trades], utc=True)
                ax.step(t, np.cumsum([x["ret_bp"] for x in trades]), ls, where="post", color=colours[n],
                        label=f"{n} ({kind}, {len(trades)} trades)")
    ax.axhline(0, color="grey", lw=1)
    ax.set(title="Toy rule, net of fees and slippage", ylabel="cumulative net return (bp)")
    ax.legend(fontsize=7)
    fig.autofmt_xdate()
    files.append(_save(fig, out_dir / "equity.png"))
    return files


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)  # readers never see half a PNG
    return path.name
