"""Where each forecast goes: the CLI's files, the hub (the page's SSE and the API), and Redis when configured.

Files are written by forecast.publish exactly as the CLI writes them (all or nothing, the run-log row last);
with ``timestamped_files`` off only the ``_latest`` copies and the run log are kept.
Redis runs on its own thread with the latest message per symbol pending, so an outage never delays a forecast:
it is logged once, counted on the hub and retried with back-off until the server answers again.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from forecast.owned import Owner, check, claim
from forecast.publish import preflight, publish
from marketdata.frame import first_line
from marketdata.redact import redact_text, redact_url

log = logging.getLogger(__name__)
# What the service writes in live_out: the CLI's files (the _latest copies, the timestamped ones, charts, the run
# logs), its lock and the probe of a writable folder. It never deletes, so a folder of only such files written
# before the marker existed (the service's own, or cron's) is taken over.
SERVE = Owner("serve.py", {"pred_summary_*.json": None, "paths_*.csv": None, "fan_*.png": None, "runs_*.csv": None,
                           ".serve.lock": None, ".probe.*.tmp": None}, lambda folder: True)


class RedisPublisher:
    """PUBLISH each summary on ``<prefix>:<SYMBOL>`` and SET it under ``<prefix>:<SYMBOL>:latest``, in one
    MULTI/EXEC, from a background thread. Only the newest message per symbol waits during an outage."""

    def __init__(self, url: str, prefix: str, hub: Any, timeout_s: float = 2.0, max_backoff_s: float = 30.0) -> None:
        import redis

        self.url, self.prefix, self.hub = url, prefix, hub
        self.max_backoff_s = max_backoff_s
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.sent = 0
        self._pending: dict[str, bytes] = {}
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="redis", daemon=True)
        self._thread.start()

    def channel(self, symbol: str) -> str:
        return f"{self.prefix}:{symbol}"

    def key(self, symbol: str) -> str:
        return f"{self.prefix}:{symbol}:latest"

    def submit(self, symbol: str, body: bytes) -> None:
        with self._cond:
            self._pending[symbol] = body  # one superseded before it could be sent (outage): the newest wins
            self._cond.notify_all()

    def close(self, timeout: float = 5.0) -> None:
        """Send what is pending (within ``timeout``), then stop."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending and time.monotonic() < deadline and self._thread.is_alive():
                self._cond.wait(0.05)
            self._stop = True
            self._cond.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()) + 0.5)
        self.client.close()

    def _run(self) -> None:
        backoff, down_since = 0.5, None
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._stop)
                if self._stop:
                    return
                batch, self._pending = self._pending, {}
            try:
                pipe = self.client.pipeline(transaction=True)
                for symbol, body in batch.items():
                    pipe.set(self.key(symbol), body)
                    pipe.publish(self.channel(symbol), body)
                pipe.execute()
            except Exception as exc:  # noqa: BLE001 - any Redis failure: count it, keep the message, retry
                message = f"{redact_url(self.url)}: {type(exc).__name__}: {redact_text(first_line(exc))}"
                self.hub.on_output_error("redis", message)
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("redis: cannot publish (%s); forecasting goes on, retrying", message)
                with self._cond:
                    for symbol, body in batch.items():
                        self._pending.setdefault(symbol, body)  # a newer message wins
                    self._cond.wait_for(lambda: self._stop, timeout=backoff)
                backoff = min(self.max_backoff_s, backoff * 2)
                continue
            if down_since is not None:
                log.info("redis: publishing again after %.0f s", time.monotonic() - down_since)
                down_since = None
            backoff = 0.5
            with self._cond:
                self.sent += len(batch)
                self._cond.notify_all()


class Outputs:
    """Fans one forecast out: files first (the CLI's contract), then Redis (handed to its thread) and the hub."""

    def __init__(self, out_dir: str | Path, hub: Any, *, timestamped: bool = False,
                 redis: RedisPublisher | None = None) -> None:
        self.out = Path(out_dir)
        self.hub, self.timestamped, self.redis = hub, timestamped, redis

    def preflight(self, symbols: list[str]) -> None:
        """Every check that can fail before the service starts (SettingsError naming the problem), the folder's
        ownership among them (exit 2 when it holds anything the service did not write); nothing is written."""
        check(self.out, SERVE, "--live-out")
        for symbol in symbols:
            preflight(self.out, symbol)

    def claim(self) -> None:
        """Mark the folder as the service's, once its lock is held (a run refused by the lock writes nothing)."""
        claim(self.out, SERVE, "--live-out")

    def publish(self, symbol: str, fc: Any, latency_start: float) -> dict[str, Any]:
        """Send the forecast everywhere; returns the summary JSON document (the one every output carries)."""
        try:
            body = publish(self.out, symbol, fc, timestamped=self.timestamped).summary
        except Exception as exc:  # noqa: BLE001 - a full disk must not stop the page or Redis
            log.error("files: cannot write the forecast of %s: %s", symbol, first_line(exc))
            self.hub.on_output_error("files", first_line(exc))
            body = (json.dumps(fc.summary, indent=2, allow_nan=False) + "\n").encode()
        document = json.loads(body)
        if self.redis is not None:
            self.redis.submit(symbol, body)
        self.hub.on_forecast(symbol, document, fc.paths[:, :, 3], time.monotonic() - latency_start,
                             context=fc.context)
        return document

    def close(self) -> None:
        if self.redis is not None:
            self.redis.close()
