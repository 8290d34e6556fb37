"""The service's clock: the wall clock live, a scaled and jumpable one for a replay."""
from __future__ import annotations

import threading
import time

import pandas as pd


class WallClock:
    """Now is now; a wait of t market seconds is t wall seconds."""

    speed = 1.0

    def now(self) -> pd.Timestamp:
        return pd.Timestamp.now(tz="UTC")

    def wall_seconds_until(self, t: pd.Timestamp) -> float:
        return max(0.0, (t - self.now()).total_seconds())


class ReplayClock(WallClock):
    """Market time that starts at ``start`` and runs ``speed`` times faster than the wall clock; ``jump``
    moves it forward at once (a replay skips the closed hours instead of waiting through them)."""

    def __init__(self, start: pd.Timestamp, speed: float) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.speed = float(speed)
        self._lock = threading.Lock()
        self._origin = pd.Timestamp(start)
        self._wall0 = time.monotonic()

    def now(self) -> pd.Timestamp:
        with self._lock:
            return self._origin + pd.Timedelta(seconds=(time.monotonic() - self._wall0) * self.speed)

    def wall_seconds_until(self, t: pd.Timestamp) -> float:
        return max(0.0, (t - self.now()).total_seconds() / self.speed)

    def jump(self, t: pd.Timestamp) -> None:
        """Set market time to ``t`` if that is later than now."""
        with self._lock:
            current = self._origin + pd.Timedelta(seconds=(time.monotonic() - self._wall0) * self.speed)
            if t > current:
                self._origin, self._wall0 = pd.Timestamp(t), time.monotonic()
