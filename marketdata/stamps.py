"""One time format for log lines: UTC ISO 8601 with the New York wall time beside, so that a minute reads the
same in every line ("2025-06-04T15:00:00Z (11:00:00 ET)"; the New York date is added when it differs)."""
from __future__ import annotations

import datetime as dt
from typing import Union
from zoneinfo import ZoneInfo

NEW_YORK = ZoneInfo("America/New_York")


def log_stamp(t: Union[dt.datetime, float]) -> str:
    """``t``: an aware datetime (a pandas Timestamp is one; naive means UTC) or POSIX seconds."""
    if isinstance(t, (int, float)):
        utc = dt.datetime.fromtimestamp(t, dt.timezone.utc)
    else:
        utc = (t if t.tzinfo is not None else t.replace(tzinfo=dt.timezone.utc)).astimezone(dt.timezone.utc)
    ny = utc.astimezone(NEW_YORK)
    day = "" if ny.date() == utc.date() else f"{ny:%Y-%m-%d} "
    return f"{utc:%Y-%m-%dT%H:%M:%S}Z ({day}{ny:%H:%M:%S} ET)"
