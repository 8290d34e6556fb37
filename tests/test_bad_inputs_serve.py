"""The bad-input contract of serve.py, as one table: each row is an input an operator can hand the service,
and it must end in its documented exit code with one line naming the problem, no traceback, before the model
loads and before the page is announced, leaving exactly the files listed (no lock, no folder where none was).

Rows run in-process through ``serve.main(argv)``; loading the model fails the row (every check comes first)."""
from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

import serve
from app.exits import ExitCode
from app.operation import run_lock
from forecast.pipeline import ForecastPipeline
from support.live_support import canonical_bars
from support.log_lines import Lines

NO_FOLDER = None   # the service stopped before its folder was made
LOCK = ".serve.lock"
KEY_VARS = ("ALPACA_KEY_ID", "ALPACA_SECRET_KEY", "APCA_API_KEY_ID", "APCA_API_SECRET_KEY")


@dataclass
class Case:
    id: str
    code: int
    words: tuple[str, ...]                              # all in the one line (case-insensitive)
    args: tuple[str, ...] = ()                          # {bars}, {one_session}, {dir} are filled in
    files: set[str] | None = NO_FOLDER
    env: dict[str, str] = field(default_factory=dict)
    absent: tuple[str, ...] = ()                        # none of these in the line
    setup: Callable[[Path], object] | None = None       # returns something to hold open during the run


def write_bars(path: Path, sessions) -> None:
    canonical_bars(sessions).rename_axis("timestamp").reset_index().to_csv(path, index=False)


def busy_port(d: Path) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    (d / "port").write_text(str(sock.getsockname()[1]))
    return sock


REPLAY = ("--replay", "{bars}")
CASES = [
    Case("redis-url-port-not-a-number", 2, ("'redis_url'", "port", "notaport"),
         (*REPLAY, "--redis-url", "redis://127.0.0.1:notaport/0")),
    Case("redis-url-port-out-of-range", 2, ("'redis_url'", "1..65535"),
         (*REPLAY, "--redis-url", "redis://:hunter2@127.0.0.1:99999/0"), absent=("hunter2",)),
    Case("redis-url-not-redis", 2, ("'redis_url'", "redis://"),
         (*REPLAY, "--redis-url", "http://127.0.0.1:6379/0?password=hunter2"), absent=("hunter2",)),
    Case("speed-infinite", 2, ("--speed", "inf", "at most"), (*REPLAY, "--speed", "inf")),
    Case("speed-not-a-number", 2, ("--speed", "nan"), (*REPLAY, "--speed", "nan")),
    Case("speed-absurd", 2, ("--speed", "1e+300"), (*REPLAY, "--speed", "1e300")),
    Case("speed-zero", 2, ("--speed", "> 0"), (*REPLAY, "--speed", "0")),
    Case("from-without-replay", 2, ("--from needs --replay",), ("--from", "2025-06-04T15:00:00Z")),
    Case("from-not-a-time", 2, ("--from", "ISO 8601", "yesterday"), (*REPLAY, "--from", "yesterday")),
    Case("from-outside-the-file", 2, ("--from 2030-01-02", "outside the replay data"),
         (*REPLAY, "--from", "2030-01-02T15:00:00Z")),
    Case("replay-one-session-no-from", 2, ("one_session.csv", "no bars before the open of its last session",
                                           "2025-06-04", "earlier sessions"),
         ("--replay", "{one_session}"), absent=("outside the replay data",)),
    Case("replay-missing-file", 2, ("--replay", "file not found", "nope.csv"), ("--replay", "{dir}/nope.csv")),
    Case("replay-files-per-symbol", 2, ("2 file(s) for 1 symbol(s)",), ("--replay", "{bars}", "{bars}")),
    Case("replay-not-bars", 2, ("notbars.csv", "no time column"), ("--replay", "{dir}/notbars.csv"),
         setup=lambda d: (d / "notbars.csv").write_text("hello\nworld\n")),
    Case("live-without-keys", 2, ("no Alpaca keys", "ALPACA_KEY_ID", "--replay"), ()),
    Case("live-half-a-key-pair", 2, ("no Alpaca keys",), (), env={"ALPACA_KEY_ID": "PKONLYTHEKEY"}),
    Case("host-beyond-loopback-no-token", 2, ("KRONOS_SERVE_TOKEN",), (*REPLAY, "--host", "0.0.0.0")),
    Case("token-too-short", 2, ("KRONOS_SERVE_TOKEN", "too short"), REPLAY, env={"KRONOS_SERVE_TOKEN": "abc"}),
    Case("port-out-of-range", 2, ("'port'", "0..65535"), (*REPLAY, "--port", "70000")),
    Case("port-in-use", 2, ("cannot listen on 127.0.0.1",), (*REPLAY, "--port", "{port}"), setup=busy_port),
    Case("locked", 6, ("another run holds the lock",), REPLAY, files={LOCK}),
]


@pytest.fixture(scope="module")
def ckpt(checkpoint_pairs):
    return checkpoint_pairs("tiny", 0)  # read only: shared by the session (conftest.py)


def no_model(self, *args, **kwargs):
    raise AssertionError("the model was loaded before the input was checked")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, ckpt, tmp_path, monkeypatch):
    for name in (*KEY_VARS, "KRONOS_SERVE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(ForecastPipeline, "load", no_model)
    write_bars(tmp_path / "bars.csv", ("2025-06-02", "2025-06-03", "2025-06-04"))
    write_bars(tmp_path / "one_session.csv", ("2025-06-04",))
    held = case.setup(tmp_path) if case.setup is not None else None
    port = (tmp_path / "port").read_text() if (tmp_path / "port").exists() else "0"
    fill = {"bars": tmp_path / "bars.csv", "one_session": tmp_path / "one_session.csv", "dir": tmp_path,
            "port": port}
    out = tmp_path / "live"
    model, tokenizer = ckpt
    argv = ["--model", str(model), "--tokenizer", str(tokenizer), "--device", "cpu", "--n-samples", "4",
            "--horizon", "10", "--lookback", "120", "--live-out", str(out), "--port", "0",
            *(a.format(**fill) for a in case.args)]
    before = set(threading.enumerate())
    lines = Lines()
    root = logging.getLogger()
    root.addHandler(lines)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        if case.id == "locked":
            with run_lock(out / LOCK):
                code = serve.main(argv)
        else:
            code = serve.main(argv)
    finally:
        root.removeHandler(lines)
        root.setLevel(old_level)
        if isinstance(held, socket.socket):
            held.close()
    assert code == case.code, [r.getMessage() for r in lines.records]
    last = lines.records[-1]
    message = last.getMessage()
    assert "\n" not in message and last.exc_info is None and "Traceback" not in message, message
    for word in case.words:
        assert word.lower() in message.lower(), (word, message)
    for word in case.absent:
        assert word.lower() not in message.lower(), (word, message)
    shown = " ".join(r.getMessage() for r in lines.records)
    assert "web page on" not in shown and "hunter2" not in shown
    left = None if not out.exists() else {p.name for p in out.iterdir()}
    assert left == case.files, left
    started = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not started, started  # no web server, replay or forecast thread left running


def test_the_table_covers_every_argument_of_the_issue():
    ids = {c.id for c in CASES}
    assert {"redis-url-port-not-a-number", "speed-infinite", "replay-one-session-no-from",
            "live-without-keys"} <= ids
    assert {c.code for c in CASES} == {2, 6}


def test_a_replay_of_one_session_plays_with_a_from_inside_it(tmp_path):
    """The one-session message's advice works: --from later in the session leaves the bars before it as
    history."""
    from live.playback import load_replay

    write_bars(tmp_path / "one.csv", ("2025-06-04",))
    frames, start = load_replay({"QQQ": str(tmp_path / "one.csv")}, pd.Timestamp("2025-06-04T16:00:00Z"))
    assert start == pd.Timestamp("2025-06-04T16:00:00Z") and frames["QQQ"].index[0] < start
