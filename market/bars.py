"""Canonical 1-minute bar frames: file reading, the Alpaca source, the SIP fallback and credentials.

Canonical frame: a DataFrame whose index is a tz-aware UTC DatetimeIndex named "timestamp" (the bar's START
minute, ns resolution), with float64 columns open, high, low, close, volume; sorted ascending and unique.
"""

from __future__ import annotations

import functools
import json
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from market import calendar as mcal

log = logging.getLogger(__name__)

COLUMNS = ("open", "high", "low", "close", "volume")
ONE_MINUTE = pd.Timedelta(minutes=1)


class DataError(ValueError):
    """Bad or unusable input data (one line naming the problem, file and row/column where known)."""


class NoDataError(RuntimeError):
    """The source returned nothing usable."""


class DataSourceError(RuntimeError):
    """The data API could not be used: network failure, HTTP error, rejected keys, malformed body."""


class SubscriptionError(DataSourceError):
    """The plan does not permit the request (Alpaca's free plan asking for SIP data of the last 15 minutes)."""


# ---------------------------------------------------------------------------------------------- canonical frame

def empty_frame() -> pd.DataFrame:
    idx = pd.DatetimeIndex([], tz="UTC", name="timestamp").as_unit("ns")
    return pd.DataFrame({c: pd.Series([], dtype="float64", index=idx) for c in COLUMNS}, index=idx)


def canonical(frame: pd.DataFrame) -> pd.DataFrame:
    """Column order, dtypes and index name/unit of the canonical frame (no validation)."""
    out = frame.loc[:, list(COLUMNS)].astype("float64")
    out.index = pd.DatetimeIndex(out.index).as_unit("ns").rename("timestamp")
    return out


# ------------------------------------------------------------------------------------------------ file reading

_TIME_NAMES = ("timestamp", "datetime", "date", "time", "t")
_ALIASES = {
    "open": ("open", "o"),
    "high": ("high", "h"),
    "low": ("low", "l"),
    "close": ("close", "c"),
    "volume": ("volume", "v", "vol"),
}


def read_bars_file(path: str | Path, tz: str = "auto", label: str = "auto") -> pd.DataFrame:
    """Read a CSV (.csv, .csv.gz) or Parquet (.parquet, .pq) file of 1-minute bars into a canonical frame.

    Columns (names case-insensitive, extra columns ignored): a time column named timestamp, datetime, date,
    time or t (first found; for Parquet a DatetimeIndex also works), open/o, high/h, low/l, close/c and
    volume/v/vol.  A missing volume column is filled with 0 and a UserWarning is issued (VWAP then is
    meaningless); any other missing column is a DataError.  A "symbol" column with more than one value is a
    DataError.  Integer time columns are epoch seconds/ms/us/ns (chosen by magnitude), UTC.

    tz: how naive timestamps are read.  "auto" = UTC (Alpaca, Polygon and most APIs export UTC); pass an IANA
        name such as "America/New_York" for wall-clock files.  Aware timestamps are kept as given (tz ignored).
    label: "start" (bar labelled by its first minute, our convention), "end" (labelled by its closing minute;
        shifted back 1 minute), or "auto": end-labelled when, over the file's XNYS sessions, more sessions have
        a bar at the regular close minute (16:00 ET, 13:00 on half days) but none at the open minute (09:30 ET)
        than sessions that have the 09:30 bar.  This recognises RTH-only files labelled 09:31..16:00;
        an extended-hours file always has both minutes and is read as start-labelled, so an end-labelled
        extended-hours file needs label="end".

    Rows may come in any order (they are sorted; a debug log says so).  Duplicate timestamps, unparseable
    times, times not on whole minutes, NaN/non-numeric or non-positive prices, NaN/negative volume and an
    empty file raise DataError.  Bars with high < low or open/close outside [low, high] are kept (vendors do
    emit them after late-trade corrections); their number is logged as a warning and stored in
    frame.attrs["inconsistent_bars"].
    """
    p = Path(path)
    raw = _read_table(p)
    cols = {str(c).strip().lower(): c for c in raw.columns}
    times = _parse_times(_time_column(raw, cols, p), p, tz)
    out = pd.DataFrame(index=pd.DatetimeIndex(times, name="timestamp"))
    _check_single_symbol(raw, cols, p)
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
        raise DataError(f"{p}: cannot be read: {_first_line(exc)}") from None
    if raw.empty:
        raise DataError(f"{p}: the file has no data rows")
    return raw


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


def _parse_times(col: pd.Series, p: Path, tz: str) -> pd.DatetimeIndex:
    if pd.api.types.is_datetime64_any_dtype(col):
        parsed = pd.DatetimeIndex(col)
    elif pd.api.types.is_numeric_dtype(col) or col.astype(str).str.fullmatch(r"\d{9,19}").all():
        parsed = _parse_epoch(pd.to_numeric(col, errors="coerce"))
    else:
        parsed = _parse_strings(col.astype("string").str.strip(), p)
    bad = np.flatnonzero(pd.isna(parsed))
    if len(bad):
        raise DataError(f"{p}: unparseable time {col.iloc[bad[0]]!r} at {_row_ref(p, int(bad[0]))}")
    if parsed.tz is None:
        zone = "UTC" if tz == "auto" else tz
        try:
            parsed = parsed.tz_localize(zone, ambiguous="NaT", nonexistent="NaT")
        except Exception as exc:  # unknown zone name
            raise DataError(f"{p}: cannot use timezone {tz!r}: {_first_line(exc)}") from None
        bad = np.flatnonzero(pd.isna(parsed))
        if len(bad):
            raise DataError(f"{p}: time {col.iloc[bad[0]]!r} at {_row_ref(p, int(bad[0]))} does not exist or is "
                            f"ambiguous in {zone} (DST change)")
    parsed = parsed.tz_convert("UTC")
    off = np.flatnonzero(parsed != parsed.floor("min"))
    if len(off):
        raise DataError(f"{p}: time {col.iloc[off[0]]!r} at {_row_ref(p, int(off[0]))} is not on a whole minute")
    return parsed


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
        raise DataError(f"{p}: cannot parse the time column: {_first_line(exc)}") from None


def _numeric(col: pd.Series, p: Path, name: str) -> np.ndarray:
    values = pd.to_numeric(col, errors="coerce").astype("float64").to_numpy()
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise DataError(f"{p}: column {name!r} has a missing or non-numeric value {col.iloc[bad[0]]!r} at "
                        f"{_row_ref(p, int(bad[0]))}")
    return values


def _check_single_symbol(raw: pd.DataFrame, cols: dict[str, Any], p: Path) -> None:
    if "symbol" in cols:
        symbols = raw[cols["symbol"]].dropna().unique()
        if len(symbols) > 1:
            raise DataError(f"{p}: the file holds several symbols ({', '.join(map(str, symbols[:5]))}); "
                            "keep one symbol per file")


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
    o, h, lo, c = (out[k].to_numpy() for k in ("open", "high", "low", "close"))
    bad = (h < lo) | (o > h) | (o < lo) | (c > h) | (c < lo)
    n = int(bad.sum())
    if n:
        log.warning("%s: %d bar(s) have high/low inconsistent with open/close; kept as given", p.name, n)
    return n


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ------------------------------------------------------------------------------------------------- credentials

@dataclass(frozen=True)
class Credentials:
    """An Alpaca key pair; repr/str never show the secret (only the key id's last 4 characters)."""

    key_id: str
    secret_key: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(key_id='…{self.key_id[-4:]}', secret_key=<hidden>)"

    __str__ = __repr__


def credentials_from_env(environ: Mapping[str, str]) -> Optional[Credentials]:
    """ALPACA_KEY_ID / ALPACA_SECRET_KEY (the plan's names), else APCA_API_KEY_ID / APCA_API_SECRET_KEY
    (Alpaca's own); None when neither pair is complete.  Blank values count as unset."""
    for key_var, secret_var in (("ALPACA_KEY_ID", "ALPACA_SECRET_KEY"), ("APCA_API_KEY_ID", "APCA_API_SECRET_KEY")):
        key, secret = environ.get(key_var, "").strip(), environ.get(secret_var, "").strip()
        if key and secret:
            return Credentials(key, secret)
    return None


# ------------------------------------------------------------------------------------------------------ Alpaca

FEEDS = ("iex", "sip")
ADJUSTMENTS = ("raw", "split", "dividend", "all")
RECENT_SIP_CODE = 42210000


def _quiet_import_alpaca() -> Any:
    # alpaca.data imports websockets.legacy, which warns on import; that is not ours to fix.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from alpaca.data.enums import Adjustment, DataFeed
        from alpaca.data.historical import StockHistoricalDataClient
        from alpaca.data.requests import StockBarsRequest
        from alpaca.data.timeframe import TimeFrame
    return StockHistoricalDataClient, StockBarsRequest, TimeFrame, DataFeed, Adjustment


class AlpacaBarSource:
    """1-minute bars from Alpaca's historical API through alpaca-py's StockHistoricalDataClient.

    feed: "iex" (free plan, real time, one venue) or "sip" (consolidated; free plan only when older than
        15 minutes, see fetch_with_fallback).  The feed is always sent.
    adjustment: "split" by default: prices match what traded today and stay continuous across splits, while
        dividend adjustment would shift older prices away from live quotes.
    timeout_s: per-HTTP-request timeout (alpaca-py sets none, and a cron job must not hang).
    retry_attempts / retry_wait_s: the client retries HTTP 429 and 504 this many times, sleeping this long.
    max_pages: a fetch that pages more than this raises DataSourceError (an empty next_page_token ends paging).
    """

    def __init__(self, api_key: str, secret_key: str, feed: str = "iex", url_override: Optional[str] = None,
                 adjustment: str = "split", timeout_s: float = 30.0, retry_attempts: int = 3,
                 retry_wait_s: float = 3.0, max_pages: int = 50) -> None:
        if feed not in FEEDS:
            raise ValueError(f"feed must be one of {FEEDS}, got {feed!r}")
        if adjustment not in ADJUSTMENTS:
            raise ValueError(f"adjustment must be one of {ADJUSTMENTS}, got {adjustment!r}")
        self.credentials = Credentials(api_key, secret_key)
        self.feed = feed
        self.url_override = url_override
        self.adjustment = adjustment
        self.timeout_s = timeout_s
        self.retry_attempts = retry_attempts
        self.retry_wait_s = retry_wait_s
        self.max_pages = max_pages
        self._pages = 0
        self._client: Any = None

    def __repr__(self) -> str:
        where = f", url_override={self.url_override!r}" if self.url_override else ""
        return f"AlpacaBarSource(feed={self.feed!r}, adjustment={self.adjustment!r}{where}, {self.credentials!r})"

    def _get_client(self) -> Any:
        if self._client is None:
            client_cls = _quiet_import_alpaca()[0]
            client = client_cls(self.credentials.key_id, self.credentials.secret_key, url_override=self.url_override)
            # The constructor ignores a zero wait, so set the retry knobs on the instance (RESTClient attributes).
            client._retry = max(0, int(self.retry_attempts))
            client._retry_wait = max(0.0, float(self.retry_wait_s))
            client._session.request = functools.partial(client._session.request, timeout=self.timeout_s)
            client.get = self._guard_pages(client.get)
            self._client = client
        return self._client

    def _guard_pages(self, get: Any) -> Any:
        # The client pages until next_page_token is None: an empty-string token, or a server that never stops,
        # would loop forever inside a cron job.  Three days of minutes fit in one 10,000-bar page.
        def guarded(path: str, data: Any = None, **kwargs: Any) -> Any:
            self._pages += 1
            if self._pages > self.max_pages:
                raise DataSourceError(f"Alpaca kept paging past {self.max_pages} pages; giving up")
            response = get(path, data, **kwargs)
            if isinstance(response, dict) and response.get("next_page_token") == "":
                response["next_page_token"] = None
            return response
        return guarded

    def fetch(self, symbol: str, start_utc: mcal.TimeLike, end_utc: mcal.TimeLike,
              feed: Optional[str] = None) -> pd.DataFrame:
        """Bars with start in [start_utc, end_utc) as a canonical frame (empty when Alpaca has none).

        The client follows next_page_token itself.  Raises SubscriptionError (recent-SIP 403) or
        DataSourceError (rejected keys, HTTP errors, network failures, malformed bodies).
        """
        feed = feed or self.feed
        if feed not in FEEDS:
            raise ValueError(f"feed must be one of {FEEDS}, got {feed!r}")
        start, end = mcal.to_utc(start_utc), mcal.to_utc(end_utc)
        if end <= start:
            return empty_frame()
        _, request_cls, timeframe, data_feed, adjustment = _quiet_import_alpaca()
        request = request_cls(
            symbol_or_symbols=symbol, timeframe=timeframe.Minute, start=start.to_pydatetime(),
            # Alpaca's end is inclusive; ask up to the last minute start wanted.
            end=(end - pd.Timedelta(microseconds=1)).floor("min").to_pydatetime(),
            feed=data_feed(feed), adjustment=adjustment(self.adjustment),
        )
        self._pages = 0
        barset = self._call(lambda: self._get_client().get_stock_bars(request), feed)
        frame = _barset_frame(barset, symbol)
        return frame[(frame.index >= start) & (frame.index < end)]

    def _call(self, fn: Any, feed: str) -> Any:
        import requests
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from alpaca.common.exceptions import APIError
        try:
            return fn()
        except APIError as exc:
            raise _map_api_error(exc, feed) from None
        except requests.exceptions.JSONDecodeError as exc:
            # Also a RequestException, but the server did answer: the body is not JSON.
            raise DataSourceError(f"malformed response from Alpaca (not JSON): {_first_line(exc)[:200]}") from None
        except requests.exceptions.RequestException as exc:
            raise DataSourceError(f"cannot reach Alpaca ({type(exc).__name__}): "
                                  f"{_first_line(exc)[:200]}") from None
        except (ValueError, TypeError, KeyError) as exc:
            # JSON decode errors and pydantic validation errors are ValueErrors; a body that is not an
            # object fails inside the client with TypeError/KeyError.
            raise DataSourceError(f"malformed response from Alpaca ({type(exc).__name__}): "
                                  f"{_first_line(exc)[:200]}") from None


def _map_api_error(exc: Exception, feed: str) -> DataSourceError:
    status = getattr(exc, "status_code", None)
    body = str(exc)
    try:
        parsed = json.loads(body)
        message, code = str(parsed.get("message", "")), parsed.get("code")
    except (ValueError, AttributeError):
        message, code = body.strip()[:200], None
    if status == 403 and (code == RECENT_SIP_CODE or "recent sip" in message.lower()):
        return SubscriptionError(f"Alpaca refused {feed.upper()} data of the last 15 minutes (HTTP 403: {message}); "
                                 "the free plan only has delayed SIP")
    if status in (401, 403):
        return DataSourceError(f"Alpaca rejected the API keys (HTTP {status}: {message or 'no message'}); "
                               "check ALPACA_KEY_ID / ALPACA_SECRET_KEY")
    if status == 429:
        return DataSourceError(f"Alpaca rate limit hit (HTTP 429) after retries: {message}")
    return DataSourceError(f"Alpaca API error (HTTP {status}): {message or 'no message'}")


def _barset_frame(barset: Any, symbol: str) -> pd.DataFrame:
    bars = getattr(barset, "data", {}).get(symbol, [])
    if not bars:
        return empty_frame()
    idx = pd.DatetimeIndex([pd.Timestamp(b.timestamp) for b in bars], name="timestamp")
    idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    frame = pd.DataFrame({c: [float(getattr(b, c)) for b in bars] for c in COLUMNS}, index=idx)
    frame = canonical(frame)
    if not frame.index.is_monotonic_increasing:
        frame = frame.sort_index(kind="stable")
    # Pages should not overlap; if they ever do, keep the later copy (a revised bar).
    return frame[~frame.index.duplicated(keep="last")]


# ---------------------------------------------------------------------------------------------------- fallback

FALLBACK_POLICIES = ("iex", "delayed", "error")
SIP_DELAY = pd.Timedelta(minutes=15)


@dataclass(frozen=True)
class FetchResult:
    """Bars plus where they came from.

    feed: the feed the bars came from.  delayed: True when SIP was cut 15 minutes before now.
    asof: the instant the data is complete up to; pass it to prepare_bars (earlier than now when delayed).
    note: one line for the log/artifacts when a fallback happened, else None.
    """

    frame: pd.DataFrame
    feed: str
    delayed: bool
    asof: pd.Timestamp
    note: Optional[str] = None

    def provenance(self) -> dict[str, Any]:
        return {"feed": self.feed, "delayed": self.delayed, "asof": self.asof.isoformat(), "note": self.note}


def fetch_with_fallback(source: AlpacaBarSource, symbol: str, start: mcal.TimeLike, end: mcal.TimeLike,
                        now: mcal.TimeLike, policy: str = "iex") -> FetchResult:
    """Fetch [start, end) from source.feed; when SIP is refused for recent data (SubscriptionError):

    policy "iex":     refetch the same range from IEX (real time, thinner volume); feed="iex".
    policy "delayed": refetch SIP ending 15 minutes before now (floored to the minute); delayed=True and
                      asof = that cut, so the caller treats the newest 15 minutes as not yet known.
    policy "error":   re-raise the SubscriptionError.
    Other errors are never retried here.  The frame may be empty; the caller decides (NoDataError/skip).
    """
    if policy not in FALLBACK_POLICIES:
        raise ValueError(f"policy must be one of {FALLBACK_POLICIES}, got {policy!r}")
    start_t, end_t, now_t = mcal.to_utc(start), mcal.to_utc(end), mcal.to_utc(now)
    asof = min(end_t, now_t)
    try:
        return FetchResult(source.fetch(symbol, start_t, end_t), source.feed, False, asof)
    except SubscriptionError as exc:
        if policy == "error" or source.feed != "sip":
            raise
        refused = str(exc)
    if policy == "iex":
        note = "SIP refused for recent data; used the IEX feed instead"
        log.warning("%s (%s)", note, refused)
        return FetchResult(source.fetch(symbol, start_t, end_t, feed="iex"), "iex", False, asof, note)
    cut = min(end_t, (now_t - SIP_DELAY).floor("min"))
    note = f"SIP refused for recent data; used SIP delayed 15 minutes (data up to {cut.isoformat()})"
    log.warning("%s (%s)", note, refused)
    frame = source.fetch(symbol, start_t, cut, feed="sip") if cut > start_t else empty_frame()
    return FetchResult(frame, "sip", True, cut, note)
