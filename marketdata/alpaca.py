"""Alpaca minute bars through alpaca-py: credentials, the paged fetch with its error mapping, the SIP fallback."""

from __future__ import annotations

import functools
import json
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import pandas as pd

from marketdata import calendar as mcal
from marketdata.frame import COLUMNS, DataSourceError, SubscriptionError, first_line, canonical, empty_frame
from marketdata.redact import redact_text

log = logging.getLogger(__name__)

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
        frame = _barset_frame(barset, symbol)  # ours: a bug here is a traceback, not Alpaca's fault
        return frame[(frame.index >= start) & (frame.index < end)]

    def _call(self, fn: Any, feed: str) -> Any:
        import requests
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from alpaca.common.exceptions import APIError
        keys = (self.credentials.key_id, self.credentials.secret_key)
        try:
            return fn()
        except APIError as exc:
            raise _map_api_error(exc, feed, keys) from None
        except requests.exceptions.JSONDecodeError as exc:
            # Also a RequestException, but the server did answer: the body is not JSON.
            raise DataSourceError(f"malformed response from Alpaca (not JSON): {_shown(exc, keys)}") from None
        except requests.exceptions.RequestException as exc:
            raise DataSourceError(f"cannot reach Alpaca ({type(exc).__name__}): {_shown(exc, keys)}") from None
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            # JSON decode errors and pydantic validation errors are ValueErrors; a body of the wrong shape
            # ("bars" a list or null, a bar that is not an object) fails inside the client with the others.
            raise DataSourceError(f"malformed response from Alpaca ({type(exc).__name__}): "
                                  f"{_shown(exc, keys)}") from None


def _shown(exc: BaseException, keys: tuple[str, str]) -> str:
    """An upstream error fit for the one line: the keys' values and anything key-like masked, bounded length
    (a proxy or a server may echo the request, headers and all)."""
    return redact_text(first_line(exc), secrets=keys, limit=200)


def _map_api_error(exc: Exception, feed: str, keys: tuple[str, str] = ("", "")) -> DataSourceError:
    status = getattr(exc, "status_code", None)
    body = str(exc)
    try:
        parsed = json.loads(body)
        message, code = str(parsed.get("message", "")), parsed.get("code")
    except (ValueError, AttributeError):
        message, code = body.strip(), None
    message = redact_text(" ".join(message.split()), secrets=keys, limit=200)
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
