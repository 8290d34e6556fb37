"""The per-minute bands CSV: one row per minute ahead, every percentile of the close with its Monte Carlo interval.

Written for a spreadsheet: ISO 8601 times in UTC and in New York time, plain decimal numbers (no exponent, no
text), an empty cell where N paths cannot bound an interval. Columns, in order:
``minute_ahead, time_utc, time_new_york``, then for each percentile ``p10, p10_lo, p10_hi`` (the 95 %
order-statistic interval of that quantile of the model's paths), then ``p10_cal`` per percentile when a calibrator
was applied.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from typing import Any

import pandas as pd

from forecast.artifacts import format_number

NEW_YORK = "America/New_York"


def bands_csv_text(summary: Mapping[str, Any]) -> str:
    """The bands CSV of one forecast, from its summary JSON (future_times, percentiles, percentiles_ci and the
    calibrated bands when present)."""
    times = pd.DatetimeIndex(pd.to_datetime(summary["future_times"], utc=True))
    block = summary["summary"]
    pct, ci = block["percentiles"], block.get("percentiles_ci") or {}
    cal = (summary.get("calibrated") or {}).get("percentiles") or {}
    keys = list(pct)
    header = ["minute_ahead", "time_utc", "time_new_york"]
    for k in keys:
        header += [k, f"{k}_lo", f"{k}_hi"]
    header += [f"{k}_cal" for k in keys if k in cal]
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(header)
    new_york = times.tz_convert(NEW_YORK)
    for i, (t, t_ny) in enumerate(zip(times, new_york)):
        row: list[Any] = [i + 1, t.strftime("%Y-%m-%dT%H:%M:%SZ"), t_ny.isoformat()]
        for k in keys:
            lo, hi = ci[k][i] if k in ci else (None, None)
            row += [pct[k][i], lo, hi]
        row += [cal[k][i] for k in keys if k in cal]
        out.writerow([c if isinstance(c, str) else format_number(c) for c in row])
    return buf.getvalue()
