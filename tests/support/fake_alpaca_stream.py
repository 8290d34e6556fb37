"""A fake Alpaca market-data stream on 127.0.0.1 that alpaca-py's real StockDataStream talks to (url_override).

It speaks the protocol of /work/shared/notes/market-data.md: msgpack frames, each a list of messages; on connect
``[{"T": "success", "msg": "connected"}]``, then the client's auth (checked against the key pair), the
subscription acknowledged, then whatever bars the test pushes (``"T": "b"``, corrected bars ``"T": "u"``, the
time packed as a msgpack Timestamp). ``drop`` closes every connection; while ``refuse`` is set, new connections
are closed at once, so the client stays down until the test lets it back. With ``reject`` set to (code, message)
every auth is answered with that error, as Alpaca answers rejected keys (402 auth failed) or a second connection
of the account (406 connection limit exceeded); the error may echo the keys (``echo_keys``), as a proxy might.
"""
from __future__ import annotations

import asyncio
import threading
import time

import msgpack
import pandas as pd
from websockets.asyncio.server import serve


def bar_message(kind: str, symbol: str, minute: str | pd.Timestamp, o: float, h: float, l: float, c: float,
                v: float) -> dict:
    stamp = pd.Timestamp(minute)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return {"T": kind, "S": symbol, "o": o, "h": h, "l": l, "c": c, "v": v, "n": 10, "vw": c,
            "t": msgpack.Timestamp.from_datetime(stamp.to_pydatetime())}


class FakeAlpacaStream:
    def __init__(self, key: str, secret: str) -> None:
        self.key, self.secret = key, secret
        self.auths: list[dict] = []
        self.subscriptions: list[dict] = []
        self.connections = 0
        self.refuse = threading.Event()
        self.reject: tuple[int, str] | None = None
        self.echo_keys = False
        self._clients: set = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        self.url = f"ws://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._server = await serve(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._server.serve_forever()

        try:
            self._loop.run_until_complete(main())
        except asyncio.CancelledError:
            pass

    async def _handle(self, ws) -> None:
        self.connections += 1
        if self.refuse.is_set():
            await ws.close()
            return
        await ws.send(msgpack.packb([{"T": "success", "msg": "connected"}]))
        auth = msgpack.unpackb(await ws.recv())
        self.auths.append(auth)
        if self.reject is not None:
            code, text = self.reject
            if self.echo_keys:
                text = f"{text} (key {auth.get('key')}, secret {auth.get('secret')})"
            await ws.send(msgpack.packb([{"T": "error", "code": code, "msg": text}]))
            await ws.close()
            return
        if auth.get("action") != "auth" or (auth.get("key"), auth.get("secret")) != (self.key, self.secret):
            await ws.send(msgpack.packb([{"T": "error", "code": 402, "msg": "auth failed"}]))
            await ws.close()
            return
        await ws.send(msgpack.packb([{"T": "success", "msg": "authenticated"}]))
        self._clients.add(ws)
        try:
            async for raw in ws:
                msg = msgpack.unpackb(raw)
                if msg.get("action") == "subscribe":
                    self.subscriptions.append(msg)
                    await ws.send(msgpack.packb([{"T": "subscription", "trades": [], "quotes": [],
                                                  "bars": msg.get("bars", []),
                                                  "updatedBars": msg.get("updatedBars", [])}]))
        except Exception:  # noqa: BLE001 - a closed connection ends the handler
            pass
        finally:
            self._clients.discard(ws)

    # ------------------------------------------------------------------------------------ called by tests

    def _call(self, coro) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def send(self, *messages: dict) -> None:
        async def go() -> None:
            for ws in list(self._clients):
                await ws.send(msgpack.packb(list(messages), datetime=False))
        self._call(go())

    def drop(self) -> None:
        async def go() -> None:
            for ws in list(self._clients):
                await ws.close()
        self._call(go())

    def wait_subscribed(self, count: int = 1, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.subscriptions) < count or not self._clients:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no subscription #{count} within {timeout} s")
            time.sleep(0.01)

    def close(self) -> None:
        async def go() -> None:
            self._server.close()
            await self._server.wait_closed()
        try:
            self._call(go())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
