"""What makes a run safe under cron: exit codes, a lock so runs never overlap, and a time budget."""
from __future__ import annotations

import logging
import signal
import sys
import time
from contextlib import contextmanager
from enum import IntEnum
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout


class ExitCode(IntEnum):
    """The documented exit codes of the scripts (the README's table)."""
    OK = 0
    INTERNAL = 1        # a bug: the traceback is logged
    BAD_INPUT = 2       # configuration, arguments or input data unusable
    SKIPPED = 3         # nothing to forecast now: market closed under --cron, too many gaps, quiet window, no data
    DATA_SOURCE = 4     # the data source failed: Alpaca refused or errored, network down
    MODEL = 5           # weights missing, not cached offline, or not fitting the network
    LOCKED = 6          # another run holds the lock
    TIME_BUDGET = 7     # the run took longer than time_budget seconds
    INTERRUPTED = 130   # Ctrl-C or SIGTERM


class RunError(Exception):
    """An expected way for a run to end early; the message is the one line the user sees."""
    exit_code = ExitCode.INTERNAL


class Skipped(RunError):
    exit_code = ExitCode.SKIPPED


class LockHeld(RunError):
    exit_code = ExitCode.LOCKED


class TimeBudgetExceeded(RunError):
    exit_code = ExitCode.TIME_BUDGET


@contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for the run, or raise LockHeld at once; the OS frees it if the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise LockHeld(f"another run holds the lock {path}; this run exits without doing anything") from None
    try:
        yield
    finally:
        lock.release()


@contextmanager
def time_budget(seconds: float) -> Iterator[None]:
    """Raise TimeBudgetExceeded in the main thread once `seconds` have passed (SIGALRM; POSIX only)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise TimeBudgetExceeded(f"the run exceeded its time budget of {seconds:g} s and stopped; "
                                 "nothing was written for it")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def exit_on_sigterm() -> None:
    """Turn SIGTERM (cron's or systemd's stop) into KeyboardInterrupt so cleanup code runs."""
    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Logs go to stderr with UTC timestamps; stdout stays for the result."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    handler.set_name("kronos_prob")
    root = logging.getLogger()
    # Replace only our own handler, so a second call (or a test harness's handler) is left alone.
    root.handlers[:] = [h for h in root.handlers if h.get_name() != "kronos_prob"] + [handler]
    root.setLevel(level)
    # Third-party chatter stays out of a cron mailbox unless asked for.
    for name in ("urllib3", "filelock", "matplotlib", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
