"""The live service put together: config -> the model, loaded once -> hub -> web app -> bar source -> the
forecasting loop -> outputs. ``Service.start`` does everything that can fail before anything runs, so a bad
setting, a missing checkpoint or a port in use ends the program with its one-line error and exit code."""
from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from live.book import BarBook
from live.clock import ReplayClock, WallClock
from live.loop import ForecastLoop
from live.outputs import Outputs, RedisPublisher
from forecast.errors import ConfigError
from marketdata.redact import redact_url

log = logging.getLogger(__name__)
TOKEN_ENV = "KRONOS_SERVE_TOKEN"
STREAM_URL_ENV = "ALPACA_STREAM_URL"  # tests point the stream and REST clients at local fakes
REST_URL_ENV = "ALPACA_DATA_URL"


@dataclass
class Replay:
    files: dict[str, str]           # symbol -> bars file
    start: pd.Timestamp | None      # --from (None: the open of the file's last session)
    speed: float = 60.0


# What the application hands the service: the web server to start on the bound socket (web.server.start_web)
# and the run lock (app.operation.run_lock). Both live above this package, so they come in as callables.
WebStarter = Callable[[Any, "str | None", socket.socket, "list[threading.Thread]"], Any]
RunLock = Callable[[Path], AbstractContextManager[None]]


@dataclass
class Service:
    cfg: Any
    replay: Replay | None
    start_web: WebStarter
    run_lock: RunLock
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.symbols = symbols_of(self.cfg)
        self.token = listen_token(self.cfg.host, self.environ)
        # live needs the keys: refused here, before the port, the folder, the lock or the model
        self.credentials = None if self.replay is not None else alpaca_credentials(self.environ)
        self.threads: list[threading.Thread] = []
        self.server: Any = None
        self.source: Any = None
        self.outputs: Outputs | None = None
        self.port: int | None = None
        self._held = ExitStack()  # the lock, released by close()

    # --------------------------------------------------------------------------------------------- start

    def start(self) -> None:
        sock = listen_socket(self.cfg.host, self.cfg.port)  # the port is taken before the model loads, or never
        try:
            self._start(sock)
        except BaseException:
            if self.server is None:  # the web server owns the socket once it runs; until then it is ours
                sock.close()
            raise

    def _start(self, sock: socket.socket) -> None:
        from forecast.pipeline import ForecastPipeline
        from live.hub import LiveHub

        cfg = self.cfg
        self.port = sock.getsockname()[1]
        out = Path(cfg.live_out)
        frames, start = self._replay_frames()
        configs = {s: cfg.replace(symbol=s) for s in self.symbols}
        base = ForecastPipeline(configs[self.symbols[0]])  # a bad calibrator file fails here, before the lock
        self.hub = hub = LiveHub(self.symbols, history=cfg.history, rth=cfg.rth,
                                   mode="live" if self.replay is None else "replay",
                                   speed=None if self.replay is None else self.replay.speed)
        redis = RedisPublisher(cfg.redis_url, cfg.redis_prefix, hub) if cfg.redis_url else None
        self.outputs = Outputs(out, hub, timestamped=cfg.timestamped_files, redis=redis)
        self.outputs.preflight(self.symbols)
        self._held.enter_context(self.run_lock(out / ".serve.lock"))  # one service per folder (exit 6 for two)
        self.outputs.claim()

        load_s = base.load()
        # one engine and one calibrator, shared: the model is loaded once
        pipelines = {s: ForecastPipeline(c, sampler=base.sampler, calibrator=base.calibrator)
                     for s, c in configs.items()}
        from live.online import OnlineKeeper

        for s, p in pipelines.items():  # online calibration: the hub resolves outcomes, the pipeline reads the state
            hub.on_outcome[s.upper()] = OnlineKeeper(out, s, p).on_outcome
        hub.set_model({**base.engine_info(), "load_s": round(load_s, 3)})
        log.info("model %s loaded on %s in %.1f s", cfg.model, base.sampler.device, load_s)

        self.server = self.start_web(hub, self.token, sock, self.threads)
        log.info("web page on http://%s:%d/%s", cfg.host, self.port, "" if self.token is None else
                 " (token required)")
        if redis is not None:
            log.info("publishing to Redis %s on %s:<SYMBOL>", redact_url(cfg.redis_url), cfg.redis_prefix)

        self.clock = WallClock() if frames is None else ReplayClock(start, self.replay.speed)
        self.book = BarBook(self.symbols, on_change=lambda s, f: hub.on_bars(s, f, self.clock.now()), days=cfg.days)
        provenance = self._provenance()
        if frames is None:
            self.source = self._alpaca_source()
        else:
            from live.playback import ReplaySource

            self.source = ReplaySource(frames, self.book, self.clock, cfg.rth, self.stop)
            log.info("replaying from %s at %gx", start.isoformat(), self.replay.speed)
        self.source.start()
        self.loop = ForecastLoop(pipelines, self.book, self.clock, self.outputs, hub, budget_s=cfg.time_budget,
                                 rth=cfg.rth, provenance=provenance, stop=self.stop)
        thread = threading.Thread(target=self.loop.run, name="forecast", daemon=True)
        thread.start()
        self.threads.append(thread)

    def _replay_frames(self) -> tuple[dict[str, pd.DataFrame] | None, pd.Timestamp | None]:
        if self.replay is None:
            return None, None
        from live.playback import load_replay

        return load_replay(self.replay.files, self.replay.start, tz=self.cfg.csv_tz, label=self.cfg.csv_label)

    def _provenance(self) -> dict[str, dict[str, Any]]:
        if self.replay is not None:
            return {s: {"source": "replay", "file": os.path.abspath(self.replay.files[s]), "feed": None,
                        "delayed": False, "speed": self.replay.speed} for s in self.symbols}
        return {s: {"source": "alpaca-stream", "feed": self.cfg.feed, "delayed": False} for s in self.symbols}

    def _alpaca_source(self) -> Any:
        from live.sources import AlpacaLiveSource

        cfg = self.cfg
        return AlpacaLiveSource(self.symbols, self.book, self.clock, self.hub, self.credentials, feed=cfg.feed,
                                sip_fallback=cfg.sip_fallback, days=cfg.days, rth=cfg.rth, stop=self.stop,
                                rest_url=self.environ.get(REST_URL_ENV) or None,
                                stream_url=self.environ.get(STREAM_URL_ENV) or None,
                                poll_delay_s=cfg.poll_delay)

    # --------------------------------------------------------------------------------------------- run, stop

    def wait(self) -> None:
        """Block until stopped (Ctrl-C or SIGTERM arrive here as KeyboardInterrupt) or a worker died."""
        while not self.stop.wait(0.5):
            dead = [t.name for t in self.threads if not t.is_alive()]
            if dead:
                raise RuntimeError(f"the {', '.join(dead)} thread stopped unexpectedly")
        fatal = getattr(self.source, "fatal", None)
        if fatal is not None:  # the source gave up (the stream refused us too often): its one line and code
            raise fatal

    def close(self) -> None:
        self.stop.set()
        if getattr(self, "book", None) is not None:
            self.book.poke()
        if self.source is not None and hasattr(self.source, "close"):
            self.source.close()
        for thread in self.threads:
            if thread.name == "forecast":
                thread.join(timeout=30)
        if self.server is not None:
            self.hub.close()  # ends the open SSE streams, so the server stops at once
            self.server.should_exit = True
        for thread in self.threads:
            thread.join(timeout=5)
        if self.outputs is not None:
            self.outputs.close()
        self._held.close()


def symbols_of(cfg: Any) -> list[str]:
    """The service's tickers: upper case and each once already (app.config's rule, marketdata.symbols)."""
    return list(cfg.symbols or [cfg.symbol])


def alpaca_credentials(environ: Mapping[str, str]) -> Any:
    """The Alpaca key pair from the environment; a DataError saying what to set when there is none."""
    from marketdata.alpaca import credentials_from_env
    from marketdata.frame import DataError

    credentials = credentials_from_env(environ)
    if credentials is None:
        raise DataError("no Alpaca keys: set ALPACA_KEY_ID and ALPACA_SECRET_KEY (or APCA_API_KEY_ID and "
                        "APCA_API_SECRET_KEY), or try it offline with --replay FILE")
    return credentials


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_token(host: str, environ: Mapping[str, str]) -> str | None:
    """The API token from the environment; required (ConfigError) when listening beyond this machine."""
    token = (environ.get(TOKEN_ENV) or "").strip() or None
    if token is None and not is_loopback(host):
        raise ConfigError(f"listening on {host} exposes the page beyond this machine: set {TOKEN_ENV} to a long "
                          "random token (clients send 'Authorization: Bearer <token>'), or keep host 127.0.0.1")
    if token is not None and len(token) < 16:
        raise ConfigError(f"{TOKEN_ENV} is too short ({len(token)} characters); use at least 16 random ones")
    return token


def listen_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port or "
                          "--host") from None
    sock.listen(32)  # uvicorn listens again with web.guard.BACKLOG
    sock.set_inheritable(True)
    return sock
