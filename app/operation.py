"""What makes a run safe under cron: a lock so runs never overlap, a time budget, signals and logging."""
from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from app.exits import ExitCode, RunError


class LockHeld(RunError):
    exit_code = ExitCode.LOCKED


class TimeBudgetExceeded(RunError):
    exit_code = ExitCode.TIME_BUDGET


def lock_held(path: Path) -> LockHeld:
    """The failure of a run that finds the lock taken (the warm worker answers a second run with it too)."""
    return LockHeld(f"another run holds the lock {path}; this run exits without doing anything")


@contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for the run, or raise LockHeld at once; the OS frees it if the process dies."""
    from filelock import FileLock, Timeout  # here: a --warm client never takes the lock itself

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise lock_held(path) from None
    try:
        yield
    finally:
        lock.release()


@contextmanager
def time_budget(seconds: float, account: Callable[[], str] | None = None) -> Iterator[None]:
    """Raise TimeBudgetExceeded in the main thread once `seconds` have passed (SIGALRM; POSIX only). ``account``
    says, when it trips, where the time went (app.progress.Stages.account: the slow stage and what to lower)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    message = f"the run exceeded its time budget of {seconds:g} s and stopped"
    fired: list[bool] = []

    def on_alarm(signum: int, frame: object) -> None:
        nonlocal message
        fired.append(True)
        told = account() if account is not None else ""
        message += f" {told}" if told else ""
        raise TimeBudgetExceeded(message)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except TimeBudgetExceeded:
        raise
    except Exception as exc:
        # a library may wrap our exception in its own (torch's load_state_dict does): it is still the budget
        if fired:
            raise TimeBudgetExceeded(message) from exc
        raise
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def exit_on_sigterm() -> None:
    """Turn SIGTERM (cron's or systemd's stop) into KeyboardInterrupt so cleanup code runs."""
    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)


class StampFormatter(logging.Formatter):
    """Log times as every line's own times read: UTC ISO 8601 with the New York time beside."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        from marketdata.stamps import log_stamp

        return log_stamp(record.created)


def interrupt_once(log: logging.Logger) -> None:
    """SIGINT and SIGTERM stop the program once (KeyboardInterrupt in the main thread); a second one while it
    is already stopping is told once and otherwise ignored, so the shutdown under way finishes writing its files
    and the program still exits with its code instead of a traceback (a service's operator presses Ctrl-C
    twice; systemd may send SIGTERM again)."""
    state = {"stopping": False, "told": False}

    def on_signal(signum: int, frame: object) -> None:
        if not state["stopping"]:
            state["stopping"] = True
            raise KeyboardInterrupt
        if not state["told"]:
            state["told"] = True
            log.warning("already stopping (%s ignored); the shutdown finishes its work first",
                        signal.Signals(signum).name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


class RepeatLimit(logging.Filter):
    """Lets through at most ``burst`` records of one kind (logger, level, the same text) per ``window_s``
    seconds; the first record after a quiet window says how many were held back. A flood (a reconnect loop, an
    accept loop out of descriptors) then costs a few lines a minute, not megabytes."""

    def __init__(self, burst: int = 5, window_s: float = 60.0, kinds: int = 1000) -> None:
        super().__init__()
        self.burst, self.window_s, self.kinds = burst, window_s, kinds
        self._seen: dict[tuple, list] = {}  # kind -> [window start, passed, held back]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()[:200]
        except Exception:  # noqa: BLE001 - a malformed record: logging reports it itself
            return True
        kind = (record.name, record.levelno, text)
        now = time.monotonic()
        with self._lock:
            entry = self._seen.get(kind)
            if entry is None or now - entry[0] >= self.window_s:
                held = entry[2] if entry else 0
                if len(self._seen) >= self.kinds:  # bounded memory: forget the kinds whose window is over
                    self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window_s}
                self._seen[kind] = [now, 1, 0]
                if held:
                    record.msg = f"{record.msg} [{held} more like this in the last {self.window_s:g} s not shown]"
                return True
            if entry[1] < self.burst:
                entry[1] += 1
                return True
            entry[2] += 1
            return False


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Logs go to stderr with UTC timestamps (New York time beside); stdout stays for the result."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    formatter = StampFormatter("%(asctime)s %(levelname)s %(message)s")
    handler.setFormatter(formatter)
    handler.addFilter(RepeatLimit())
    handler.set_name("kronos_prob")
    root = logging.getLogger()
    # Replace only our own handler, so a second call (or a test harness's handler) is left alone.
    root.handlers[:] = [h for h in root.handlers if h.get_name() != "kronos_prob"] + [handler]
    root.setLevel(level)
    # Third-party chatter stays out of a cron mailbox unless asked for.
    for name in ("urllib3", "filelock", "matplotlib", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)


def install_program_handlers(verbose: bool = False, quiet: bool = False) -> None:
    """What a script does when it runs as a program (never when a test imports its main()): logging on
    stderr, SIGTERM as Ctrl-C."""
    setup_logging(verbose=verbose, quiet=quiet)
    exit_on_sigterm()


def report_failure(exc: BaseException, log: logging.Logger, written: bool | None = None,
                   interrupted: str = "") -> int:
    """One line for an expected failure, the traceback for our own bug; returns the exit code. ``written`` says
    whether the run's files were all written (None: the script has no such set of files); ``interrupted`` is
    what to tell after Ctrl-C or SIGTERM."""
    from app.exits import exit_code_for

    code = exit_code_for(exc)
    left = "" if written is None else ("; the run's files had all been written when it stopped" if written
                                       else "; nothing was written for this run")
    if code == ExitCode.INTERNAL:
        log.error("unexpected error (a bug; please report it with this traceback)%s", left, exc_info=exc)
    elif code == ExitCode.SKIPPED:
        log.warning("skipped: %s", exc)
    elif code == ExitCode.INTERRUPTED:
        log.error("interrupted%s%s", left, f"; {interrupted}" if interrupted else "")
    else:
        log.error("%s%s", exc, left)
    return int(code)
