"""Reading a bars file (CSV or Parquet) into the canonical frame, with row-level error messages."""

from __future__ import annotations

import gzip
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from marketdata import calendar as mcal
from marketdata.frame import COLUMNS, ONE_MINUTE, DataError, canonical, first_line
from marketdata.quality import contradictory_prices

log = logging.getLogger(__name__)


class SymbolMismatch(DataError):
    """The file's symbol column names another ticker than the run's (exit 2)."""

_TIME_NAMES = ("timestamp", "datetime", "date", "time", "t")
_ALIASES = {
    "open": ("open", "o"),
    "high": ("high", "h"),
    "low": ("low", "l"),
    "close": ("close", "c"),
    "volume": ("volume", "v", "vol"),
}


def read_bars_file(path: str | Path, tz: str = "auto", label: str = "auto", symbol: str | None = None
                   ) -> pd.DataFrame:
    """Read a CSV (.csv, .csv.gz) or Parquet (.parquet, .pq) file of 1-minute bars into a canonical frame.

    Columns (names case-insensitive, extra columns ignored): a time column named timestamp, datetime, date,
    time or t (first found; for Parquet a DatetimeIndex also works), open/o, high/h, low/l, close/c and
    volume/v/vol.  A missing volume column is filled with 0 and a UserWarning is issued (VWAP then is
    meaningless); any other missing column is a DataError.  A "symbol" column with more than one value is a
    DataError, and so is one that names another ticker than ``symbol`` (the one the run asks for; case aside):
    a swapped file must not be forecast at the wrong symbol's price.  Integer time columns are epoch seconds/ms/us/ns (chosen by magnitude), UTC.

    tz: how naive timestamps are read.  "auto" = UTC (Alpaca, Polygon and most APIs export UTC); pass an IANA
        name such as "America/New_York" for wall-clock files.  Aware timestamps are kept as given (tz ignored).
        Under "auto", a file of 30 bars or more whose naive times, read as UTC, put most of its volume (of its
        bars when it has none) outside the XNYS regular sessions, while another common zone would put 80 % or
        more inside, is a DataError naming that zone and csv_tz (see _check_naive_utc).
    label: "start" (bar labelled by its first minute, our convention), "end" (labelled by its closing minute;
        shifted back 1 minute), or "auto": end-labelled when, over the file's XNYS sessions, more sessions have
        a bar at the regular close minute (16:00 ET, 13:00 on half days) but none at the open minute (09:30 ET)
        than sessions that have the 09:30 bar.  This recognises RTH-only files labelled 09:31..16:00;
        an extended-hours file always has both minutes and is read as start-labelled, so an end-labelled
        extended-hours file needs label="end".

    Rows may come in any order (they are sorted; a debug log says so).  Duplicate timestamps, unparseable
    times, times not on whole minutes, NaN/non-numeric or non-positive prices, NaN/negative volume and an
    empty file raise DataError.  Bars with high < low or open/close outside [low, high] are kept here (their
    number is logged as a warning and stored in frame.attrs["inconsistent_bars"]); preparing a context treats
    them as bad bars (marketdata.quality).
    """
    p = Path(path)
    raw = _read_table(p)
    cols = {str(c).strip().lower(): c for c in raw.columns}
    times, naive = _parse_times(_time_column(raw, cols, p), p, tz)
    out = pd.DataFrame(index=pd.DatetimeIndex(times, name="timestamp"))
    _check_single_symbol(raw, cols, p, symbol)
    for name in COLUMNS:
        src = next((cols[a] for a in _ALIASES[name] if a in cols), None)
        if src is None and name == "volume":
            warnings.warn(f"{p.name}: no volume column; volume set to 0 (VWAP will be meaningless)", UserWarning,
                          stacklevel=2)
            out[name] = 0.0
        elif src is None:
            raise DataError(f"{p}: missing column {name!r} (have: {', '.join(map(str, raw.columns))})")
        else:
            out[name] = _numeric(raw[src], p, str(src))
    _check_values(out, p)
    if naive and tz == "auto":
        _check_naive_utc(out, p)
    out = _apply_label(out, label, p)
    out = _sort_unique(out, p)
    out = canonical(out)
    out.attrs["inconsistent_bars"] = _count_inconsistent(out, p)
    out.attrs["source"] = str(p)
    return out


def _read_table(p: Path) -> pd.DataFrame:
    suffixes = "".join(p.suffixes[-2:]).lower()
    try:
        if p.suffix.lower() in (".parquet", ".pq"):
            raw = pd.read_parquet(p)
            if isinstance(raw.index, pd.DatetimeIndex):
                # A DatetimeIndex is the time column when no named time column exists.
                raw = raw.reset_index(names="__index_time__")
        elif suffixes.endswith(".csv") or suffixes.endswith(".csv.gz"):
            _check_separator(p)
            raw = pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""])
        else:
            raise DataError(f"{p}: unknown file type {p.suffix!r} (expected .csv, .csv.gz, .parquet or .pq)")
    except FileNotFoundError:
        raise DataError(f"{p}: no such file") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{p}: the file is empty") from None
    except (pd.errors.ParserError, OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{p}: cannot be read: {first_line(exc)}") from None
    if raw.empty:
        raise DataError(f"{p}: the file has no data rows")
    return raw


def _check_separator(p: Path) -> None:
    """A header split by semicolons or tabs and holding no comma: a spreadsheet's regional CSV. Say so, rather
    than reading one column and reporting no time column."""
    opener = gzip.open if p.name.lower().endswith(".gz") else open
    with opener(p, "rt", encoding="utf-8", errors="replace") as fh:
        header = fh.readline()
    for sep, name in ((";", "semicolon"), ("\t", "tab")):
        if sep in header and "," not in header:
            raise DataError(f"{p}: the file is {name}-separated; use commas (save it as comma-separated CSV)")


def _time_column(raw: pd.DataFrame, cols: dict[str, Any], p: Path) -> pd.Series:
    for name in _TIME_NAMES + ("__index_time__",):
        if name in cols:
            return raw[cols[name]]
    raise DataError(f"{p}: no time column (expected one of {', '.join(_TIME_NAMES)})")


def _row_ref(p: Path, pos: int) -> str:
    # pos is 0-based among data rows; CSV line numbers count the header line.
    if p.suffix.lower() in (".parquet", ".pq"):
        return f"row {pos + 1}"
    return f"data row {pos + 1} (line {pos + 2})"


def _parse_times(col: pd.Series, p: Path, tz: str) -> tuple[pd.DatetimeIndex, bool]:
    """The times as UTC, and whether they were naive (localized in ``tz``)."""
    if pd.api.types.is_datetime64_any_dtype(col):
        parsed = pd.DatetimeIndex(col)
    elif pd.api.types.is_numeric_dtype(col) or col.astype(str).str.fullmatch(r"\d{9,19}").all():
        parsed = _parse_epoch(pd.to_numeric(col, errors="coerce"))
    else:
        parsed = _parse_strings(col.astype("string").str.strip(), p)
    bad = np.flatnonzero(pd.isna(parsed))
    if len(bad):
        raise DataError(f"{p}: unparseable time {col.iloc[bad[0]]!r} at {_row_ref(p, int(bad[0]))}")
    naive = parsed.tz is None
    if naive:
        zone = "UTC" if tz == "auto" else tz
        try:
            parsed = parsed.tz_localize(zone, ambiguous="NaT", nonexistent="NaT")
        except Exception as exc:  # unknown zone name
            raise DataError(f"{p}: cannot use timezone {tz!r}: {first_line(exc)}") from None
        bad = np.flatnonzero(pd.isna(parsed))
        if len(bad):
            raise DataError(f"{p}: time {col.iloc[bad[0]]!r} at {_row_ref(p, int(bad[0]))} does not exist or is "
                            f"ambiguous in {zone} (DST change)")
    parsed = parsed.tz_convert("UTC")
    off = np.flatnonzero(parsed != parsed.floor("min"))
    if len(off):
        raise DataError(f"{p}: time {col.iloc[off[0]]!r} at {_row_ref(p, int(off[0]))} is not on a whole minute")
    return parsed, naive


# Zones a wall-clock bars file is likely written in, most likely first (ties go to the first).
ZONE_GUESSES = ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles", "Europe/London",
                "Europe/Berlin", "Asia/Tokyo", "Asia/Hong_Kong", "Australia/Sydney")
INSIDE_MIN = 0.5   # read as UTC, at least this share of the volume must fall inside regular sessions...
GUESS_MIN = 0.8    # ...or the file stops when another zone puts at least this share inside
ZONE_MIN_BARS = 30  # fewer bars say too little about their zone


def regular_share(index: pd.DatetimeIndex, weights: np.ndarray) -> float:
    """The share of ``weights`` (volume, or 1 per bar) whose bar starts lie inside an XNYS regular session."""
    cal = mcal.xnys()
    schedule = cal.schedule
    opens = schedule["open"].to_numpy(dtype="datetime64[ns]")
    closes = schedule["close"].to_numpy(dtype="datetime64[ns]")
    t = pd.DatetimeIndex(index).tz_convert("UTC").tz_localize(None).to_numpy(dtype="datetime64[ns]")
    i = np.searchsorted(opens, t, side="right") - 1
    inside = (i >= 0) & (t < closes[np.clip(i, 0, None)])
    total = float(weights.sum())
    return float(weights[inside].sum()) / total if total > 0 else 0.0


def _check_naive_utc(out: pd.DataFrame, p: Path) -> None:
    """Naive times read as UTC (csv_tz auto) that put most of the file's volume outside the regular sessions,
    while another zone would put nearly all of it inside, are a zone mistake: forecasting from them would fill
    most of the context, or take "now" from a bar hours away from the real instant."""
    if len(out) < ZONE_MIN_BARS:
        return
    volume = out["volume"].to_numpy(np.float64)
    weights = volume if volume.sum() > 0 else np.ones(len(out))
    as_utc = regular_share(out.index, weights)
    if as_utc >= INSIDE_MIN:
        return
    wall = out.index.tz_localize(None)
    best, best_share = None, as_utc
    for zone in ZONE_GUESSES:
        local = wall.tz_localize(zone, ambiguous="NaT", nonexistent="NaT")
        ok = ~pd.isna(local)
        share = regular_share(local[ok], weights[ok]) * float(weights[ok].sum()) / float(weights.sum())
        if share > best_share + 1e-9:
            best, best_share = zone, share
    if best is not None and best_share >= GUESS_MIN:
        what = "volume" if volume.sum() > 0 else "bars"
        raise DataError(f"{p}: read as UTC (csv_tz auto), {1 - as_utc:.0%} of its {what} falls outside the "
                        f"regular sessions; its naive times look like {best} wall-clock times "
                        f"({best_share:.0%} inside): set csv_tz: {best} (or --csv-tz {best})")


def _parse_epoch(values: pd.Series) -> pd.DatetimeIndex:
    # Pick the unit from the magnitude of a typical value (2020 is ~1.6e9 s, 1.6e12 ms, 1.6e15 us, 1.6e18 ns).
    typical = float(values.abs().median()) if values.notna().any() else 0.0
    unit = "ns" if typical > 1e17 else "us" if typical > 1e14 else "ms" if typical > 1e11 else "s"
    return pd.DatetimeIndex(pd.to_datetime(values, unit=unit, utc=True, errors="coerce"))


def _parse_strings(col: pd.Series, p: Path) -> pd.DatetimeIndex:
    try:
        return pd.DatetimeIndex(pd.to_datetime(col, format="ISO8601", errors="coerce"))
    except (ValueError, TypeError) as exc:
        # Mixed UTC offsets (e.g. -04:00 and -05:00 across a DST change) or naive mixed with aware values.
        has_offset = col.str.contains(r"(?:Z|[+-]\d\d:?\d\d)$", regex=True, na=False)
        if has_offset.all():
            return pd.DatetimeIndex(pd.to_datetime(col, format="ISO8601", utc=True, errors="coerce"))
        if has_offset.any():
            first = int(np.flatnonzero(~has_offset.to_numpy())[0])
            raise DataError(f"{p}: time column mixes values with and without a UTC offset, e.g. "
                            f"{col.iloc[first]!r} at {_row_ref(p, first)}") from None
        raise DataError(f"{p}: cannot parse the time column: {first_line(exc)}") from None


def _numeric(col: pd.Series, p: Path, name: str) -> np.ndarray:
    values = pd.to_numeric(col, errors="coerce").astype("float64").to_numpy()
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise DataError(f"{p}: column {name!r} has a missing or non-numeric value {col.iloc[bad[0]]!r} at "
                        f"{_row_ref(p, int(bad[0]))}")
    return values


def _check_single_symbol(raw: pd.DataFrame, cols: dict[str, Any], p: Path, asked: str | None) -> None:
    if "symbol" in cols:
        symbols = pd.unique(raw[cols["symbol"]].dropna().astype(str).str.strip().str.upper())
        if len(symbols) > 1:
            raise DataError(f"{p}: the file holds several symbols ({', '.join(map(str, symbols[:5]))}); "
                            "keep one symbol per file")
        if asked is not None and len(symbols) == 1 and symbols[0] != asked.upper():
            raise SymbolMismatch(f"{p}: its symbol column says {symbols[0]}, but the run is for {asked.upper()}; "
                            f"give the {asked.upper()} bars file (or --symbol {symbols[0]})")


def _check_values(out: pd.DataFrame, p: Path) -> None:
    for name in ("open", "high", "low", "close"):
        bad = np.flatnonzero(out[name].to_numpy() <= 0)
        if len(bad):
            raise DataError(f"{p}: column {name!r} has a non-positive price {out[name].iloc[bad[0]]} at "
                            f"{_row_ref(p, int(bad[0]))}")
    bad = np.flatnonzero(out["volume"].to_numpy() < 0)
    if len(bad):
        raise DataError(f"{p}: negative volume at {_row_ref(p, int(bad[0]))}")


def _apply_label(out: pd.DataFrame, label: str, p: Path) -> pd.DataFrame:
    if label not in ("auto", "start", "end"):
        raise ValueError(f"label must be 'auto', 'start' or 'end', got {label!r}")
    if label == "auto":
        label = detect_label(out.index)
        log.debug("%s: bar labels detected as %s-of-bar", p.name, label)
    if label == "end":
        out = out.copy()
        out.index = out.index - ONE_MINUTE
    return out


def detect_label(index: pd.DatetimeIndex) -> str:
    """"end" when more sessions have a bar at the close minute but none at the open minute than sessions
    with a bar at the open minute; otherwise "start".  See read_bars_file."""
    present = set(index)
    cal = mcal.xnys()
    days = pd.DatetimeIndex(index).tz_convert(mcal.NY).tz_localize(None).normalize().unique()
    days = days[(days >= cal.first_session) & (days <= cal.last_session)]
    with_open = close_only = 0
    for day in days:
        if not cal.is_session(day):
            continue
        open_, close = cal.session_open(day), cal.session_close(day)
        if open_ in present:
            with_open += 1
        elif close in present:
            close_only += 1
    return "end" if close_only > with_open else "start"


def _sort_unique(out: pd.DataFrame, p: Path) -> pd.DataFrame:
    if not out.index.is_monotonic_increasing:
        log.debug("%s: rows were not in ascending time order; sorted them", p.name)
        out = out.sort_index(kind="stable")
    dup = out.index.duplicated(keep="first")
    if dup.any():
        first = out.index[dup][0]
        raise DataError(f"{p}: duplicated timestamp {first.isoformat()} (bar start, UTC)")
    return out


def _count_inconsistent(out: pd.DataFrame, p: Path) -> int:
    high_below, low_above = contradictory_prices(out)
    n = int((high_below | low_above).sum())
    if n:
        log.warning("%s: %d bar(s) have high/low inconsistent with open/close; kept as given", p.name, n)
    return n
