"""Sessions split in time into train / validation / test, and the windows of lookback + horizon bars of each.

A window never spans two sessions unless ``cross_sessions`` is set (then it may span consecutive sessions of the
same split, overnight gap included, as a live context of several days does). Every window is normalised on its
own with the engine's normalisation (kronos.inputs.normalise: float64 mean/std over the window, clip at +-5), as
upstream's fine-tuning normalises each sample.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from forecast.pipeline import engine_inputs
from kronos.inputs import normalise
from marketdata.frame import DataError
from training.data import SessionBars

SPLITS = ("train", "validation", "test")


@dataclass
class Split:
    """The bars of one split's sessions, concatenated, and where its windows start."""
    name: str
    sessions: list[str]
    values: np.ndarray          # [n_bars, 6] float64, raw prices and volumes
    stamps: np.ndarray          # [n_bars, 5] int64 time features
    times: pd.DatetimeIndex     # [n_bars] UTC bar starts
    starts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # window starts (row numbers)

    @property
    def n_windows(self) -> int:
        return len(self.starts)

    def window_times(self, length: int) -> tuple[pd.DatetimeIndex, pd.DatetimeIndex]:
        """First and last bar start of every window."""
        return self.times[self.starts], self.times[self.starts + length - 1]

    def describe(self, length: int) -> dict:
        first, last = self.window_times(length) if self.n_windows else ([], [])
        return {"sessions": self.sessions, "n_sessions": len(self.sessions), "n_bars": int(len(self.times)),
                "n_windows": self.n_windows,
                "first_bar": self.times[0].isoformat() if len(self.times) else None,
                "last_bar": self.times[-1].isoformat() if len(self.times) else None,
                "first_window_start": first[0].isoformat() if len(first) else None,
                "last_window_end": last[-1].isoformat() if len(last) else None}


def split_sessions(sessions: list[SessionBars], n_val: int, n_test: int, min_train: int = 1
                   ) -> dict[str, list[SessionBars]]:
    """Oldest sessions train, the next n_val validate (early stopping), the last n_test are held out for the A/B."""
    need = min_train + n_val + n_test
    if len(sessions) < need:
        raise DataError(f"too few sessions for the splits: {len(sessions)} session(s) with bars, but "
                        f"{min_train} train + {n_val} validation + {n_test} test = {need} are needed; load more "
                        "sessions (--sessions, or a longer bars file) or lower --val-sessions / --test-sessions")
    n_train = len(sessions) - n_val - n_test
    return {"train": sessions[:n_train], "validation": sessions[n_train:n_train + n_val],
            "test": sessions[n_train + n_val:]}


def build_split(name: str, sessions: list[SessionBars], length: int, stride: int, cross_sessions: bool,
                time_label: str) -> Split:
    """All windows of ``length`` bars of these sessions, every ``stride`` bars."""
    values, stamps, times, starts, offset = [], [], [], [], 0
    for s in sessions:
        v, st, _ = engine_inputs(s.bars, s.bars.index[:0], time_label)  # the forecast's columns and stamps
        values.append(v)
        stamps.append(st)
        times.append(s.bars.index)
        if not cross_sessions:
            starts.append(offset + np.arange(0, len(v) - length + 1, stride))
        offset += len(v)
    if cross_sessions:
        starts = [np.arange(0, offset - length + 1, stride)]
    return Split(name, [s.session for s in sessions], np.concatenate(values), np.concatenate(stamps),
                 times[0].append(times[1:]), np.concatenate(starts).astype(np.int64))


def build_splits(sessions: list[SessionBars], n_val: int, n_test: int, length: int, stride: int,
                 cross_sessions: bool, time_label: str) -> dict[str, Split]:
    """The three splits; DataError when a split has no window (the message says what to change)."""
    grouped = split_sessions(sessions, n_val, n_test)
    splits = {name: build_split(name, grouped[name], length, stride, cross_sessions, time_label)
              for name in SPLITS}
    for name in ("train", "validation"):
        if splits[name].n_windows == 0:
            longest = max(len(s.bars) for s in grouped[name])
            hint = ("the windows may not span sessions: lower --lookback, or set cross_sessions: true "
                    "(--cross-sessions)" if not cross_sessions else "load more sessions")
            raise DataError(f"no {name} window of lookback + horizon = {length} bars: the longest {name} session "
                            f"has {longest} bars and {hint}")
    return splits


def make_batch(split: Split, rows: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows ``rows`` of the split -> (normalised values float32 [B, L, 6], stamps int64 [B, L, 5])."""
    idx = split.starts[np.asarray(rows)][:, None] + np.arange(length)
    x, _, _ = normalise(split.values[idx])  # each window by its own statistics, float64 throughout
    return x.astype(np.float32), split.stamps[idx]

