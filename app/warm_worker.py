"""--warm, the worker side: a process that runs the forecast script's own main() for each job a client hands it,
with a Resident (forecast/resident.py) that keeps the engine and the recent bars between runs.

    python -m app.warm_worker --socket PATH --key KEY --version V --entry cli_kronos_prob_qqq:main --idle SECONDS

app/warm.py starts it (detached) and talks to it; nobody else needs to. Jobs run one at a time in the main thread,
exactly as an in-process run (the lock, the time budget on SIGALRM, all-or-nothing writing, the same lines): the
job's stdout and log records go back to the client, which prints them. A thread per connection takes jobs; a
second job for the lock of a queued or running one is answered at once with the in-process run's "lock held" line
and code 6. A client that hangs up stops its job as Ctrl-C stops an in-process run. The worker exits when no job
has written a forecast for --idle seconds (a skipped run does not keep it alive), when a client of another
version asks it to, or on SIGTERM; it removes its socket then.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from app.warm import JOB_ENV, peer_credentials, receive, send

log = logging.getLogger("kronos_warm_worker")  # its own lines go to its log file, never to a client
HELLO_TIMEOUT_S = 10.0  # a client must send its job this fast after connecting


@dataclass
class Job:
    message: dict[str, Any]
    conn: socket.socket
    cancelled: bool = False
    running: bool = False
    done: bool = False
    records: list[dict[str, Any]] = field(default_factory=list)


class Capture(logging.Handler):
    """Keeps a job's log records as plain data for the client (message and traceback as text)."""

    def __init__(self, sink: list[dict[str, Any]]) -> None:
        super().__init__()
        self.sink = sink
        self.set_name("kronos_prob")  # setup_logging replaces its own handler by this name

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.sink.append({"name": record.name, "levelno": record.levelno, "levelname": record.levelname,
                          "msg": text, "created": record.created, "msecs": record.msecs})


class Worker:
    def __init__(self, path: Path, key: str, version: str, idle_s: float) -> None:
        self.path, self.key, self.version, self.idle_s = path, key, version, idle_s
        self.jobs: queue.Queue[Job] = queue.Queue()
        self.state = threading.Lock()
        self.locks: set[str] = set()          # lock files of queued and running jobs
        self.current: Job | None = None
        self.in_entry = False
        self.stopping = threading.Event()
        self.last_forecast = time.monotonic()
        self.server = self._bind()
        self.resident: Any = None  # made by the first job (it imports pandas): clients get their ack at once

    # --------------------------------------------------------------------------------------------- the socket

    def _bind(self) -> socket.socket:
        # bound under a temporary name with mode 0600, listening, then renamed into place: a client never sees a
        # socket that is not ready or not private (a dead worker's socket, ours too, is replaced)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            server.bind(str(tmp))
        finally:
            os.umask(old)
        os.chmod(tmp, 0o600)
        server.listen(64)
        os.rename(tmp, self.path)
        self.inode = os.stat(self.path).st_ino
        return server

    def _unlink(self) -> None:
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self.inode:  # never a newer worker's socket
                os.unlink(self.path)

    def accept_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return  # closed: the worker is stopping
            threading.Thread(target=self._serve_conn, args=(conn,), daemon=True).start()

    def _serve_conn(self, conn: socket.socket) -> None:
        creds = peer_credentials(conn)
        if creds is not None and creds[1] != os.getuid():
            conn.close()
            return
        try:
            conn.settimeout(HELLO_TIMEOUT_S)
            message = receive(conn.makefile("rb"))
        except (OSError, EOFError, ValueError):
            conn.close()
            return
        job = self._admit(conn, message)
        if job is None:
            conn.close()
            return
        self._watch(job)

    def _admit(self, conn: socket.socket, message: dict[str, Any]) -> Job | None:
        """Ack and queue a job, or answer it at once; the Job to watch, else None."""
        try:
            if message.get("version") != self.version:
                send(conn, {"ack": False, "reason": "it runs another version of the code (it exits now; the "
                            "next run starts a new one)"})
                self.stop("a client of another version came")
                return None
            if message.get("key") != self.key or self.stopping.is_set():
                send(conn, {"ack": False, "reason": "it serves other settings" if message.get("key") != self.key
                            else "it is exiting"})
                return None
            job = Job(message, conn)
            lock = os.path.join(message["cwd"], message["lock"])
            with self.state:
                held = lock in self.locks
                self.locks.add(lock)
        except (OSError, KeyError, TypeError):
            return None
        try:
            send(conn, {"ack": True, "pid": os.getpid()})  # before the job is queued: the ack comes first
            if held:
                send(conn, lock_held_result(message["lock"]))
                return None
        except OSError:
            if not held:
                with self.state:
                    self.locks.discard(lock)
            return None
        self.jobs.put(job)
        return job

    def _watch(self, job: Job) -> None:
        """Wait for the client to hang up: before the job ends that cancels it (Ctrl-C or SIGTERM on the client)."""
        conn = job.conn
        conn.settimeout(None)
        with contextlib.suppress(OSError):
            while conn.recv(4096):
                pass
        with self.state:
            if not job.done:
                job.cancelled = True
                if job.running and self.in_entry:
                    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    # --------------------------------------------------------------------------------------------- the jobs

    def serve(self, entry_spec: str) -> None:
        signal.signal(signal.SIGINT, self._on_interrupt)
        signal.signal(signal.SIGTERM, self._on_term)
        threading.Thread(target=self.accept_loop, name="accept", daemon=True).start()
        log.info("worker %d listening on %s", os.getpid(), self.path)
        module, _, name = entry_spec.partition(":")
        entry = getattr(importlib.import_module(module), name)
        while True:
            if not self.stopping.is_set() and time.monotonic() - self.last_forecast > self.idle_s:
                self.stop(f"no forecast for {self.idle_s:g} s")
            try:
                job = self.jobs.get(timeout=0.2 if self.stopping.is_set() else 1.0)
            except queue.Empty:
                if self.stopping.is_set():
                    return  # nothing queued after the socket went: every job taken has been answered
                continue
            self._run(job, entry)

    def _run(self, job: Job, entry: Callable[..., int]) -> None:
        message = job.message
        with self.state:
            job.running = not job.cancelled
        try:
            if job.running:
                if self.resident is None:
                    from forecast.resident import Resident

                    self.resident = Resident()
                self.idle_s = float(message.get("idle_s", self.idle_s))
                code, stdout = self._call(entry, message, job.records)
                if code == 0:
                    self.last_forecast = time.monotonic()
                with contextlib.suppress(OSError):
                    send(job.conn, {"exit": code, "stdout": stdout, "records": job.records})
        finally:
            with self.state:
                job.running, job.done = False, True
                self.locks.discard(os.path.join(message["cwd"], message["lock"]))
            with contextlib.suppress(OSError):
                job.conn.shutdown(socket.SHUT_RDWR)
            job.conn.close()

    def _call(self, entry: Callable[..., int], message: dict[str, Any], records: list) -> tuple[int, str]:
        from app.operation import setup_logging

        saved = {k: os.environ.get(k) for k in JOB_ENV}
        for k in JOB_ENV:  # the client's own keys and endpoint, for this job only
            if k in message["env"]:
                os.environ[k] = message["env"][k]
            else:
                os.environ.pop(k, None)
        setup_logging(verbose=bool(message.get("verbose")), quiet=bool(message.get("quiet")))
        root = logging.getLogger()
        root.handlers[:] = [h for h in root.handlers if h.get_name() != "kronos_prob"] + [Capture(records)]
        out = io.StringIO()
        try:
            os.chdir(message["cwd"])
            with contextlib.redirect_stdout(out):
                self.in_entry = True
                try:
                    code = int(entry(list(message["argv"]), resident=self.resident))
                finally:
                    self.in_entry = False
        except KeyboardInterrupt as exc:  # arrived just after the run ended
            from app.operation import report_failure

            code = report_failure(exc, logging.getLogger("kronos_prob"))
        except Exception as exc:  # noqa: BLE001 - a job's failure never ends the worker
            records.append({"name": "kronos_prob", "levelno": logging.ERROR, "levelname": "ERROR",
                            "msg": f"warm worker: the run failed outside the script ({type(exc).__name__}: {exc})",
                            "created": time.time(), "msecs": 0.0})
            code = 1
        finally:
            root.handlers[:] = [h for h in root.handlers if not isinstance(h, Capture)]
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            with contextlib.suppress(OSError):
                os.chdir("/")
        return code, out.getvalue()

    def _on_interrupt(self, signum: int, frame: Any) -> None:
        if self.in_entry:  # the client of the running job hung up: stop it as Ctrl-C stops a run
            raise KeyboardInterrupt

    def _on_term(self, signum: int, frame: Any) -> None:
        self.stop("SIGTERM")
        if self.in_entry:
            raise KeyboardInterrupt

    def stop(self, why: str) -> None:
        """No new jobs: the socket goes (a new run starts a new worker); queued jobs still run."""
        if self.stopping.is_set():
            return
        log.info("worker %d exiting: %s", os.getpid(), why)
        self.stopping.set()
        self._unlink()
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()


def lock_held_result(lock: str) -> dict[str, Any]:
    """What an in-process run says when it finds the lock taken: its line and exit code 6."""
    from app.operation import lock_held, report_failure

    records: list[dict[str, Any]] = []
    logger = logging.Logger("kronos_prob")  # not registered: the line goes to this result only
    logger.addHandler(Capture(records))
    code = report_failure(lock_held(Path(lock)), logger, written=False)
    return {"exit": code, "stdout": "", "records": records}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the resident worker behind --warm (started by app/warm.py)")
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--entry", required=True, help="module:function run for each job")
    parser.add_argument("--idle", type=float, required=True, help="seconds without a forecast before exiting")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    from live.memory import bound_kernel_caches, fix_mmap_threshold

    bound_kernel_caches()  # before torch loads: a process that forecasts all day (as the live service)
    fix_mmap_threshold()
    worker = Worker(args.socket, args.key, args.version, args.idle)
    try:
        worker.serve(args.entry)
    finally:
        worker.stop("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
