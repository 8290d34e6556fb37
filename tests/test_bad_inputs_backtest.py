"""The bad-input contract of backtest.py, as one table in the style of test_bad_inputs.py: each row is an input a
user can hand the backtest, and the run must end in its documented exit code with one line naming the problem,
no traceback, and exactly the files listed left in --out (None: no folder was made). Every argument is checked
before anything is made; a damaged resume store is named with the way out (--fresh), except a torn last line of
results.jsonl, which a run stopped mid-append leaves: that one is dropped, said, and the run resumes.

Rows run in-process through ``main(argv)`` on simulated bars with the random-walk forecaster only.
"""
from __future__ import annotations

import json
import logging
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

import backtest
from support import simulated
from app.exits import ExitCode
from evaluation.jobs import BACKTEST
from forecast.owned import claim
from support.log_lines import Lines

MARKER = ".kronos-owned.json"  # what marks --out as the backtest's own
REPORT = {"calibrator_random_walk.json", "per_origin.csv", "report.json", "results.jsonl", "run.json", MARKER}
NO_FOLDER = None


@dataclass
class Case:
    id: str
    code: int
    words: tuple[str, ...]                                   # all in the one line (case-insensitive)
    args: tuple[str, ...] = ()
    setup: Callable[[Path, dict], None] | None = None        # writes inputs under the case folder, edits argv
    files: set[str] | None = NO_FOLDER                       # what --out holds afterwards
    check: Callable[[Path], None] | None = None              # more assertions on --out


# ------------------------------------------------------------------------------------------------ inputs

def config(text: str):
    def setup(d: Path, a: dict) -> None:
        (d / "config.yaml").write_text(text)
        a["config"] = d / "config.yaml"
    return setup


def text_file(name: str, text: str, key: str):
    def setup(d: Path, a: dict) -> None:
        (d / name).write_text(text)
        a[key] = d / name
    return setup


def out_at(make: Callable[[Path], Path]):
    """--out at the path ``make(case folder)`` returns (it may create things on the way)."""
    def setup(d: Path, a: dict) -> None:
        a["out"] = make(d)
    return setup


def a_file_then(*parts: str):
    def make(d: Path) -> Path:
        (d / "f").write_text("mine\n")
        return d.joinpath("f", *parts)
    return make


def store(files: dict[str, str]):
    """--out, a folder of an earlier backtest of ours (its ownership marker), already holds these files."""
    def setup(d: Path, a: dict) -> None:
        claim(a["out"], BACKTEST)
        for name, text in files.items():
            (a["out"] / name).write_text(text)
    return setup


def universe_with_damaged(symbol: str, text: str):
    """--symbols QQQ,SPY from a folder of bars files; ``symbol``'s store in --out already holds ``text``."""
    def setup(d: Path, a: dict) -> None:
        (d / "bars").mkdir()
        for name in ("QQQ", "SPY"):
            (d / "bars" / f"{name}.csv").write_bytes(Path(a["csv"]).read_bytes())
        claim(a["out"], BACKTEST)
        (a["out"] / symbol).mkdir(parents=True)
        (a["out"] / symbol / "results.jsonl").write_text(text)
        a["universe"] = ["--symbols", "QQQ,SPY", "--data-dir", str(d / "bars")]
    return setup


def earlier_run(then: Callable[[Path], None]):
    """A finished run in --out (the same command), then ``then(out)`` edits its store."""
    def setup(d: Path, a: dict) -> None:
        assert backtest.main(argv_for(a)) == ExitCode.OK
        a["before"] = records(a["out"])
        then(a["out"])
    return setup


def append(name: str, data: bytes):
    def edit(out: Path) -> None:
        with open(out / name, "ab") as fh:
            fh.write(data)
    return edit


def records(out: Path) -> list[tuple[str, str]]:
    return [(r["forecaster"], r["origin"]) for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())]


def unchanged(name: str, text: str):
    return lambda out: (out / name).read_text() == text or pytest.fail(f"{name} changed")


def resumed_whole(out: Path, a: dict) -> None:
    """The torn line is gone and the store holds every record once, as before the tear."""
    assert (out / "results.jsonl").read_bytes().endswith(b"\n")
    assert records(out) == a["before"]


TORN = '{"forecaster":"random_walk","origin":"2025-03-0'
RECORD = '{"forecaster":"random_walk","origin":"2025-03-05T15:00:00+00:00","p_up":0.5}\n'
OTHER_YAML = "every: 30\nhorizon: 20\nevery: 60\n"


# ------------------------------------------------------------------------------------------------ the table

CASES = [
    # dates: ISO only, checked before anything is read or made
    Case("start-month-13", 2, ("'start'", "YYYY-MM-DD", "2025-13-01"), args=("--start", "2025-13-01")),
    Case("start-month-first", 2, ("'start'", "YYYY-MM-DD", "10/06/2025"), args=("--start", "10/06/2025")),
    Case("start-a-word", 2, ("'start'", "YYYY-MM-DD", "June"), args=("--start", "June")),
    Case("end-not-a-date", 2, ("'end'", "YYYY-MM-DD"), args=("--end", "2025-03-05T10:00")),
    Case("end-before-start", 2, ("'end' (2025-03-04) is before 'start' (2025-03-05)",),
         args=("--start", "2025-03-05", "--end", "2025-03-04")),
    # numbers: finite, and within what a timer or a seed can take
    Case("number-nan", 2, ("'rule_p_up'", "finite number"), args=("--rule-p-up", "nan")),
    Case("number-inf", 2, ("'fee_bp'", "finite number"), args=("--fee-bp", "inf")),
    Case("number-nan-in-yaml", 2, ("'stop_bp'", "finite number"), setup=config("stop_bp: .nan\n")),
    Case("number-nan-in-kronos-setting", 2, ("'top_p'", "finite number"), args=("--kronos", "name=k,top_p=nan")),
    Case("time-budget-absurd", 2, ("'time_budget'", "86400"), args=("--time-budget", "1e20")),
    Case("seed-negative", 2, ("'seed'", "0..4294967295"), args=("--seed", "-1")),
    # files of settings
    Case("config-duplicate-key", 2, ("duplicate key 'every'", "line 3", "first given at line 1"),
         setup=config(OTHER_YAML)),
    Case("kronos-settings-duplicate-key", 2, ("--kronos-settings", "duplicate key 'top_p'"),
         setup=text_file("k.yaml", "- name: k\n  top_p: 0.9\n  top_p: 1.0\n", "kronos_settings")),
    # paths
    Case("out-is-a-file", 2, ("--out", "is a file, not a folder"), setup=out_at(a_file_then())),
    Case("out-under-a-file", 2, ("--out", "cannot be made", "is a file, not a folder"),
         setup=out_at(a_file_then("out"))),
    Case("fit-run-log-missing", 2, ("--fit-run-log", "runs_QQQ.csv", "no such file"),
         setup=lambda d, a: a.update(fit_run_log=d / "runs_QQQ.csv")),
    Case("fit-run-log-a-folder", 2, ("--fit-run-log", "is not a file"),
         setup=lambda d, a: ((d / "logs").mkdir(), a.update(fit_run_log=d / "logs"))),
    Case("bars-semicolon-separated", 2, ("semicolon-separated", "use commas"),
         setup=text_file("semi.csv", "timestamp;open;high;low;close;volume\n2025-03-03T14:30:00Z;1;2;0.5;1;10\n",
                         "csv")),
    # Ray: a malformed address is bad input; an unreachable cluster is the data-source code, at once, and
    # neither makes a folder or a run.json
    Case("ray-address-malformed", 2, ("'ray_address'", "host:port"), args=("--ray", "--ray-address", "not an address")),
    Case("ray-address-port-zero", 2, ("'ray_address'", "1..65535"), args=("--ray", "--ray-address", "127.0.0.1:0")),
    Case("ray-address-unreachable", 4, ("--ray-address 127.0.0.1:1", "no Ray cluster answers"),
         args=("--ray", "--ray-address", "127.0.0.1:1")),
    # a damaged resume store: named, with --fresh; nothing else written
    Case("run-json-torn", 2, ("run.json", "damaged", "--fresh"), setup=store({"run.json": '{"settings": {"ev'}),
         files={MARKER, "run.json"}, check=unchanged("run.json", '{"settings": {"ev')),
    Case("run-json-a-list", 2, ("run.json", "damaged", "--fresh"), setup=store({"run.json": "[1, 2]\n"}),
         files={MARKER, "run.json"}),
    Case("results-torn-inside", 2, ("results.jsonl", "damaged", "line 1", "--fresh"),
         setup=store({"results.jsonl": TORN + "\n" + RECORD}), files={MARKER, "results.jsonl"},
         check=unchanged("results.jsonl", TORN + "\n" + RECORD)),
    Case("results-not-records", 2, ("results.jsonl", "line 2", "--fresh"),
         setup=store({"results.jsonl": RECORD + '{"origin": 1}\n'}), files={MARKER, "results.jsonl"}),
    Case("results-damaged-fresh", 0, (), args=("--fresh",), setup=store({"results.jsonl": TORN + "\n" + RECORD}),
         files=REPORT),
    # many symbols: every store is read before any symbol runs, so the first symbol's folder is not even made
    Case("results-damaged-in-one-symbol", 2, ("SPY", "results.jsonl", "damaged", "--fresh"),
         setup=universe_with_damaged("SPY", TORN + "\n"), files={MARKER, "SPY"}),
    # a run stopped mid-append: its torn last line is dropped with a warning and the run resumes
    Case("results-torn-last-line", 0, ("results.jsonl", "incomplete", "dropped it"),
         setup=earlier_run(append("results.jsonl", TORN.encode())), files=REPORT),
]


# ------------------------------------------------------------------------------------------------ running

@pytest.fixture(scope="module")
def bars(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad_backtest") / "bars.csv"
    simulated.simulate_bars("2025-03-03", 4, seed=27).rename_axis("timestamp").reset_index().to_csv(path, index=False)
    return path


def argv_for(a: dict) -> list[str]:
    argv = ["--csv", str(a["csv"]), "--forecasters", "random_walk", "--n-samples", "8", "--every", "60",
            "--out", str(a["out"]), "--no-progress", "--no-plots"]
    for key in ("config", "fit_run_log", "kronos_settings"):
        if key in a:
            argv += [f"--{key.replace('_', '-')}", str(a[key])]
    return argv + a.get("universe", []) + list(a["args"])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, bars: Path, tmp_path: Path) -> None:
    a = {"csv": bars, "out": tmp_path / "out", "args": ()}
    if case.setup is not None:
        case.setup(tmp_path, a)
    a["args"] = case.args
    lines = Lines()
    root = logging.getLogger()
    root.addHandler(lines)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        code = backtest.main(argv_for(a))
    finally:
        root.removeHandler(lines)
        root.setLevel(old_level)
    assert code == case.code
    loud = [r for r in lines.records if r.levelno >= logging.WARNING]
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in loud)
    if case.code:
        message = loud[-1].getMessage()  # the one line the run ends with
        assert all(w.lower() in message.lower() for w in case.words), message
    else:  # a run that went through: no error, and the words (if any) said once as a warning
        assert not [r for r in loud if r.levelno >= logging.ERROR]
        said = [r.getMessage() for r in loud if all(w.lower() in r.getMessage().lower() for w in case.words)]
        assert len(said) == (1 if case.words else len(said)), [r.getMessage() for r in loud]
    out = a["out"]
    present = {p.name for p in out.iterdir()} if out.is_dir() else None
    assert present == case.files
    if out.is_file():
        assert out.read_text() == "mine\n"  # the user's file, as it was
    if case.id == "results-torn-last-line":
        resumed_whole(out, a)
    elif case.check is not None:
        case.check(out)


def test_the_table_covers_every_kind_of_argument():
    kinds = {c.id.split("-")[0] for c in CASES}
    assert {"start", "end", "number", "config", "out", "fit", "ray", "run", "results"} <= kinds
    assert {c.code for c in CASES} >= {0, 2, 4}


class SilentCluster:
    """Stands in for Ray joining an address where something listens but no Ray answers: ray.init retries inside
    a loop that swallows every Exception, as Ray's own does (for minutes)."""

    def __init__(self) -> None:
        self.shut = False

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs) -> None:
        while True:
            try:
                time.sleep(0.02)
            except Exception:  # noqa: BLE001 - what Ray's retry loop does
                pass

    def shutdown(self) -> None:
        self.shut = True


def test_a_cluster_that_never_answers_is_given_up_after_the_join_timeout(monkeypatch) -> None:
    from evaluation import ray_runner
    from marketdata.frame import DataSourceError

    monkeypatch.setattr(ray_runner, "import_ray", lambda: SilentCluster())
    with socket.socket() as listener:  # the TCP probe finds a listener, so only the timeout can end the join
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        t0 = time.monotonic()
        expected = f"--ray-address {address}: cannot join a Ray cluster there \\(no answer within 0.3 s\\)"
        with pytest.raises(DataSourceError, match=expected):
            ray_runner.connect(address, timeout_s=0.3)
    assert time.monotonic() - t0 < 30  # not a timing test: without the alarm this join never ends


def test_auto_without_a_cluster_is_the_data_source_code(monkeypatch) -> None:
    from app.exits import exit_code_for
    from evaluation import ray_runner

    class NoCluster(SilentCluster):
        def init(self, **kwargs) -> None:
            raise ConnectionError("Could not find any running Ray instance.\nPlease specify the one to connect to")

    monkeypatch.setattr(ray_runner, "import_ray", lambda: NoCluster())
    with pytest.raises(Exception) as caught:
        ray_runner.connect("auto")
    assert exit_code_for(caught.value) == ExitCode.DATA_SOURCE
    assert str(caught.value).startswith("--ray-address auto: cannot join a Ray cluster there (Could not find any "
                                        "running Ray instance.)")
