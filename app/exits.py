"""The documented exit codes of every script, and the one mapping from a failure to its code."""
from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """The README's exit-code table."""
    OK = 0
    INTERNAL = 1        # a bug: the traceback is logged
    BAD_INPUT = 2       # configuration, arguments or input data unusable
    SKIPPED = 3         # nothing to forecast now: market closed under --cron, too many gaps, quiet window, no data
    DATA_SOURCE = 4     # the data source failed: Alpaca refused or errored, network down, malformed body
    MODEL = 5           # weights missing, not cached offline, not fitting the network, or impossible output
    LOCKED = 6          # another run holds the lock
    TIME_BUDGET = 7     # the run took longer than time_budget seconds
    DIVERGED = 8        # fine-tuning stopped: its loss became NaN or infinite
    INTERRUPTED = 130   # Ctrl-C or SIGTERM


class RunError(Exception):
    """An expected way for a run to end early; the message is the one line the user sees."""
    exit_code = ExitCode.INTERNAL


def exit_code_for(exc: BaseException) -> ExitCode:
    """Every expected failure's documented code; anything else (our own bug, a stray ValueError) is 1."""
    from forecast.errors import Diverged, ModelError, SettingsError, Skipped
    from forecast.runlog import RunLogSchemaError
    from kronos import CheckpointError
    from marketdata.frame import DataError, DataSourceError, NoDataError

    if isinstance(exc, RunError):
        return exc.exit_code
    if isinstance(exc, (SettingsError, DataError, RunLogSchemaError)):
        return ExitCode.BAD_INPUT
    if isinstance(exc, (Skipped, NoDataError)):
        return ExitCode.SKIPPED
    if isinstance(exc, (DataSourceError, ConnectionError, TimeoutError)):
        return ExitCode.DATA_SOURCE
    if isinstance(exc, (ModelError, CheckpointError)):
        return ExitCode.MODEL
    if isinstance(exc, Diverged):
        return ExitCode.DIVERGED
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    return ExitCode.INTERNAL
