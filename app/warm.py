"""--warm, the client side: hand this run to the user's resident worker (app/warm_worker.py), which keeps the
model, its decode plans and the recent bars, and relay what it did: the same files, lines and exit code.

This runs every minute under cron, so it imports only the standard library and app.config (YAML) before it knows
a worker takes the job. The worker is private: a Unix socket 0600 in a directory 0700 of the user's runtime dir
($XDG_RUNTIME_DIR/kronos, else <tmp>/kronos-<uid>; KRONOS_WARM_DIR overrides), both checked for owner and mode
before use, and the peer's uid checked once connected. The socket's name is a hash of everything that decides a
forecast (settings, model files' names, the engine's environment, the code's location), so other settings get
their own worker. Whenever the worker cannot take the run (another version, no answer in time, gone mid-run, a
runtime dir or socket that is not private) the run forecasts in this process instead, after one line saying why.
docs/warm.md has the design and the measurements.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ENTRY = "cli_kronos_prob_qqq:main"  # what the worker runs for each job: the script's own main()
DIR_ENV = "KRONOS_WARM_DIR"
ACK_TIMEOUT_S = 5.0      # a worker that does not take the job this fast is hung
START_TIMEOUT_S = 30.0   # a new worker must listen within this
RESULT_GRACE_S = 10.0    # the worker stops a run at its time budget; wait this much longer for its answer
MAX_MESSAGE = 64 << 20
# Passed with each job (never part of the key, never logged): where and as whom to fetch bars.
JOB_ENV = ("ALPACA_KEY_ID", "ALPACA_SECRET_KEY", "APCA_API_KEY_ID", "APCA_API_SECRET_KEY", "ALPACA_DATA_URL")
# Variables that change what the engine loads or computes: part of the key (hashed).
KEY_ENV_PREFIXES = ("HF_", "HUGGINGFACE_", "TORCH", "PYTORCH_", "CUDA_", "OMP_", "MKL_", "KMP_", "LRU_CACHE",
                    "ONEDNN_")
CODE_DIRS = ("app", "forecast", "kronos", "marketdata")

log = logging.getLogger("kronos_prob")
_started: list[subprocess.Popen] = []  # kept so that no Popen is collected while its worker runs


class Unusable(Exception):
    """The worker cannot take this run; the message says why (one line)."""


def _uid() -> int:
    return os.getuid()


# ------------------------------------------------------------------------------------------------ the entry point

def warm_run(args: Any, argv: list[str]) -> int | None:
    """The run's exit code when a warm worker did it; None when --warm is off, the settings do not load (the
    in-process run then reports them), or the worker could not take the run (after a line saying why)."""
    values = _settings(args)
    if values is None or not values["warm"]:
        return None
    try:
        return _hand_over(values, argv, bool(args.verbose), bool(args.quiet))
    except Unusable as exc:
        log.warning("warm worker unusable: %s; forecasting in this process", exc)
        return None
    except KeyboardInterrupt as exc:  # before the worker took the job: it drops a job whose client hung up
        from app.operation import report_failure

        return report_failure(exc, log, written=False)


def _settings(args: Any) -> dict[str, Any] | None:
    from app.config import ConfigError, key_values, overrides_from_args, read_yaml

    try:
        file_values = read_yaml(args.config) if args.config is not None else {}
        return key_values(file_values, overrides_from_args(args))
    except ConfigError:
        return None


def _hand_over(values: dict[str, Any], argv: list[str], verbose: bool, quiet: bool) -> int:
    key, version = worker_key(values), code_version()
    directory = runtime_dir()
    path = directory / f"warm-{key}.sock"
    if len(os.fsencode(path)) > 100:
        raise Unusable(f"the socket path {path} is too long for a Unix socket; set {DIR_ENV} to a short folder")
    conn = connect(path)
    if conn is None:
        conn = start_worker(directory, key, version, values)
    job = {"op": "run", "key": key, "version": version, "argv": argv, "cwd": os.getcwd(),
           "env": {k: os.environ[k] for k in JOB_ENV if k in os.environ}, "verbose": verbose, "quiet": quiet,
           "idle_s": 60.0 * values["warm_idle"], "lock": str(Path(values["out"]) / f".run_{values['symbol']}.lock")}
    with conn:
        pid = peer_pid(conn)
        try:
            conn.settimeout(ACK_TIMEOUT_S)
            send(conn, job)
            reader = conn.makefile("rb")
            ack = receive(reader)
        except (OSError, EOFError, ValueError) as exc:
            _kill_hung(pid, exc)
            raise Unusable(f"the worker (pid {pid}) did not take the job ({_why(exc)})") from None
        if not ack.get("ack"):
            raise Unusable(f"the worker (pid {pid}) refused the job: {ack.get('reason', 'no reason given')}")
        return _await_result(conn, reader, pid, values["time_budget"] + RESULT_GRACE_S)


def _await_result(conn: socket.socket, reader: Any, pid: int | None, wait_s: float) -> int:
    conn.settimeout(wait_s)
    try:
        result = receive(reader)
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: the worker stops the run the way an in-process run stops (all or nothing) and says so
        try:
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        conn.settimeout(5.0)
        try:
            result = receive(reader)
        except (OSError, EOFError, ValueError, KeyboardInterrupt):
            log.error("interrupted; the warm worker (pid %s) did not say what it had written", pid)
            return 130
    except (OSError, EOFError, ValueError) as exc:
        _kill_hung(pid, exc)
        raise Unusable(f"the worker (pid {pid}) did not finish the run ({_why(exc)})") from None
    if not isinstance(result.get("exit"), int):
        raise Unusable(f"the worker (pid {pid}) gave no exit code")
    relay(result)
    return result["exit"]


def relay(result: dict[str, Any]) -> None:
    """The worker's log records through this process's logging, then its stdout."""
    for rec in result.get("records", []):
        logger = logging.getLogger(rec["name"])
        if logger.isEnabledFor(rec["levelno"]):
            logger.handle(logging.makeLogRecord({**rec, "args": None, "exc_info": None}))
    if result.get("stdout"):
        sys.stdout.write(result["stdout"])
        sys.stdout.flush()


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no answer in time"
    if isinstance(exc, EOFError):
        return "it hung up"
    return f"{type(exc).__name__}: {exc}"


def _kill_hung(pid: int | None, exc: BaseException) -> None:
    # a worker that stopped answering would make every later run wait for it: end it (it is ours: peer uid checked)
    if pid and isinstance(exc, TimeoutError | socket.timeout):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


# ------------------------------------------------------------------------------------------------ identity

def worker_key(values: dict[str, Any]) -> str:
    """A hash of everything a worker's results depend on: the settings that affect results, the working folder
    (relative paths), the engine's environment, the interpreter and this checkout."""
    from app.config import KEYS

    settings = {k.name: values[k.name] for k in KEYS if k.affects_results}
    env = {k: v for k, v in os.environ.items() if k.startswith(KEY_ENV_PREFIXES)}
    blob = json.dumps({"settings": settings, "env": env, "cwd": os.getcwd(), "python": sys.executable,
                       "root": str(ROOT)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def code_version() -> str:
    """The code's identity: name, size and mtime of every module the forecast runs (a stat each, no reads)."""
    h = hashlib.sha256()
    files = [ROOT / "cli_kronos_prob_qqq.py"]
    for d in CODE_DIRS:
        files += sorted(p for p in (ROOT / d).glob("*.py"))
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(ROOT)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


# ------------------------------------------------------------------------------------------------ the socket

def runtime_dir() -> Path:
    """The private folder of this user's workers, created 0700 if missing; Unusable when it is not private."""
    override = os.environ.get(DIR_ENV)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if override:
        path = Path(override)
    elif xdg and os.path.isdir(xdg):
        path = Path(xdg) / "kronos"
    else:
        path = Path(tempfile.gettempdir()) / f"kronos-{_uid()}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise Unusable(f"cannot create the runtime folder {path} ({exc.strerror})") from None
    check_private(path, "runtime folder", stat.S_ISDIR, 0o700)
    return path


def check_private(path: Path, what: str, kind: Any, mode: int) -> bool:
    """True when path exists as `kind`, owned by this user, with no access for others; False when missing;
    Unusable otherwise (a link, someone else's, or open to others)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not kind(st.st_mode):
        raise Unusable(f"the {what} {path} is not what it should be (a link or another kind of file)")
    if st.st_uid != _uid():
        raise Unusable(f"the {what} {path} belongs to uid {st.st_uid}, not to this user; remove it")
    if st.st_mode & 0o077:
        raise Unusable(f"the {what} {path} is open to others (mode {stat.S_IMODE(st.st_mode):04o}, must be "
                       f"{mode:04o}); remove it")
    return True


def connect(path: Path) -> socket.socket | None:
    """A connection to the worker at path, None when no worker listens there."""
    if not check_private(path, "worker socket", stat.S_ISSOCK, 0o600):
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(ACK_TIMEOUT_S)
        conn.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        conn.close()
        return None  # a worker that ended without removing its socket (killed): a new one takes its place
    except OSError as exc:
        conn.close()
        raise Unusable(f"cannot connect to {path} ({exc.strerror or exc})") from None
    creds = peer_credentials(conn)
    if creds is not None and creds[1] != _uid():
        conn.close()
        raise Unusable(f"the process behind {path} runs as uid {creds[1]}, not as this user")
    return conn


def peer_credentials(conn: socket.socket) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the other end, where the system tells (Linux)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    return struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))


def peer_pid(conn: socket.socket) -> int | None:
    creds = peer_credentials(conn)
    return creds[0] if creds else None


def start_worker(directory: Path, key: str, version: str, values: dict[str, Any]) -> socket.socket:
    """Start the worker for this key (detached: its own session, it outlives this run) and connect to it. A lock
    file keeps two runs from starting two workers; the second one connects to the first's."""
    import fcntl

    path = directory / f"warm-{key}.sock"
    fd = os.open(directory / f"warm-{key}.start", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        conn = connect(path)
        if conn is not None:
            return conn
        log_path = directory / f"warm-{key}.log"
        log.info("starting a warm worker for these settings (its log: %s)", log_path)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        with open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "app.warm_worker", "--socket", str(path), "--key", key, "--version", version,
                 "--entry", ENTRY, "--idle", str(60.0 * values["warm_idle"])],
                cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                start_new_session=True, close_fds=True)
        _started.append(proc)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise Unusable(f"the new worker exited at start with code {proc.returncode} (see {log_path})")
            conn = connect(path)
            if conn is not None:
                return conn
            time.sleep(0.02)
        raise Unusable(f"the new worker did not listen within {START_TIMEOUT_S:g} s (see {log_path})")
    finally:
        os.close(fd)  # also drops the lock


# ------------------------------------------------------------------------------------------------ messages

def send(conn: socket.socket, message: dict[str, Any]) -> None:
    """One JSON message per line (JSON only: nothing from a socket is ever unpickled)."""
    conn.sendall(json.dumps(message).encode() + b"\n")


def receive(reader: Any) -> dict[str, Any]:
    line = reader.readline(MAX_MESSAGE + 1)
    if not line:
        raise EOFError("the other end hung up")
    if not line.endswith(b"\n"):
        raise ValueError("message too long or cut off")
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("not a message")
    return message
