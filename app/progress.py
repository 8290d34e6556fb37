"""Stage lines for a person at a terminal, and an account of the stages for the time budget.

A hand run prints what it is doing on stderr (reading bars, preparing, loading the model, sampling with a bar,
writing); under cron (stderr is not a terminal) and with -q it prints nothing. Either way the stages are timed,
so that a run stopped by its time budget can say which stage was slow and what to lower.
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator, TextIO

# What each stage is called on the terminal, and what lowers its time (for the time budget's message).
STAGES: dict[str, tuple[str, str]] = {
    "data": ("reading bars", "lower --days, or check the data source's speed"),
    "prepare": ("preparing the context", "lower --days"),
    "loading": ("loading the model", "a first load reads the weights from disk; serve.py keeps the model warm"),
    "sampling": ("sampling paths", "lower --n-samples or --lookback, or run on a GPU (--device cuda)"),
    "writing": ("writing files", "drop --plot, or write to a faster disk"),
}


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or stand-in stream
        return False


class Stages:
    """Times the run's stages; shows them on ``stream`` when ``show``."""

    def __init__(self, show: bool, stream: TextIO | None = None) -> None:
        self.show = show
        self.stream = stream if stream is not None else sys.stderr
        self.done: dict[str, float] = {}
        self.current: str | None = None
        self.started = 0.0
        self._bar: Any = None

    @classmethod
    def for_terminal(cls, quiet: bool, stream: TextIO | None = None) -> "Stages":
        """Shown when the stream (stderr by default) is a terminal and -q was not given."""
        stream = stream if stream is not None else sys.stderr
        return cls(show=not quiet and is_terminal(stream), stream=stream)

    @contextmanager
    def stage(self, name: str) -> Iterator["Stages"]:
        label = STAGES.get(name, (name, ""))[0]
        self.current, self.started = name, time.perf_counter()
        if self.show:
            print(f"{label} ...", file=self.stream, flush=True)
        try:
            yield self
        finally:
            self._close_bar()
            seconds = time.perf_counter() - self.started
            self.done[name] = self.done.get(name, 0.0) + seconds
            self.current = None
            if self.show:
                print(f"{label}: {seconds:.1f} s", file=self.stream, flush=True)

    def progress(self, done: int, total: int) -> None:
        """The sampling bar: the engine's decode steps done of total (kronos sampler's progress hook)."""
        if not self.show:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="sampling", unit="step", file=self.stream, leave=False)
        self._bar.update(done - self._bar.n)
        if done >= total:
            self._bar.refresh()  # the last step always shows, however fast it came

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def account(self) -> str:
        """Where the time went, for a run stopped by its budget: the stage that was running, its time so far and
        the finished ones, and what lowers the slowest."""
        spent = dict(self.done)
        if self.current is not None:
            spent[self.current] = spent.get(self.current, 0.0) + time.perf_counter() - self.started
        if not spent:
            return "during start-up (loading libraries, before the first stage)"
        slowest = max(spent, key=spent.__getitem__)
        parts = ", ".join(f"{STAGES.get(n, (n, ''))[0]} {s:.1f} s" for n, s in spent.items())
        during = f"during {STAGES.get(self.current, (self.current, ''))[0]}; " if self.current else ""
        hint = STAGES.get(slowest, ("", ""))[1]
        return f"{during}time spent: {parts}; slowest: {STAGES.get(slowest, (slowest, ''))[0]}" + \
            (f" ({hint}, or raise --time-budget)" if hint else " (raise --time-budget)")
