"""serve.py under abuse, as a real process: hundreds of half-open connections with a lowered descriptor limit
(more connections than descriptors), and a second SIGTERM / Ctrl-C while it is stopping."""
from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from app.exits import ExitCode
from support.live_support import canonical_bars
from web.guard import HEADER_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "a-long-random-test-token-0123456789"
FD_LIMIT = 256          # the case is 1,024 descriptors and 1,100 connections; the same ratio, lighter
HALF_OPEN = 300


@pytest.fixture(scope="module")
def ckpt(checkpoint_pairs):
    return checkpoint_pairs("tiny", 0)  # read only: shared by the session (conftest.py)


class Serve:
    """serve.py replaying the synthetic bars in a subprocess; stderr collected, the port read from its log."""

    def __init__(self, ckpt, tmp: Path, speed: str = "60", preexec=None) -> None:
        model, tokenizer = ckpt
        bars = tmp / "bars.csv"
        canonical_bars().rename_axis("timestamp").reset_index().to_csv(bars, index=False)
        self.out = tmp / "live"
        self.proc = subprocess.Popen(
            [sys.executable, "serve.py", "--replay", str(bars), "--from", "2025-06-04T15:00:00Z", "--speed", speed,
             "--model", str(model), "--tokenizer", str(tokenizer), "--device", "cpu", "--n-samples", "4",
             "--horizon", "10", "--lookback", "120", "--seed", "3", "--live-out", str(self.out), "--port", "0"],
            cwd=ROOT, stderr=subprocess.PIPE, text=True, preexec_fn=preexec,
            env={**os.environ, "KRONOS_SERVE_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"})
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True).start()
        deadline = time.monotonic() + 90
        self.port = None
        while self.port is None:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.stderr
            found = [re.search(r"web page on http://127\.0\.0\.1:(\d+)/", line) for line in list(self.lines)]
            self.port = next((int(m.group(1)) for m in found if m), None)
            time.sleep(0.05)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def get(self, path: str, timeout: float = 5.0) -> dict:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def latest_asof(self) -> str | None:
        try:
            return json.loads((self.out / "pred_summary_QQQ_latest.json").read_text())["asof"]
        except (OSError, ValueError):
            return None

    def wait_forecasts(self, after: str | None, count: int, timeout: float = 60.0) -> str:
        """Wait until the latest file has moved on ``count`` times past ``after``; returns its asof."""
        seen = set()
        deadline = time.monotonic() + timeout
        while len(seen) < count:
            assert time.monotonic() < deadline and self.proc.poll() is None, self.stderr
            asof = self.latest_asof()
            if asof is not None and (after is None or asof > after):
                seen.add(asof)
            time.sleep(0.05)
        return max(seen)

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self, *signals: int) -> int:
        for sig in signals:
            self.proc.send_signal(sig)
            time.sleep(0.02)
        return self.proc.wait(60)


def lowered_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors through Linux /proc")
def test_half_open_connections_cannot_starve_the_service(ckpt, tmp_path):
    serve = Serve(ckpt, tmp_path, preexec=lowered_limit)
    held: list[socket.socket] = []
    try:
        first = serve.wait_forecasts(None, 1)
        peak = 0
        for _ in range(HALF_OPEN):  # unauthenticated, headers never finished
            s = socket.create_connection(("127.0.0.1", serve.port), timeout=10)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            held.append(s)
            if len(held) % 25 == 0:
                peak = max(peak, serve.descriptors())
        flooded = time.monotonic()
        t0 = time.monotonic()
        health = serve.get("/health", timeout=5)
        took = time.monotonic() - t0
        assert took < 2.0, took
        assert health["model_loaded"] is True
        # forecasts keep landing, and every one is written
        serve.wait_forecasts(first, 3)
        peak = max(peak, serve.descriptors())
        assert peak < FD_LIMIT - 32, peak  # room left for the forecaster's files
        assert "files" not in serve.get("/health")["output_errors"]
        # every half-open connection is closed by the server: evicted to make room, or at its header deadline
        deadline = flooded + HEADER_TIMEOUT_S + 15
        open_ = list(held)
        while open_:
            assert time.monotonic() < deadline, f"{len(open_)} half-open connections still open"
            still = []
            for s in open_:
                s.settimeout(0.001)
                try:
                    if s.recv(1024) != b"":
                        still.append(s)  # an answer is not what a request without its end should get
                except (socket.timeout, BlockingIOError):
                    still.append(s)
                except OSError:
                    pass  # reset by the server: closed
            open_ = still
            time.sleep(0.2)
        assert serve.descriptors() < 64
    finally:
        for s in held:
            s.close()
        code = serve.stop(signal.SIGTERM)
    assert code == ExitCode.OK, serve.stderr
    assert "Traceback" not in serve.stderr and "Too many open files" not in serve.stderr, serve.stderr[-3000:]
    assert len(serve.stderr) < 20_000  # no flood of accept errors


@pytest.mark.parametrize("signals", [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGINT, signal.SIGTERM)],
                         ids=["sigterm-twice", "ctrl-c-twice-then-sigterm"])
def test_a_second_signal_while_stopping_is_ignored(ckpt, tmp_path, signals):
    serve = Serve(ckpt, tmp_path)
    serve.wait_forecasts(None, 2)
    code = serve.stop(*signals)
    text = serve.stderr
    assert code == ExitCode.OK, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert "already stopping" in text  # the second one did arrive during the shutdown
    assert text.count("already stopping") == 1
    # the files are whole: the summary parses, every run-log row is complete, no temporary file left
    summary = json.loads((serve.out / "pred_summary_QQQ_latest.json").read_text())
    rows = (serve.out / "runs_QQQ.csv").read_text().splitlines()
    assert len(rows) >= 3 and {row.count(",") for row in rows} == {rows[0].count(",")}
    assert summary["asof"] in rows[-1]
    assert not [p.name for p in serve.out.iterdir() if p.name.endswith(".tmp")]


def test_repeated_log_lines_are_rate_limited_and_counted():
    import logging

    from app.operation import RepeatLimit

    shown: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            shown.append(record.getMessage())

    handler = Keep()
    limit = RepeatLimit(burst=5, window_s=0.5)
    handler.addFilter(limit)
    logger = logging.getLogger("test.repeat")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        for i in range(1000):
            logger.error("socket.accept() out of system resource")
            logger.info("forecast %d", i)  # different lines are never held back
        assert shown.count("socket.accept() out of system resource") == 5
        assert len([m for m in shown if m.startswith("forecast ")]) == 1000
        time.sleep(0.6)
        logger.error("socket.accept() out of system resource")
        assert shown[-1] == "socket.accept() out of system resource [995 more like this in the last 0.5 s not shown]"
    finally:
        logger.removeHandler(handler)


def test_the_connection_cap_leaves_the_reserve_free():
    from web.guard import BACKLOG, MAX_CONNECTIONS, RESERVE_FDS, connection_cap

    assert connection_cap(256, in_use=20) == 256 - 20 - RESERVE_FDS - 3 * BACKLOG
    assert connection_cap(1024, in_use=20) == MAX_CONNECTIONS
    assert connection_cap(1024, in_use=20) + 20 + RESERVE_FDS + 3 * BACKLOG <= 1024
    assert connection_cap(64, in_use=40) == 4  # never none at all
