"""The live service's web app: the JSON API, Prometheus metrics, server-sent events and the one page.

Endpoints (all GET; with a token, every one requires ``Authorization: Bearer <token>`` or ``?token=``):
  /                  the page (candles, band, paths, P(up), risk, freshness, reliability; live over /stream;
                     ?static=1 draws it once with no stream, for a headless screenshot)
  /forecast          the latest summary JSON, exactly as the CLI writes it (?symbol=)
  /forecast/history  recent forecasts with their realised outcomes once known (?symbol=&limit=)
  /state             what the page draws for a symbol (summary, sample paths, today's candles, reliability,
                     the last bar's close, mode and speed)
  /health            mode ("live" or "replay") and a replay's speed, model loaded, last bar, its lag and feed state
                     (live / delayed / stale / replay), skipped minutes by reason, last error, the stream's state
                     ("degraded" while it is down or refuses the keys)
  /metrics           Prometheus text
  /stream            server-sent events: forecast, outcome, skip, error, health (?symbol= filters)
  /static/<file>     the page's script and style, and plotly.min.js from the installed plotly package

The app holds no market-data key; the token is compared in constant time and never echoed.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import math
from contextlib import asynccontextmanager
from functools import lru_cache
from importlib import resources
from typing import Any, AsyncIterator

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from live.hub import LiveHub

HEARTBEAT_S = 15.0   # an SSE comment this often keeps proxies from closing an idle stream
HISTORY_MAX = 1000
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
          "plotly.min.js": "text/javascript; charset=utf-8"}


class _Error(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        self.status, self.message, self.headers = status, message, headers


def json_safe(value: Any) -> Any:
    """The value with NaN / infinities as None: JSON has no NaN, and a browser's JSON.parse rejects it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _json(value: Any, status: int = 200) -> Response:
    body = json.dumps(json_safe(value), allow_nan=False, separators=(",", ":"))
    return Response(body, status_code=status, media_type="application/json")


@lru_cache(maxsize=None)
def static_file(name: str) -> bytes:
    """A static asset: plotly.min.js from the plotly package itself (no CDN), the rest from web/static."""
    if name == "plotly.min.js":
        return (resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()
    return (resources.files("web") / "static" / name).read_bytes()


def create_app(hub: LiveHub, token: str | None = None) -> FastAPI:
    """The FastAPI app over ``hub``; with ``token`` every endpoint requires it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hub.attach_loop(asyncio.get_running_loop())
        yield

    app = FastAPI(title="Kronos live forecast", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.exception_handler(_Error)
    async def _on_error(request: Request, exc: _Error) -> Response:
        body = json.dumps({"error": exc.message})
        return Response(body, status_code=exc.status, media_type="application/json", headers=exc.headers)

    def authorised(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header[:7].lower() == "bearer " else request.query_params.get("token", "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise _Error(401, "missing or wrong token: send 'Authorization: Bearer <token>' or ?token=",
                         {"WWW-Authenticate": "Bearer"})

    def symbol_of(symbol: str | None) -> str:
        name = (symbol or hub.symbols[0]).upper()
        if name not in hub.symbols:
            raise _Error(404, f"unknown symbol {name!r}; this service forecasts {', '.join(hub.symbols)}")
        return name

    guard = [Depends(authorised)]

    @app.get("/", dependencies=guard, response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(static_file("index.html").decode(), headers={"Cache-Control": "no-store"})

    @app.get("/static/{name}", dependencies=guard)
    async def static(name: str) -> Response:
        if name not in STATIC:
            raise _Error(404, f"no static file {name!r}")
        return Response(static_file(name), media_type=STATIC[name], headers={"Cache-Control": "max-age=3600"})

    @app.get("/forecast", dependencies=guard)
    async def forecast(symbol: str | None = None) -> Response:
        name = symbol_of(symbol)
        latest = hub.latest(name)
        if latest is None:
            raise _Error(404, f"no forecast for {name} yet")
        return _json(latest)

    @app.get("/forecast/history", dependencies=guard)
    async def history(symbol: str | None = None, limit: int = Query(100, ge=1, le=HISTORY_MAX)) -> Response:
        name = symbol_of(symbol)
        return _json({"symbol": name, "forecasts": hub.history(name, limit)})

    @app.get("/state", dependencies=guard)
    async def state(symbol: str | None = None) -> Response:
        return _json({"symbols": hub.symbols, **hub.page_state(symbol_of(symbol))})

    @app.get("/health", dependencies=guard)
    async def health() -> Response:
        return _json({"symbols_served": hub.symbols, **hub.health()})

    @app.get("/metrics", dependencies=guard)
    async def metrics() -> Response:
        return Response(generate_latest(hub.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/stream", dependencies=guard)
    async def stream(request: Request, symbol: str | None = None) -> StreamingResponse:
        only = symbol_of(symbol) if symbol else None
        queue = hub.subscribe()

        async def events() -> AsyncIterator[str]:
            try:
                yield "retry: 3000\n\n"
                while not hub.closed and not await request.is_disconnected():
                    try:
                        event = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                    except asyncio.TimeoutError:
                        yield ": ping\n\n"
                        continue
                    if event["event"] == "close":
                        return
                    message = _sse_message(hub, event, only)
                    if message is not None:
                        yield message
            finally:
                hub.unsubscribe(queue)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return app


def _sse_message(hub: LiveHub, event: dict, only: str | None) -> str | None:
    """One SSE message for a hub event; forecasts and outcomes carry the symbol's whole page state."""
    kind = event["event"]
    symbol = event.get("symbol")
    if only is not None and symbol is not None and symbol != only:
        return None
    if kind in ("forecast", "outcome"):
        data: Any = hub.page_state(symbol)
    elif kind == "health":
        data = hub.health()
    else:
        data = {k: v for k, v in event.items() if k != "event"}
    return f"event: {kind}\ndata: {json.dumps(json_safe(data), allow_nan=False, separators=(',', ':'))}\n\n"
