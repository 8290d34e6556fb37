"""Shards of a walk-forward run: one symbol, one session, one group of forecasters (the baselines, or Kronos).

A shard carries its origins and needs only a slice of the symbol's bars (``shard_frame``): the history its
first origin's context reaches back to, through one bar past the session's end. Every forecast and outcome is
the same on that slice as on the whole frame, so a shard computed anywhere equals the one-process run's
records, origin by origin (``run_shard`` runs the walk-forward's own ``batch_records``).
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd

from evaluation.replay import make_origins
from evaluation.walkforward import batch_records, origins_done
from forecast.pipeline import ForecastPipeline
from marketdata import calendar as mcal

BASELINES, KRONOS = "baselines", "kronos"
FAULT_ENV = "BACKTEST_TEST_KILL_ONCE"  # tests only: "<shard id>@<marker file>" makes a worker die mid-shard once


@dataclass(frozen=True)
class Shard:
    symbol: str
    session: str               # New York date, YYYY-MM-DD
    group: str                 # BASELINES or KRONOS
    forecasters: tuple[str, ...]
    origins: tuple[str, ...]   # ISO 8601, UTC

    @property
    def id(self) -> str:
        return f"{self.symbol}/{self.part}"

    @property
    def part(self) -> str:
        """The shard's file name in its symbol's parts/ folder (without .jsonl)."""
        return f"{self.session}.{self.group}"


def plan_shards(symbol: str, frame: pd.DataFrame, cfg: Any, groups: dict[str, Sequence[str]]) -> list[Shard]:
    """One shard per session and non-empty group of forecaster names, sessions in order."""
    by_session: dict[str, list[str]] = {}
    for t in make_origins(frame, cfg):
        by_session.setdefault(mcal.ny_date(t).date().isoformat(), []).append(t.isoformat())
    return [Shard(symbol, session, group, tuple(names), tuple(origins))
            for session, origins in by_session.items() for group, names in groups.items() if names]


def shard_done(shard: Shard, done: set | dict) -> bool:
    return origins_done(shard.origins, shard.forecasters, done)


def shard_frame(frame: pd.DataFrame, shard: Shard, cfg: Any) -> pd.DataFrame:
    """The bars the shard's origins can reach: from the first session of the earliest origin's history
    (replay.prepare_case's cut) through the session's end, plus the next bar, so that an outcome is resolved
    (or not) exactly as on the whole frame."""
    first = pd.Timestamp(shard.origins[0])
    history = mcal.recent_sessions(first, cfg.days, cfg.rth)
    lo = frame.index.searchsorted(mcal.session_window(history[0], cfg.rth)[0]) if history else 0
    end = mcal.session_window(mcal.to_session_label(shard.session), cfg.rth)[1]
    hi = frame.index.searchsorted(end) + 1
    return frame.iloc[lo:hi]


def run_shard(shard: Shard, frame: pd.DataFrame, cfg: Any, forecasters: Sequence[Any]) -> dict[str, Any]:
    """The shard's records (skips, then each forecaster's) and where and how long it ran."""
    t0 = time.perf_counter()
    pipeline = ForecastPipeline(cfg.replace(symbol=shard.symbol), calibrator=None)
    chosen = [f for f in forecasters if f.name in shard.forecasters]
    origins = pd.DatetimeIndex([pd.Timestamp(o) for o in shard.origins])
    records: list[dict[str, Any]] = []
    done: set = set()
    for start in range(0, len(origins), cfg.batch):
        for recs in batch_records(frame, origins[start:start + cfg.batch], pipeline, chosen, done):
            records += recs
            done |= {(r["forecaster"], r["origin"]) for r in recs}
    return {"records": records, "timing": {"seconds": round(time.perf_counter() - t0, 4),
                                           "origins": len(shard.origins), "worker": f"{socket.gethostname()}:"
                                                                                    f"{os.getpid()}"}}


def maybe_die(shard: Shard, spec: str | None) -> None:
    """Test hook (FAULT_ENV): die like a lost node, without cleanup, on the first attempt at the named shard;
    the marker file (holding the dead worker's pid) makes later attempts go through."""
    if not spec:
        return
    target, _, marker = spec.partition("@")
    if target == shard.id and marker and not os.path.exists(marker):
        with open(marker, "w") as fh:
            fh.write(str(os.getpid()))
        os._exit(1)
