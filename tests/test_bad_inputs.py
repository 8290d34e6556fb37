"""The bad-input contract of the forecast CLI, as one table: each row is an input a user (or cron, or a
vendor) can hand us, and the run must end in its documented exit code with one line naming the problem, no
traceback, and exactly the files listed left in the output folder.

Rows run in-process through ``main(argv)`` with a tiny random-weight checkpoint; signals during loading,
sampling and writing are real signals sent to a separate process running the program's handlers (one
interpreter runs the three, so they cost one start-up).
"""
from __future__ import annotations

import csv
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

import cli_kronos_prob_qqq as cli
from app.exits import ExitCode
from app.operation import run_lock
from forecast.runlog import OLDEST_HEADER, RUN_LOG_COLUMNS
from support.kronos_checkpoints import write_checkpoint_pair
from support.bars import KEYS, ROOT, synthetic_bars
from support.log_lines import Lines

ASOF = "2025-06-04T15:00:00Z"
STAMP = "20250604T150000Z"
LOCK = ".run_QQQ.lock"
RUN_FILES = {f"paths_{f}_QQQ_{STAMP}.csv" for f in ("high", "low", "volume")} | {
    f"paths_QQQ_{STAMP}.csv", f"bands_QQQ_{STAMP}.csv", f"pred_summary_QQQ_{STAMP}.json", "paths_QQQ_latest.csv",
    "bands_QQQ_latest.csv", "pred_summary_QQQ_latest.json", "runs_QQQ.csv"}
NOTHING = {LOCK}          # the run got as far as its lock, and wrote nothing
NO_FOLDER = None          # the run stopped before the output folder was made


@dataclass
class Case:
    id: str
    code: int
    words: tuple[str, ...]                                   # all in the one line (case-insensitive)
    args: tuple[str, ...] = ()
    setup: Callable[[Path, dict], None] | None = None        # writes inputs under the case folder, edits argv
    files: set[str] | None = field(default_factory=lambda: set(NOTHING))
    check: Callable[[Path], None] | None = None              # more assertions on the outputs
    absent: tuple[str, ...] = ()                             # none of these in the line


# ------------------------------------------------------------------------------------------------ inputs

def frame() -> pd.DataFrame:
    f = synthetic_bars()
    f.index = pd.DatetimeIndex(f.pop("timestamp"))
    return f


def write_bars(f: pd.DataFrame, path: Path, stamps=None) -> None:
    out = f.copy()
    out.insert(0, "timestamp", stamps if stamps is not None else out.index.strftime("%Y-%m-%dT%H:%M:%SZ"))
    out.to_csv(path, index=False)


def bars_with(edit: Callable[[pd.DataFrame], pd.DataFrame | None], name: str = "bars.csv"):
    """The synthetic bars, edited in place or replaced by what ``edit`` returns."""
    def setup(d: Path, a: dict) -> None:
        f = frame()
        edited = edit(f)
        write_bars(f if edited is None else edited, d / name)
        a["csv"] = d / name
    return setup


def bars_text(text: str, name: str = "bars.csv"):
    def setup(d: Path, a: dict) -> None:
        (d / name).write_text(text)
        a["csv"] = d / name
    return setup


def wall_clock(zone: str):
    """The bars as naive wall-clock times of ``zone`` (what a user exports from a desktop chart)."""
    def setup(d: Path, a: dict) -> None:
        f = frame()
        stamps = f.index.tz_convert(zone).strftime("%Y-%m-%d %H:%M:%S")
        write_bars(f, d / "wall.csv", stamps)
        a["csv"] = d / "wall.csv"
    return setup


TICK = pd.Timestamp("2025-06-04T14:40Z")


def tick(f: pd.DataFrame) -> None:
    f.loc[TICK, ["high", "close"]] = f.loc[TICK, "close"] * 100


def value(row, column: str, v: float):
    """An edit setting one cell (row: a position or a time)."""
    def edit(f: pd.DataFrame) -> None:
        f.loc[f.index[row] if isinstance(row, int) else row, column] = v
    return edit


def high_below_close(f: pd.DataFrame) -> None:
    f.loc[TICK, "high"] = f.loc[TICK, "low"]
    f.loc[TICK, "close"] = f.loc[TICK, "low"] * 1.001


def symbol_column(symbol: str):
    """A Symbol column, as vendors' exports have one."""
    def edit(f: pd.DataFrame) -> None:
        f.insert(0, "Symbol", symbol)
    return edit


def unadjusted_before(when: str, factor: float):
    """The sessions before ``when`` at their prices before a split (a feed that does not adjust history)."""
    def edit(f: pd.DataFrame) -> None:
        f.loc[f.index < pd.Timestamp(when), ["open", "high", "low", "close"]] *= factor
    return edit


def config(text: str):
    def setup(d: Path, a: dict) -> None:
        (d / "config.yaml").write_text(text)
        a["config"] = d / "config.yaml"
    return setup


def checkpoint(edit_model=None, edit_tokenizer=None, weights=None):
    """A copy of the tiny pair with its config.json edited (a function of the dict, or replacement text)."""
    def setup(d: Path, a: dict) -> None:
        model, tok = d / "model", d / "tokenizer"
        shutil.copytree(a["model"], model)
        shutil.copytree(a["tokenizer"], tok)
        for folder, edit in ((model, edit_model), (tok, edit_tokenizer)):
            if edit is not None:
                cfg = json.loads((folder / "config.json").read_text())
                text = edit(cfg)
                (folder / "config.json").write_text(text if isinstance(text, str) else json.dumps(cfg))
        if weights is not None:
            weights(model / "model.safetensors")
        a["model"], a["tokenizer"] = model, tok
    return setup


def nan_weights(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    tensors["head.proj_s1.weight"][0, 0] = float("nan")
    save_file(tensors, str(path))


def out_folder(prepare: Callable[[Path], None], name: str = "out"):
    def setup(d: Path, a: dict) -> None:
        a["out"] = d / name
        prepare(d / name)
    return setup


def folder_at(name: str):
    return out_folder(lambda out: (out / name).mkdir(parents=True))


def run_log(text: str):
    return out_folder(lambda out: (out.mkdir(), (out / "runs_QQQ.csv").write_bytes(text.encode())))


def alpaca(respond, keys: bool = True):
    """Bars from a fake Alpaca on 127.0.0.1 answering ``respond(query) -> (status, body)``."""
    def setup(d: Path, a: dict) -> None:
        from support.fake_alpaca import FakeAlpaca

        server = FakeAlpaca(respond)
        a["servers"].append(server)
        a["env"] = {**(KEYS if keys else {}), "ALPACA_DATA_URL": server.url}
        a["source"] = "alpaca"
        a["asof"] = "2025-06-04T15:00:30Z"
    return setup


def bars_body(edit: Callable[[list], None] | None = None):
    from support.fake_alpaca import window_bars

    f = frame()

    def respond(query):
        bars = window_bars(f, query)
        if edit is not None:
            edit(bars)
        return 200, {"bars": {"QQQ": bars}, "next_page_token": None}
    return respond


def negative_price(bars: list) -> None:
    i = next(i for i, b in enumerate(bars) if b["t"] == "2025-06-04T14:40:00Z")
    bars[i]["l"] = -1.0


def summary_of(out: Path) -> dict:
    return json.loads((out / "pred_summary_QQQ_latest.json").read_text())


def prices_possible(out: Path) -> None:
    s = summary_of(out)
    assert all(v > 0 for band in s["summary"]["percentiles"].values() for v in band)
    assert s["summary"]["exp_ret_10m"] > -1.0 and s["now_close"] > 0


def filled_bad_bar(out: Path) -> None:
    prices_possible(out)
    s = summary_of(out)
    assert s["data"]["bad_bars"] == 1 and any("bad bar" in n and "14:40" in n for n in s["notes"])
    row = pd.read_csv(out / "runs_QQQ.csv").iloc[-1]
    assert row["bad_bars"] == 1


def foreign_state_untouched(out: Path) -> None:
    assert json.loads((out / "online_QQQ.json").read_text()) == {"mine": 1}


def old_log_appended(out: Path) -> None:
    rows = (out / "runs_QQQ.csv").read_text().splitlines()
    assert len(rows) == 3 and all(len(r.split(",")) == OLDEST_HEADER for r in rows)


def log_untouched(text: str):
    return lambda out: (out / "runs_QQQ.csv").read_bytes() == text.encode() or pytest.fail("run log changed")


OTHER_HEADER = "asof,symbol,p_up\r\n2025-06-03T15:00:00Z,QQQ,0.5\r\n"
BEFORE_LOG = RUN_FILES - {"runs_QQQ.csv"}  # what the renames leave before the run-log row is appended


def at_run_log_append(action: Callable[[Path], None]):
    """``action(run log path)`` happens when the run appends its row, after its files were renamed into place
    (then the real append runs)."""
    def setup(d: Path, a: dict) -> None:
        import forecast.publish

        real = forecast.publish.append_run_log

        def append(path, row):
            action(Path(path))
            return real(path, row)
        a["patches"].append((forecast.publish, "append_run_log", append))
    return setup


def disk_full(path: Path) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def header_replaced(path: Path) -> None:
    path.write_bytes(OTHER_HEADER.encode())  # someone else's log since preflight checked it
def spreadsheet_log(out: Path) -> None:
    """The run log as a spreadsheet saves it: a UTF-8 BOM, CRLF, every field quoted, the columns in another order
    (written here with the csv module, not with our appender); one earlier row."""
    out.mkdir()
    with open(out / "runs_QQQ.csv", "w", newline="", encoding="utf-8-sig") as fh:
        writer = csv.DictWriter(fh, fieldnames=SPREADSHEET_COLUMNS, quoting=csv.QUOTE_ALL)
        writer.writeheader()
        writer.writerow(EARLIER_ROW)


SPREADSHEET_COLUMNS = sorted(RUN_LOG_COLUMNS, key=lambda c: (len(c), c))  # names matched, not positions
EARLIER_ROW = {"asof": "2025-06-03T15:00:00+00:00", "symbol": "QQQ", "now_close": "500.25", "horizon_min": "10",
               "n_samples": "2", "p_up": "0.5", "model": "kronos, small", "summary_file": "earlier.json"}


def spreadsheet_log_appended(out: Path) -> None:
    """Our row went under the file's own header, in its column order and line end, and reads back by name."""
    from forecast.runlog import read_run_log

    data = (out / "runs_QQQ.csv").read_bytes()
    assert data.startswith(b"\xef\xbb\xbf") and data.endswith(b"\r\n") and data.count(b"\n") == data.count(b"\r\n") == 3
    with open(out / "runs_QQQ.csv", newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == SPREADSHEET_COLUMNS and len(rows) == 2
    assert {k: v for k, v in rows[0].items() if v} == EARLIER_ROW
    s, ours = summary_of(out), rows[1]
    assert ours["asof"] == s["asof"] and ours["symbol"] == "QQQ" and int(ours["horizon_min"]) == 10
    close = pytest.approx  # the log keeps 10 significant digits
    assert float(ours["now_close"]) == close(s["now_close"], rel=1e-9)
    assert float(ours["p_up"]) == close(s["summary"]["p_up_10m"], rel=1e-9)
    assert float(ours["p90_end"]) == close(s["summary"]["percentiles"]["p90"][-1], rel=1e-9)
    assert ours["summary_file"] == f"pred_summary_QQQ_{STAMP}.json" and ours["model"] == s["model"]["model"]
    read = read_run_log(out / "runs_QQQ.csv")  # the calibration's reader sees the same two rows
    assert list(read["asof"]) == [EARLIER_ROW["asof"], s["asof"]]
    assert list(read["p_up"]) == pytest.approx([0.5, s["summary"]["p_up_10m"]], rel=1e-9)


SEMICOLON_LOG = "asof;last_bar;symbol\r\n"
OLD_LOG = ",".join(RUN_LOG_COLUMNS[:OLDEST_HEADER]) + "\r\n" + ",".join(
    ['"2025-06-03T15:00:00Z"', "", "QQQ", "500", "10", "2", "0.5"] + [""] * (OLDEST_HEADER - 7)) + "\r\n"


# ------------------------------------------------------------------------------------------------ the table

CASES = [
    # configuration and arguments: exit 2 before anything is made
    Case("config-unknown-key", 2, ("lookbak", "did you mean 'lookback'"), setup=config("lookbak: 100\n"),
         files=NO_FOLDER),
    Case("config-not-yaml", 2, ("not valid YAML", "line 2"), setup=config("horizon: [1, 2\n"), files=NO_FOLDER),
    Case("config-wrong-type", 2, ("'horizon'", "whole number"), args=("--horizon", "ten"), files=NO_FOLDER),
    Case("config-out-of-range", 2, ("'temperature'", "> 0"), args=("--temperature", "0"), files=NO_FOLDER),
    Case("config-bad-policy", 2, ("'bad_bars'", "fill, skip"), args=("--bad-bars", "drop"), files=NO_FOLDER),
    Case("config-tick-multiple", 2, ("'bad_bar_move'", ">= 5"), args=("--bad-bar-move", "1"), files=NO_FOLDER),
    Case("config-unknown-zone", 2, ("'csv_tz'", "IANA"), args=("--csv-tz", "Mars/Olympus"), files=NO_FOLDER),
    Case("config-event-without-offset", 2, ("'events'", "UTC offset"), setup=config("events: ['2025-06-04 10:00']\n"),
         files=NO_FOLDER),
    Case("config-context-too-long", 2, ("exceed the model's context",),
         args=("--model", "NeoQuasar/Kronos-small", "--lookback", "500", "--horizon", "30"), files=NO_FOLDER),
    Case("config-duplicate-key", 2, ("duplicate key 'horizon'", "line 3", "first given at line 1"),
         setup=config("horizon: 10\nlookback: 64\nhorizon: 20\n"), files=NO_FOLDER),
    Case("config-nan", 2, ("'temperature'", "finite number", "nan"), args=("--temperature", "nan"), files=NO_FOLDER),
    Case("config-inf-in-yaml", 2, ("'top_p'", "finite number"), setup=config("top_p: .inf\n"), files=NO_FOLDER),
    Case("config-time-budget-absurd", 2, ("'time_budget'", "86400"), args=("--time-budget", "1e20"), files=NO_FOLDER),
    Case("config-seed-negative", 2, ("'seed'", "0..4294967295"), args=("--seed", "-1"), files=NO_FOLDER),
    Case("config-event-window-absurd", 2, ("'event_after'", "0..1440"), args=("--event-after", "1000000000000"),
         files=NO_FOLDER),
    Case("asof-not-a-time", 2, ("--asof", "ISO 8601"), args=("--asof", "yesterday"), files=NO_FOLDER),
    Case("asof-before-calendar", 2, ("outside the market calendar", "2005"), args=("--asof", "1999-06-01T15:00Z")),
    Case("asof-after-calendar", 2, ("outside the market calendar",), args=("--asof", "2100-06-01T15:00Z")),
    # bars files: exit 2 naming file, row and column
    Case("bars-missing-file", 2, ("no such file",), setup=lambda d, a: a.update(csv=d / "nope.csv")),
    Case("bars-empty", 2, ("empty",), setup=bars_text("")),
    Case("bars-header-only", 2, ("no data rows",), setup=bars_text("timestamp,open,high,low,close,volume\n")),
    Case("bars-nan-price", 2, ("'close'", "line 2"),
         setup=bars_text("timestamp,open,high,low,close,volume\n2025-06-04T14:00:00Z,1,2,0.5,nan,10\n")),
    Case("bars-zero-price", 2, ("non-positive price", "'low'", "line 7"), setup=bars_with(value(5, "low", 0.0))),
    Case("bars-negative-volume", 2, ("negative volume", "line 7"), setup=bars_with(value(5, "volume", -3.0))),
    Case("bars-duplicate-time", 2, ("duplicated timestamp",),
         setup=bars_text("timestamp,open,high,low,close,volume\n" + "2025-06-04T14:00:00Z,1,2,0.5,1,10\n" * 2)),
    Case("bars-bad-time", 2, ("unparseable time", "'June 4th'"),
         setup=bars_text("timestamp,open,high,low,close,volume\nJune 4th,1,2,0.5,1,10\n")),
    Case("bars-no-time-column", 2, ("no time column", "timestamp"),
         setup=bars_text("when,open,high,low,close,volume\n2025-06-04T14:00:00Z,1,2,0.5,1,10\n")),
    Case("bars-semicolon-separated", 2, ("semicolon-separated", "use commas"),
         setup=bars_text("timestamp;open;high;low;close;volume\n2025-06-04T14:00:00Z;1;2;0,5;1;10\n")),
    Case("bars-unknown-type", 2, ("unknown file type", ".txt"), setup=bars_text("x", name="bars.txt")),
    Case("bars-new-york-wall-clock", 2, ("csv_tz", "America/New_York"), setup=wall_clock("America/New_York")),
    Case("bars-chicago-wall-clock", 2, ("csv_tz", "America/Chicago"), setup=wall_clock("America/Chicago")),
    # bars a market cannot print, and data too thin to forecast from: exit 3 with the reason, or a forecast
    # whose numbers are possible and whose notes say what was replaced
    Case("tick-100x-skip", 3, ("1 bad bar", "14:40", "bad_bars: skip"), args=("--bad-bars", "skip"),
         setup=bars_with(tick)),
    Case("tick-100x-fill", 0, ("wrote",), setup=bars_with(tick), files=RUN_FILES | {LOCK}, check=filled_bad_bar),
    Case("high-below-close-skip", 3, ("high below",), args=("--bad-bars", "skip"), setup=bars_with(high_below_close)),
    Case("absurd-volume-skip", 3, ("volume", "median volume"), args=("--bad-bars", "skip"),
         setup=bars_with(value(TICK, "volume", 1e12))),
    Case("recent-gaps", 3, ("gap fills", "data too sparse"),
         setup=bars_with(lambda f: f[(f.index < "2025-06-04T14:35Z") | (f.index >= ASOF)])),
    Case("no-bars-yet-today", 3, ("no bars yet for the current session",),
         setup=bars_with(lambda f: f[f.index < "2025-06-04"])),
    Case("bars-all-old", 3, ("no closed bars",), args=("--asof", "2025-06-20T15:00Z")),
    # checkpoints: exit 5 naming the file and field
    Case("ckpt-missing", 5, ("does not exist",), setup=lambda d, a: a.update(model=d / "nope")),
    Case("ckpt-config-not-json", 5, ("config.json", "not valid JSON"), setup=checkpoint(lambda c: "{oops")),
    Case("ckpt-config-a-list", 5, ("JSON object", "list"), setup=checkpoint(lambda c: "[1, 2]")),
    Case("ckpt-missing-field", 5, ("missing field 'n_heads'",), setup=checkpoint(lambda c: c.pop("n_heads"))),
    Case("ckpt-field-a-string", 5, ("'s1_bits'", "positive integer"),
         setup=checkpoint(lambda c: c.update(s1_bits="10"))),
    Case("ckpt-heads-do-not-divide", 5, ("'d_model'", "not divisible"), setup=checkpoint(lambda c: c.update(n_heads=3))),
    Case("ckpt-absurd-size", 5, ("'d_model'", "beyond any Kronos"), setup=checkpoint(lambda c: c.update(d_model=2**40))),
    Case("ckpt-pair-bits", 5, ("'s1_bits'", "do not pair"), setup=checkpoint(edit_tokenizer=lambda c: c.update(s1_bits=9))),
    Case("ckpt-nan-weights", 5, ("head.proj_s1.weight", "non-finite"), setup=checkpoint(weights=nan_weights)),
    Case("ckpt-truncated-weights", 5, ("cannot read", "model.safetensors"),
         setup=checkpoint(weights=lambda p: p.write_bytes(p.read_bytes()[:500]))),
    Case("ckpt-weights-of-another-shape", 5, ("does not fit", "mis-shaped tensor"),
         setup=checkpoint(lambda c: c.update(d_model=64, ff_dim=128))),
    Case("hub-not-cached-offline", 5, ("NeoQuasar/Kronos-mini", "HF_HUB_OFFLINE"),
         args=("--model", "NeoQuasar/Kronos-mini"), setup=lambda d, a: a["env"].update(HF_HUB_CACHE=str(d))),
    # Alpaca: every malformed answer is exit 4
    Case("alpaca-not-json", 4, ("malformed response from Alpaca", "not JSON"),
         setup=alpaca(lambda q: (200, b"<html>maintenance</html>"))),
    Case("alpaca-json-list", 4, ("malformed response from Alpaca",), setup=alpaca(lambda q: (200, [1, 2]))),
    Case("alpaca-bars-a-list", 4, ("malformed response from Alpaca",), setup=alpaca(lambda q: (200, {"bars": [1]}))),
    Case("alpaca-bars-null", 4, ("malformed response from Alpaca",), setup=alpaca(lambda q: (200, {"bars": None}))),
    Case("alpaca-bar-not-object", 4, ("malformed response from Alpaca",),
         setup=alpaca(lambda q: (200, {"bars": {"QQQ": [5]}, "next_page_token": None}))),
    Case("alpaca-bar-lacks-close", 4, ("malformed response from Alpaca", "validation error"),
         setup=alpaca(bars_body(lambda bars: bars[3].pop("c")))),
    Case("alpaca-bar-bad-time", 4, ("malformed response from Alpaca",),
         setup=alpaca(bars_body(lambda bars: bars[3].update(t="soon")))),
    Case("alpaca-http-500", 4, ("HTTP 500",), setup=alpaca(lambda q: (500, {"message": "internal error"}))),
    Case("alpaca-keys-rejected", 4, ("rejected the API keys", "ALPACA_KEY_ID"),
         setup=alpaca(lambda q: (401, {"message": "forbidden"}))),
    Case("alpaca-no-keys", 2, ("no Alpaca keys",), setup=alpaca(bars_body(), keys=False)),
    Case("alpaca-negative-price-skip", 3, ("bad bar", "not positive"), args=("--bad-bars", "skip"),
         setup=alpaca(bars_body(negative_price))),
    Case("alpaca-empty", 3, ("no closed bars",), setup=alpaca(lambda q: (200, {"bars": {}, "next_page_token": None}))),
    # the output folder: exit 2 before the forecast where it can be known, never a mixed set of files
    Case("out-is-a-file", 2, ("config key 'out'", "cannot take the run's files"),
         setup=lambda d, a: ((d / "out").write_text("x"), a.update(out=d / "out")), files=NO_FOLDER),
    Case("out-under-a-file", 2, ("config key 'out'", "not a directory"),
         setup=lambda d, a: ((d / "f").write_text("x"), a.update(out=d / "f" / "out")), files=NO_FOLDER),
    Case("latest-summary-is-a-folder", 2, ("pred_summary_QQQ_latest.json", "not a file"),
         setup=folder_at("pred_summary_QQQ_latest.json"), files={"pred_summary_QQQ_latest.json"}),
    Case("stamped-summary-is-a-folder", 2, (f"pred_summary_QQQ_{STAMP}.json", "not a file", "nothing was written"),
         setup=folder_at(f"pred_summary_QQQ_{STAMP}.json"), files={f"pred_summary_QQQ_{STAMP}.json", LOCK}),
    Case("run-log-is-a-folder", 2, ("runs_QQQ.csv", "not a file"), setup=folder_at("runs_QQQ.csv"),
         files={"runs_QQQ.csv"}),
    Case("run-log-other-header", 2, ("another header", "move it aside"), setup=run_log(OTHER_HEADER),
         files={"runs_QQQ.csv"}, check=log_untouched(OTHER_HEADER)),
    Case("run-log-semicolon-separated", 2, ("runs_QQQ.csv", "semicolon-separated"),
         setup=run_log(SEMICOLON_LOG), files={"runs_QQQ.csv"}, check=log_untouched(SEMICOLON_LOG)),
    # read like any run log: its resolved rows teach the online calibration, whose state is kept
    Case("run-log-from-a-spreadsheet", 0, ("wrote",), setup=out_folder(spreadsheet_log),
         files=RUN_FILES | {LOCK, "online_QQQ.json"},
         check=spreadsheet_log_appended),
    # its old row's outcome has resolved: the online calibration learns it and keeps its state (forecast.online)
    Case("run-log-older-version", 0, ("wrote",), setup=run_log(OLD_LOG), files=RUN_FILES | {LOCK, "online_QQQ.json"},
         check=old_log_appended),
    # a failure after the renames: the one line names the files the run did leave, and exactly those are there
    Case("run-log-disk-full", 2, ("runs_QQQ.csv", "No space left on device", "it had already written",
                                  *BEFORE_LOG), setup=at_run_log_append(disk_full), files=BEFORE_LOG | {LOCK},
         absent=("nothing was written",)),
    Case("run-log-header-changed-during-run", 2, ("another header", "it had already written", *BEFORE_LOG),
         setup=at_run_log_append(header_replaced), files=RUN_FILES | {LOCK}, check=log_untouched(OTHER_HEADER),
         absent=("nothing was written",)),
    # a file where the online calibration state goes that is not one: refused, left as it was, nothing written
    Case("online-state-foreign", 2, ("online_QQQ.json", "not an online calibration state", "move it aside"),
         setup=out_folder(lambda out: (out.mkdir(), (out / "online_QQQ.json").write_text('{"mine": 1}'))),
         files={LOCK, "online_QQQ.json"},
         check=foreign_state_untouched),
    Case("locked", 6, ("another run holds the lock",), setup=out_folder(lambda out: out.mkdir()), files={LOCK}),
    Case("time-budget", 7, ("time budget of 0.001 s",), args=("--time-budget", "0.001")),
    # wrong data is refused, not forecast: a swapped file, a ticker in two spellings, a name that is no ticker
    Case("bars-symbol-other", 2, ("symbol column says QQQ", "the run is for SPY", "bars.csv"),
         args=("--symbol", "SPY"), setup=bars_with(symbol_column("QQQ")), files={".run_SPY.lock"}),
    Case("bars-symbol-other-case", 0, ("wrote",), setup=bars_with(symbol_column("qqq")), files=RUN_FILES | {LOCK}),
    Case("config-symbol-lower-case", 0, ("wrote",), args=("--symbol", "qqq"), files=RUN_FILES | {LOCK}),
    Case("bars-unadjusted-split", 3, ("2025-06-04T13:30:00Z", "unadjusted 2:1 split", "split-adjusted"),
         setup=bars_with(unadjusted_before("2025-06-04T13:30Z", 2.0))),
    Case("bars-unadjusted-split-skip", 3, ("unadjusted 2:1 split",), args=("--bad-bars", "skip"),
         setup=bars_with(unadjusted_before("2025-06-04T13:30Z", 2.0))),
    Case("config-symbol-not-ascii", 2, ("config key 'symbol'", "ASCII letters, digits and dots"),
         args=("--symbol", "QQ\u00c9"), files=NO_FOLDER),
]


# ------------------------------------------------------------------------------------------------ running

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("bad_inputs")
    model, tokenizer = write_checkpoint_pair(root / "ckpt", shape="tiny", seed=0)
    write_bars(frame(), root / "bars.csv")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 32-wide network: more threads only add hand-offs (6x slower on a busy machine)
    yield {"model": model, "tokenizer": tokenizer, "csv": root / "bars.csv"}
    torch.set_num_threads(threads)


def argv_for(a: dict) -> list[str]:
    argv = ["--source", a["source"], "--model", str(a["model"]), "--tokenizer", str(a["tokenizer"]),
            "--out", str(a["out"]), "--device", "cpu", "--lookback", "64", "--horizon", "10", "--n-samples", "2",
            "--seed", "1", "--time-budget", "600", "--asof", a["asof"]]
    if a["source"] == "csv":
        argv += ["--csv", str(a["csv"])]
    if "config" in a:
        argv += ["--config", str(a["config"])]
    return argv + list(a["args"])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tiny, tmp_path, monkeypatch):
    a = {**tiny, "source": "csv", "out": tmp_path / "out", "asof": ASOF, "env": {}, "servers": [],
         "args": case.args, "patches": []}
    for name in (*KEYS, "APCA_API_KEY_ID", "APCA_API_SECRET_KEY", "ALPACA_DATA_URL"):
        monkeypatch.delenv(name, raising=False)
    if case.setup is not None:
        case.setup(tmp_path, a)
    for name, value in a["env"].items():
        monkeypatch.setenv(name, value)
    for target, name, value in a["patches"]:
        monkeypatch.setattr(target, name, value)
    lines = Lines()
    root = logging.getLogger()
    root.addHandler(lines)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        if case.id == "locked":
            with run_lock(a["out"] / LOCK):
                code = cli.main(argv_for(a))
        else:
            code = cli.main(argv_for(a))
    finally:
        root.removeHandler(lines)
        root.setLevel(old_level)
        for server in a["servers"]:
            server.close()
    assert code == case.code
    last = lines.records[-1]
    message = last.getMessage()
    assert "\n" not in message and last.exc_info is None and "Traceback" not in message
    assert all(w.lower() in message.lower() for w in case.words), message
    assert not any(w.lower() in message.lower() for w in case.absent), message
    out = a["out"]
    present = {p.name for p in out.iterdir()} if out.is_dir() else None
    assert present == case.files
    if case.id == "out-is-a-file":
        assert out.read_text() == "x"  # the user's own file, left as it was
    assert not [p for p in (present or ()) if p.endswith(".tmp")]
    if case.check is not None:
        case.check(out)


def test_the_table_covers_every_kind_of_bad_input():
    kinds = {c.id.split("-")[0] for c in CASES}
    assert len(CASES) >= 40 and {"config", "bars", "ckpt", "alpaca", "out", "run"} <= kinds
    assert {c.code for c in CASES} >= {0, 2, 3, 4, 5, 6, 7}


def test_hub_download_failure_is_one_line(tiny, tmp_path, monkeypatch):
    """huggingface_hub warns on every retry of a failed download; the run reports the failure once."""
    import huggingface_hub

    def failing(*args, **kwargs):
        hub = logging.getLogger("huggingface_hub.utils._http")
        for i in range(1, 6):
            hub.warning("Retrying in %ds [Retry %d/5].", 2 ** i, i)
        raise huggingface_hub.errors.LocalEntryNotFoundError("cannot reach the hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", failing)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    a = {**tiny, "source": "csv", "out": tmp_path / "out", "asof": ASOF, "args": ("--model", "NeoQuasar/Kronos-mini")}
    lines = Lines()
    logging.getLogger().addHandler(lines)
    try:
        code = cli.main(argv_for(a))
    finally:
        logging.getLogger().removeHandler(lines)
    loud = [r.getMessage() for r in lines.records if r.levelno >= logging.WARNING]
    assert code == ExitCode.MODEL and len(loud) == 1 and "cannot get config.json of NeoQuasar/Kronos-mini" in loud[0]


# ------------------------------------------------------------------------------------------------ signals

SIGNAL_RUNS = """
import importlib, json, os, signal, sys
import cli_kronos_prob_qqq as cli
# A job started in the background by a non-interactive shell (CI runners do this) inherits SIGINT ignored, and
# Python then keeps it ignored; Ctrl-C's handler is what this test is about, so put it back.
signal.signal(signal.SIGINT, signal.default_int_handler)
codes = []
for module, owner, name, sig, argv in json.loads(sys.argv[1]):
    target = eval(owner, {{"target": importlib.import_module(module)}})
    original = getattr(target, name)
    def hooked(*args, _original=original, _sig=sig, **kwargs):
        os.kill(os.getpid(), getattr(signal, _sig))  # arrives while this phase runs
        return _original(*args, **kwargs)
    setattr(target, name, hooked)
    codes.append(cli.main(argv, program=True))
    setattr(target, name, original)
open(sys.argv[2], "w").write(json.dumps(codes))
"""

SIGNALS = [
    # phase, module, owner of the hooked function, its name, signal, files left, words of the one line
    ("loading", "kronos.loading", "target", "read_weights", "SIGTERM", NOTHING, "nothing was written"),
    ("sampling", "kronos.sampler", "target.KronosPathSampler", "sample_batch", "SIGINT", NOTHING,
     "nothing was written"),
    # the renames run with signals held: the run ends right after its files are all in place, and says so
    ("writing", "forecast.publish", "target", "rename_staged", "SIGTERM", RUN_FILES | {LOCK},
     "had all been written"),
]


def test_signals_during_each_phase(tiny, tmp_path):
    """A real SIGTERM / SIGINT to a real process with the program's handlers, once in each phase. The three runs
    share one interpreter (each main() returns its code), so the test pays for one start-up, not three."""
    runs = [(module, owner, name, sig, argv_for({**tiny, "source": "csv", "out": str(tmp_path / phase),
                                                 "asof": ASOF, "args": ("-q",)}))
            for phase, module, owner, name, sig, *_ in SIGNALS]
    proc = subprocess.run([sys.executable, "-c", SIGNAL_RUNS.format(), json.dumps(runs), str(tmp_path / "codes")],
                          cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr
    codes = json.loads((tmp_path / "codes").read_text())
    lines = proc.stderr.strip().splitlines()
    assert codes == [ExitCode.INTERRUPTED] * len(SIGNALS) and len(lines) == len(SIGNALS), proc.stderr
    for (phase, *_, files, words), line in zip(SIGNALS, lines):
        assert "ERROR interrupted" in line and words in line, (phase, line)
        assert {p.name for p in (tmp_path / phase).iterdir()} == files, phase


def test_a_closed_stdout_ends_quietly(tiny, tmp_path):
    """`cli ... --json | head -1`: the reader is gone before the summary is printed. The run's files are all
    written, so it ends with 0 and no BrokenPipeError traceback."""
    read, write = os.pipe()
    os.close(read)  # closed before the child writes: every write to stdout fails with EPIPE
    a = {**tiny, "source": "csv", "out": tmp_path / "out", "asof": ASOF, "args": ("--json", "-q")}
    try:
        proc = subprocess.run([sys.executable, str(ROOT / "cli_kronos_prob_qqq.py"), *argv_for(a)], cwd=ROOT,
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=300,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    finally:
        os.close(write)
    assert proc.returncode == ExitCode.OK and proc.stderr == "", proc.stderr
    assert {p.name for p in a["out"].iterdir()} == RUN_FILES | {LOCK}
    summary_of(a["out"])  # complete JSON


def test_an_older_run_log_header_is_told_once_per_run(tiny, tmp_path, caplog):
    """preflight tells that the log's older header lacks the newer columns; the append under the lock checks the
    header again but does not tell it a second time (the live service appends every minute)."""
    a = {**tiny, "source": "csv", "out": tmp_path / "out", "asof": ASOF, "args": ()}
    run_log(OLD_LOG)(tmp_path, a)
    caplog.set_level(logging.INFO)
    code = cli.main(argv_for(a))
    told = [r for r in caplog.records if "older header" in r.getMessage()]
    assert code == ExitCode.OK and len(told) == 1, [r.getMessage() for r in told]
    assert RUN_LOG_COLUMNS[OLDEST_HEADER] in told[0].getMessage()  # names the first column it does not record
    old_log_appended(a["out"])
