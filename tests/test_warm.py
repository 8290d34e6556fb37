"""--warm: a resident worker does the run; what it writes, prints and exits with equals an in-process run's.

Each test points KRONOS_WARM_DIR at its own short folder under /tmp (a Unix socket path has ~100 bytes) and its
fixture ends every worker it started. Warm and cold runs replay the same bars with the same seed; files are
compared byte for byte (the summary without its timings, the run log without its runtime).
"""
import csv
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

import cli_kronos_prob_qqq as cli
from app import warm
from app.exits import ExitCode
from support.kronos_checkpoints import write_checkpoint_pair
from support.bars import KEYS, TIMING_FREE, synthetic_bars

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(checkpoint_pairs):
    return checkpoint_pairs("tiny", 2)  # read only: shared by the session (conftest.py)


def worker_pids(directory: Path) -> dict[str, int]:
    """The pid behind each listening socket in the folder, by socket name."""
    pids = {}
    for sock in directory.glob("*.sock"):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(str(sock))
            pids[sock.name] = warm.peer_pid(conn)
        except OSError:
            pass
        finally:
            conn.close()
    return pids


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    for proc in warm._started:  # our own child: reap it, else it stays as a zombie
        if proc.pid == pid and proc.poll() is not None:
            return True
    return False


def wait_for(condition, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def warm_dir(monkeypatch):
    directory = Path(tempfile.mkdtemp(prefix="kw", dir="/tmp"))
    os.chmod(directory, 0o700)
    monkeypatch.setenv(warm.DIR_ENV, str(directory))
    monkeypatch.setattr(warm, "_started", [])
    yield directory
    pids = set(worker_pids(directory).values()) | {p.pid for p in warm._started if p.poll() is None}
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for proc in warm._started:
        proc.wait(timeout=30)
    assert wait_for(lambda: all(gone(p) for p in pids), 30), "a worker outlived its test"
    shutil.rmtree(directory, ignore_errors=True)


def run_args(ckpt, bars, out, *extra):
    model, tokenizer = ckpt
    return ["--source", "csv", "--csv", str(bars), "--model", str(model), "--tokenizer", str(tokenizer),
            "--out", str(out), "--device", "cpu", "-q", "--n-samples", "16", "--lookback", "120",
            *TIMING_FREE, *map(str, extra)]


def comparable(out: Path) -> dict[str, object]:
    """Every file of an output folder, the summaries without their timings and the run log without runtimes."""
    files = {}
    for p in sorted(out.iterdir()):
        if p.name.startswith("."):
            continue
        if p.name.startswith("pred_summary_"):
            doc = json.loads(p.read_text())
            doc.pop("timings_s")
            files[p.name] = doc
        elif p.name.startswith("runs_"):
            with p.open() as fh:
                files[p.name] = [{k: v for k, v in row.items() if k != "runtime_s"} for row in csv.DictReader(fh)]
        else:
            files[p.name] = p.read_bytes()
    return files


INSTANTS = ("2025-06-04T15:00:00Z", "2025-06-04T15:01:00Z", "2025-06-04T19:48:00Z", "2025-06-04T20:00:00Z")


def test_warm_runs_equal_cold_runs(tiny, synthetic_bars_csv, tmp_path, warm_dir, capsys):
    for asof in INSTANTS:  # one seed: the seed is a setting that affects results, so part of the worker's key
        extra = ("--asof", asof, "--seed", "5")
        assert cli.main(run_args(tiny, synthetic_bars_csv, tmp_path / "cold", *extra)) == ExitCode.OK
        cold_text = capsys.readouterr().out
        assert cli.main(run_args(tiny, synthetic_bars_csv, tmp_path / "warm", "--warm", *extra)) == ExitCode.OK
        assert capsys.readouterr().out == cold_text
    assert comparable(tmp_path / "warm") == comparable(tmp_path / "cold")
    # 4 runs' 6 files (summary, 4 paths CSVs, bands CSV), 3 latest copies, the run log, the online calibration state
    assert len(comparable(tmp_path / "cold")) == 4 * 6 + 3 + 1 + 1
    assert len(warm._started) == 1 and len(worker_pids(warm_dir)) == 1  # one worker did every warm run
    # --json prints the same document (timings aside)
    extra = ("--asof", INSTANTS[0], "--seed", "5", "--json")
    assert cli.main(run_args(tiny, synthetic_bars_csv, tmp_path / "c2", *extra)) == 0
    cold = json.loads(capsys.readouterr().out)
    assert cli.main(run_args(tiny, synthetic_bars_csv, tmp_path / "w2", "--warm", *extra)) == 0
    warm_doc = json.loads(capsys.readouterr().out)
    assert {k: v for k, v in warm_doc.items() if k != "timings_s"} == {k: v for k, v in cold.items() if k != "timings_s"}


def test_private_socket_and_folder(tiny, synthetic_bars_csv, tmp_path, warm_dir):
    assert cli.main(run_args(tiny, synthetic_bars_csv, tmp_path / "a", "--warm", "--asof", INSTANTS[0])) == 0
    (sock,) = warm_dir.glob("*.sock")
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600 and stat.S_IMODE(warm_dir.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in warm_dir.iterdir() if p.is_file())


def test_failures_give_the_in_process_lines(tiny, synthetic_bars_csv, tmp_path, warm_dir, caplog):
    """Settings the worker refuses (a check across keys), a model that is not there, a skip: same code, same
    line."""
    cases = [("--lookback", "600", "--model", "NeoQuasar/Kronos-small"),  # lookback + horizon > context
             ("--model", str(tmp_path / "nowhere")),
             ("--cron", "--asof", "2025-06-04T21:00:00Z"),
             ("--asof", "yesterday")]
    for case in cases:
        lines = []
        for mode in ((), ("--warm",)):
            caplog.clear()
            code = cli.main(run_args(tiny, synthetic_bars_csv, tmp_path / "o", *mode, *case))
            lines.append((code, [r.getMessage() for r in caplog.records if r.levelno >= 30]))
        assert lines[0] == lines[1] and lines[0][0] != 0, case
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("pred_*"))


def test_killed_worker_is_replaced(tiny, synthetic_bars_csv, tmp_path, warm_dir, caplog):
    caplog.set_level("INFO")
    assert cli.main(run_args(tiny, synthetic_bars_csv, tmp_path / "w", "--warm", "--asof", INSTANTS[0], "-v", "--seed", "1")) == 0
    (pid,) = worker_pids(warm_dir).values()
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: gone(pid))
    caplog.clear()
    assert cli.main(run_args(tiny, synthetic_bars_csv, tmp_path / "w", "--warm", "--asof", INSTANTS[1], "-v", "--seed", "1")) == 0
    assert any("starting a warm worker" in r.getMessage() for r in caplog.records)
    (new,) = worker_pids(warm_dir).values()
    assert new != pid
    assert cli.main(run_args(tiny, synthetic_bars_csv, tmp_path / "c", "--asof", INSTANTS[1], "--seed", "1")) == 0
    assert comparable(tmp_path / "w")["paths_QQQ_latest.csv"] == comparable(tmp_path / "c")["paths_QQQ_latest.csv"]


def test_hung_worker_times_out_and_the_run_forecasts_here(tiny, synthetic_bars_csv, tmp_path, warm_dir, caplog,
                                                           monkeypatch):
    assert cli.main(run_args(tiny, synthetic_bars_csv, tmp_path / "w", "--warm", "--asof", INSTANTS[0], "--seed", "1")) == 0
    (pid,) = worker_pids(warm_dir).values()
    os.kill(pid, signal.SIGSTOP)  # it still accepts connections (the kernel's backlog) but never answers
    monkeypatch.setattr(warm, "ACK_TIMEOUT_S", 1.0)
    caplog.clear()
    assert cli.main(run_args(tiny, synthetic_bars_csv, tmp_path / "w", "--warm", "--asof", INSTANTS[1], "--seed", "1")) == 0
    lines = [r.getMessage() for r in caplog.records if r.levelno >= 30]
    assert lines == [f"warm worker unusable: the worker (pid {pid}) did not take the job (no answer in time); "
                     "forecasting in this process"]
    assert wait_for(lambda: gone(pid))  # the hung worker was ended, so the next run does not wait for it again
    assert cli.main(run_args(tiny, synthetic_bars_csv, tmp_path / "c", "--asof", INSTANTS[1], "--seed", "1")) == 0
    assert comparable(tmp_path / "w")["paths_QQQ_latest.csv"] == comparable(tmp_path / "c")["paths_QQQ_latest.csv"]


def test_other_settings_get_their_own_worker_and_another_version_falls_back(tiny, synthetic_bars_csv, tmp_path, warm_dir,
                                                                             caplog, monkeypatch):
    assert cli.main(run_args(tiny, synthetic_bars_csv, tmp_path / "a", "--warm", "--asof", INSTANTS[0], "--seed", "1")) == 0
    assert cli.main(run_args(tiny, synthetic_bars_csv, tmp_path / "b", "--warm", "--asof", INSTANTS[0], "--seed", "2")) == 0
    # settings that do not change results share the worker
    assert cli.main(run_args(tiny, synthetic_bars_csv, tmp_path / "c", "--warm", "--asof", INSTANTS[0], "--seed", "2",
                             "--plot")) == 0
    pids = worker_pids(warm_dir)
    assert len(pids) == 2 and len(set(pids.values())) == 2
    assert json.loads((tmp_path / "a" / "pred_summary_QQQ_latest.json").read_text())["seed"] == 1
    assert json.loads((tmp_path / "b" / "pred_summary_QQQ_latest.json").read_text())["seed"] == 2
    # a client of another version: the worker refuses, the run forecasts here, the worker exits
    old = dict(pids)
    monkeypatch.setattr(warm, "code_version", lambda: "another-version")
    caplog.clear()
    assert cli.main(run_args(tiny, synthetic_bars_csv, tmp_path / "a", "--warm", "--asof", INSTANTS[1], "--seed", "1")) == 0
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= 30]
    assert "refused the job: it runs another version of the code" in line and line.endswith("in this process")
    assert wait_for(lambda: len(worker_pids(warm_dir)) == 1)  # the refusing worker exited, the other one stays
    assert set(worker_pids(warm_dir).values()) < set(old.values())
    assert json.loads((tmp_path / "a" / "pred_summary_QQQ_latest.json").read_text())["asof"] == INSTANTS[1]


@pytest.mark.parametrize("problem", ["loose socket", "foreign socket", "loose folder"])
def test_a_socket_or_folder_that_is_not_private_is_refused(problem, tiny, synthetic_bars_csv, tmp_path, warm_dir, caplog,
                                                           monkeypatch):
    args = run_args(tiny, synthetic_bars_csv, tmp_path / "w", "--warm", "--asof", INSTANTS[0])
    assert cli.main(args) == 0
    (sock,) = warm_dir.glob("*.sock")
    if problem == "loose socket":
        os.chmod(sock, 0o666)
        expected = f"the worker socket {sock} is open to others (mode 0666, must be 0600)"
    elif problem == "foreign socket":
        if os.geteuid() == 0:
            os.chown(sock, 65534, -1)
            uid = 65534
        else:  # without root no file can be given away: this user then plays "another user"
            uid = os.getuid()
            monkeypatch.setattr(warm, "_uid", lambda: uid + 1)
        expected = f"belongs to uid {uid}, not to this user"
    else:
        os.chmod(warm_dir, 0o755)
        expected = f"the runtime folder {warm_dir} is open to others (mode 0755, must be 0700)"
    caplog.clear()
    before = sock.stat()
    assert cli.main(run_args(tiny, synthetic_bars_csv, tmp_path / "w", "--warm", "--asof", INSTANTS[1])) == 0
    lines = [r.getMessage() for r in caplog.records if r.levelno >= 30]
    assert len(lines) == 1 and expected in lines[0] and lines[0].endswith("forecasting in this process"), lines
    assert sock.stat().st_ino == before.st_ino  # not ours to replace
    assert json.loads((tmp_path / "w" / "pred_summary_QQQ_latest.json").read_text())["asof"] == INSTANTS[1]


def test_idle_worker_exits_by_itself(tiny, synthetic_bars_csv, tmp_path, warm_dir):
    # 0.02 minutes: the worker ends about a second after its last forecast, and removes its socket
    assert cli.main(run_args(tiny, synthetic_bars_csv, tmp_path / "w", "--warm", "--warm-idle", "0.02",
                             "--asof", INSTANTS[0])) == 0
    (pid,) = worker_pids(warm_dir).values()
    assert wait_for(lambda: gone(pid), 30)
    assert not list(warm_dir.glob("*.sock"))


def test_bad_bar_policies_match():
    from forecast.settings import BAD_BAR_POLICIES
    from marketdata.quality import BAD_BAR_POLICIES as QUALITY

    assert BAD_BAR_POLICIES == QUALITY


# ----------------------------------------------------------------------------- Alpaca, cron, the thin client

def alpaca_env(monkeypatch, fake):
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ALPACA_DATA_URL", fake.url)


def alpaca_run_args(ckpt, out, asof, *extra):
    model, tokenizer = ckpt
    return ["--source", "alpaca", "--model", str(model), "--tokenizer", str(tokenizer), "--out", str(out),
            "--device", "cpu", "--asof", asof, "--n-samples", "16", "--lookback", "120", "--seed", "4", "-q",
            *TIMING_FREE, *map(str, extra)]


@pytest.fixture
def alpaca_bars():
    from support.fake_alpaca import FakeAlpaca, bars_page

    frame = synthetic_bars()
    frame.index = pd.DatetimeIndex(frame["timestamp"])
    delay = {"s": 0.0}

    def respond(query):
        time.sleep(delay["s"])
        return bars_page(frame, query)

    fake = FakeAlpaca(respond)
    fake.delay = delay
    yield fake
    fake.close()


def test_warm_worker_asks_alpaca_only_for_new_minutes(tiny, tmp_path, warm_dir, alpaca_bars, monkeypatch):
    alpaca_env(monkeypatch, alpaca_bars)
    instants = ("2025-06-04T15:00:30Z", "2025-06-04T15:07:30Z", "2025-06-04T15:08:10Z")
    warm_requests = []
    for asof in instants:
        seen = len(alpaca_bars.requests)
        assert cli.main(alpaca_run_args(tiny, tmp_path / "warm", asof, "--warm")) == 0
        warm_requests.append([r["query"] for r in alpaca_bars.requests[seen:]])
        seen = len(alpaca_bars.requests)
        assert cli.main(alpaca_run_args(tiny, tmp_path / "cold", asof)) == 0
        (cold,) = [r["query"] for r in alpaca_bars.requests[seen:]]
        assert pd.Timestamp(cold["start"]) == pd.Timestamp("2025-06-02T13:30Z")  # three sessions, every time
    assert [len(r) for r in warm_requests] == [1, 1, 1]  # one request per run, the first for all three sessions
    starts = [pd.Timestamp(r[0]["start"]) for r in warm_requests]
    # then only from a few minutes before the previous run's instant (a just-closed bar may still be revised)
    assert starts == [pd.Timestamp("2025-06-02T13:30Z"), pd.Timestamp("2025-06-04T14:55Z"),
                      pd.Timestamp("2025-06-04T15:02Z")]
    assert comparable(tmp_path / "warm") == comparable(tmp_path / "cold")


def test_two_cron_runs_at_once_one_runs_one_exits_6(tiny, tmp_path, warm_dir, alpaca_bars, monkeypatch):
    alpaca_env(monkeypatch, alpaca_bars)
    out = tmp_path / "out"
    asof = "2025-06-04T15:00:30Z"
    assert cli.main(alpaca_run_args(tiny, out, asof, "--warm")) == 0  # the worker is up
    alpaca_bars.delay["s"] = 4.0  # the next runs' bars take a while: the first still runs when the second comes
    cmd = [sys.executable, str(ROOT / "cli_kronos_prob_qqq.py"), *alpaca_run_args(tiny, out, asof, "--warm")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    seen = len(alpaca_bars.requests)
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: len(alpaca_bars.requests) > seen, 120)
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == ExitCode.LOCKED and second.stdout == ""
    assert second.stderr.strip().endswith(f"another run holds the lock {out / '.run_QQQ.lock'}; this run exits "
                                          "without doing anything; nothing was written for this run")
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert "P(up" in stdout
    # a cold run holding the lock stops a warm one the same way, with the same line
    from filelock import FileLock

    alpaca_bars.delay["s"] = 0.0
    with FileLock(str(out / ".run_QQQ.lock")):
        held = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        cold = subprocess.run(cmd[:-1], env=env, capture_output=True, text=True, timeout=300)
    assert held.returncode == cold.returncode == ExitCode.LOCKED
    stamp = re.compile(r"^\S+ \([^)]*\) ")  # a log line's time: UTC, then New York in parentheses
    assert stamp.sub("", held.stderr) == stamp.sub("", cold.stderr)  # the same line, timestamps aside


def test_the_client_imports_nothing_heavy(tiny, synthetic_bars_csv, tmp_path, warm_dir):
    args = run_args(tiny, synthetic_bars_csv, tmp_path / "w", "--warm", "--asof", INSTANTS[0])
    assert cli.main(args) == 0  # the worker is up
    probe = ("import json, sys; import cli_kronos_prob_qqq as c; code = c.main(sys.argv[1:]); "
             "heavy = [m for m in ('torch', 'pandas', 'numpy', 'exchange_calendars', 'alpaca') if m in sys.modules]; "
             "print('PROBE', json.dumps([code, heavy]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", probe, *args[:-2], "--asof", INSTANTS[1]], env=env,
                          capture_output=True, text=True, timeout=300)
    line = [x for x in proc.stdout.splitlines() if x.startswith("PROBE")][0]
    assert json.loads(line.split(" ", 1)[1]) == [0, []], proc.stderr
    assert len(warm._started) == 1  # it was the worker that forecast


def test_sigterm_on_the_client_stops_the_workers_run(tiny, tmp_path, warm_dir, alpaca_bars, monkeypatch):
    alpaca_env(monkeypatch, alpaca_bars)
    out = tmp_path / "out"
    assert cli.main(alpaca_run_args(tiny, out, "2025-06-04T15:00:30Z", "--warm")) == 0
    (pid,) = worker_pids(warm_dir).values()
    alpaca_bars.delay["s"] = 6.0
    asof = "2025-06-04T15:03:30Z"
    cmd = [sys.executable, str(ROOT / "cli_kronos_prob_qqq.py"), *alpaca_run_args(tiny, out, asof, "--warm")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    seen = len(alpaca_bars.requests)
    client = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: len(alpaca_bars.requests) > seen, 120)  # the worker is fetching this run's bars
    client.send_signal(signal.SIGTERM)
    stdout, stderr = client.communicate(timeout=60)
    assert client.returncode == ExitCode.INTERRUPTED and stdout == ""
    assert stderr.strip().endswith("interrupted; nothing was written for this run"), stderr
    assert not list(out.glob("*20250604T150330Z*"))
    alpaca_bars.delay["s"] = 0.0
    assert cli.main(alpaca_run_args(tiny, out, "2025-06-04T15:04:30Z", "--warm")) == 0  # the same worker goes on
    assert worker_pids(warm_dir) and pid in worker_pids(warm_dir).values()


def test_the_kept_engine_is_reloaded_when_its_files_change(tmp_path):
    from app.config import load_config
    from forecast.resident import Resident

    model, tokenizer = write_checkpoint_pair(tmp_path / "ckpt", shape="tiny", seed=3)
    cfg = load_config(None, {"model": str(model), "tokenizer": str(tokenizer), "device": "cpu"})
    resident = Resident()
    first = resident.engine(cfg)
    assert resident.engine(cfg) is first and resident.loads == 1
    assert resident.engine(cfg.replace(top_p=0.5)) is first  # sampling settings are not the engine's
    write_checkpoint_pair(tmp_path / "ckpt", shape="tiny", seed=4)  # new weights under the same name
    second = resident.engine(cfg)
    assert second is not first and resident.loads == 2
    import torch

    a, b = (dict(s.model.named_parameters()) for s in (first, second))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the new weights, not the kept ones
