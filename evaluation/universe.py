"""The bars of a backtest. One symbol: its bars file, or its range from Alpaca in one request. Many symbols: one
file per symbol from a folder, or Alpaca cached per symbol and session.

A symbol whose bars are missing or unusable (no file, a file the CLI's rules refuse, no session in the run's
range, Alpaca errors) is reported with the reason and left out; the other symbols still run. Both paths share
the range a run needs (``needed_sessions``), the Alpaca client (``alpaca_source``) and what identifies a file.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from marketdata import calendar as mcal
from marketdata.frame import DataError, DataSourceError, canonical

log = logging.getLogger(__name__)
FILE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")


@dataclass
class SymbolData:
    """One symbol's bars and what identifies them for a resume; or, when unusable, why."""
    symbol: str
    frame: pd.DataFrame | None = None
    data: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None


def bars_file(data_dir: Path, symbol: str) -> Path | None:
    """DIR/<SYMBOL>.csv (.csv.gz, .parquet, .pq); the symbol as given (upper case), then lower case."""
    for name in dict.fromkeys((symbol, symbol.upper(), symbol.lower())):
        for suffix in FILE_SUFFIXES:
            path = Path(data_dir) / f"{name}{suffix}"
            if path.is_file():
                return path
    return None


def csv_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies a bars file for a resume (run.json's "data")."""
    return {"source": "csv", "file": os.path.abspath(path), "bytes": os.path.getsize(path)}


def alpaca_source(cfg: Any) -> Any:
    """The Alpaca client, with the keys and endpoint from the environment as the forecast CLI reads them."""
    from marketdata.alpaca import AlpacaBarSource, credentials_from_env

    creds = credentials_from_env(os.environ)
    if creds is None:
        raise DataError("no Alpaca keys: set ALPACA_KEY_ID and ALPACA_SECRET_KEY (or APCA_API_KEY_ID and "
                        "APCA_API_SECRET_KEY), or give bars files (--csv FILE, or --data-dir DIR with --symbols)")
    return AlpacaBarSource(creds.key_id, creds.secret_key, feed=cfg.feed,
                           url_override=os.environ.get("ALPACA_DATA_URL") or None)


def load_symbol(cfg: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One symbol's bars: the whole --csv file, or from Alpaca the sessions start..end (New York dates) and the
    history the first origins need, in one request; with what identifies them for a resume."""
    from marketdata.files import read_bars_file

    if cfg.source == "csv":
        frame = read_bars_file(cfg.csv, tz=cfg.csv_tz, label=cfg.csv_label, symbol=cfg.symbol)
        return frame, csv_identity(cfg.csv)
    sessions = needed_sessions(cfg)
    if not sessions:
        raise DataError(f"no session between {cfg.start} and {cfg.end}")
    source = alpaca_source(cfg)
    lo, hi = mcal.session_window(sessions[0], cfg.rth)[0], mcal.session_window(sessions[-1], cfg.rth)[1]
    return source.fetch(cfg.symbol, lo, hi), {"source": "alpaca", "symbol": cfg.symbol, "feed": cfg.feed,
                                              "from": lo.isoformat(), "to": hi.isoformat()}


def _usable(sd: SymbolData, cfg: Any) -> SymbolData:
    """Unusable when no origin of the run falls in its bars."""
    from evaluation.replay import make_origins

    if sd.frame is not None and sd.problem is None:
        if sd.frame.empty:
            sd.problem = "no bars"
        elif len(make_origins(sd.frame, cfg)) == 0:
            span = f"{mcal.ny_date(sd.frame.index[0]).date()}..{mcal.ny_date(sd.frame.index[-1]).date()}"
            sd.problem = f"no session of the backtest's range in its bars ({span})"
    if sd.problem:
        sd.frame = None
    return sd


def from_file(data_dir: Path, symbol: str, cfg: Any) -> SymbolData:
    from marketdata.files import SymbolMismatch, read_bars_file

    path = bars_file(data_dir, symbol)
    if path is None:
        return SymbolData(symbol, problem=f"no bars file {symbol}{{{','.join(FILE_SUFFIXES)}}} in {data_dir}")
    try:
        frame = read_bars_file(path, tz=cfg.csv_tz, label=cfg.csv_label, symbol=symbol)
    except SymbolMismatch:
        raise  # swapped files stop the run (exit 2): a mix-up to fix, not one symbol's gap to leave out
    except DataError as exc:
        return SymbolData(symbol, problem=str(exc))
    return _usable(SymbolData(symbol, frame, csv_identity(path)), cfg)


def needed_sessions(cfg: Any) -> list[pd.Timestamp]:
    """The sessions start..end and the days of history before them that the first origins need."""
    if cfg.start is None or cfg.end is None:
        raise DataError("with Alpaca, give --start and --end")
    cal = mcal.xnys()
    first_open = mcal.session_window(cal.date_to_session(mcal.to_session_label(cfg.start), "next"), cfg.rth)[0]
    first = mcal.recent_sessions(first_open, cfg.days + 1, cfg.rth)[0]
    last = cal.date_to_session(mcal.to_session_label(cfg.end), "previous")
    return [pd.Timestamp(s) for s in cal.sessions_in_range(first, last)]


def _cache_path(cache_dir: Path, symbol: str, feed: str, session: pd.Timestamp) -> Path:
    return Path(cache_dir) / symbol / feed / f"{session.date().isoformat()}.parquet"


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.to_parquet(tmp)
    os.replace(tmp, path)


def from_alpaca(source: Any, symbol: str, cfg: Any, cache_dir: Path, now: pd.Timestamp | None = None
                ) -> SymbolData:
    """The symbol's sessions from the cache; the missing ones fetched in one request and cached, one Parquet
    file per session (its whole 04:00-20:00 ET window, so RTH and extended-hours runs share it). A session
    still open (or not yet over) is used but not cached."""
    now = mcal.to_utc(now if now is not None else pd.Timestamp.now(tz="UTC"))
    sessions = needed_sessions(cfg)
    if not sessions:
        return SymbolData(symbol, problem=f"no session between {cfg.start} and {cfg.end}")
    windows = {s: mcal.session_window(s, rth=False) for s in sessions}
    missing = [s for s in sessions if not _cache_path(cache_dir, symbol, cfg.feed, s).exists()]
    fresh: dict[pd.Timestamp, pd.DataFrame] = {}
    if missing:
        try:
            got = source.fetch(symbol, windows[missing[0]][0], windows[missing[-1]][1])
        except DataSourceError as exc:
            return SymbolData(symbol, problem=f"Alpaca: {exc}")
        for s in missing:
            lo, hi = windows[s]
            fresh[s] = got.iloc[got.index.searchsorted(lo):got.index.searchsorted(hi)]
            if hi <= now:
                _write_parquet(fresh[s], _cache_path(cache_dir, symbol, cfg.feed, s))
    parts = [fresh[s] if s in fresh else canonical(pd.read_parquet(_cache_path(cache_dir, symbol, cfg.feed, s)))
             for s in sessions]
    frame = canonical(pd.concat(parts))  # sessions is not empty
    data = {"source": "alpaca", "symbol": symbol, "feed": cfg.feed, "from": windows[sessions[0]][0].isoformat(),
            "to": windows[sessions[-1]][1].isoformat()}
    return _usable(SymbolData(symbol, frame, data), cfg)


def load_universe(cfg: Any, symbols: Sequence[str], data_dir: Path | None, cache_dir: Path | None = None,
                  source: Any = None) -> list[SymbolData]:
    """Every symbol's bars (or its problem), from ``data_dir`` when given, else from the Alpaca ``source``
    (by default alpaca_source's)."""
    if data_dir is None and source is None:
        source = alpaca_source(cfg)
    out = []
    for symbol in symbols:
        scfg = cfg.replace(symbol=symbol)
        sd = from_file(data_dir, symbol, scfg) if data_dir is not None else \
            from_alpaca(source, symbol, scfg, cache_dir or Path("outputs/bars_cache"))
        if sd.problem:
            log.warning("%s left out: %s", symbol, sd.problem)
        else:
            log.info("%s: %d bars (%s)", symbol, len(sd.frame), sd.data["source"])
        out.append(sd)
    return out


@dataclass
class SymbolJob:
    """One symbol of the run: its bars, its results folder, its settings (symbol set) and what identifies its
    bars for a resume (run.json's "data")."""
    symbol: str
    frame: pd.DataFrame
    out_dir: Path
    cfg: Any
    data: dict[str, Any] = field(default_factory=dict)
