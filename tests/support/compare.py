"""Comparing outputs with pinned ones: strings, integers and booleans exactly, floats to a tolerance that suits
floats. A library upgrade (numpy, pandas, scikit-learn) may move a sum's last bits; it must not move a result."""
from __future__ import annotations

import csv
import io
import math
from decimal import Decimal, InvalidOperation
from typing import Any

REL = 1e-9


def close(a: float, b: float, rel: float = REL, abs_: float = 0.0) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


def differences(got: Any, want: Any, path: str = "$", rel: float = REL) -> list[str]:
    """Where two JSON-like values differ: floats by relative tolerance, everything else exactly."""
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        return [] if close(float(got), want, rel) else [f"{path}: {got!r} != {want!r}"]
    if type(got) is not type(want):
        return [f"{path}: {type(got).__name__} {got!r} != {type(want).__name__} {want!r}"]
    if isinstance(want, dict):
        out = [f"{path}: keys differ: {sorted(set(got) ^ set(want))}"] if set(got) != set(want) else []
        for k in want.keys() & got.keys():
            out += differences(got[k], want[k], f"{path}.{k}", rel)
        return out
    if isinstance(want, list):
        if len(got) != len(want):
            return [f"{path}: length {len(got)} != {len(want)}"]
        return [d for i, (g, w) in enumerate(zip(got, want)) for d in differences(g, w, f"{path}[{i}]", rel)]
    return [] if got == want else [f"{path}: {got!r} != {want!r}"]


def _number(text: str) -> Decimal | None:
    if not any(c in text for c in ".eE") or text.lower() in ("nan", "inf", "-inf"):
        return None  # integers, dates, labels and empty cells compare as text
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def csv_differences(got: str, want: str, rel: float = REL) -> list[str]:
    """Cells of two CSV texts that differ. A decimal cell may differ by the tolerance or by one unit in the last
    place the pinned file printed (a value that moved in its 16th digit can round the other way at the 8th)."""
    g_rows, w_rows = list(csv.reader(io.StringIO(got))), list(csv.reader(io.StringIO(want)))
    if len(g_rows) != len(w_rows):
        return [f"{len(g_rows)} rows != {len(w_rows)}"]
    out = []
    for r, (g_row, w_row) in enumerate(zip(g_rows, w_rows)):
        if len(g_row) != len(w_row):
            out.append(f"row {r}: {len(g_row)} cells != {len(w_row)}")
            continue
        for c, (g, w) in enumerate(zip(g_row, w_row)):
            wd, gd = _number(w), _number(g)
            if wd is None or gd is None:
                ok = g == w
            else:
                last_place = float(Decimal(1).scaleb(wd.as_tuple().exponent))
                ok = close(float(gd), float(wd), rel, abs_=last_place * 1.000001)
            if not ok:
                out.append(f"row {r} column {w_rows[0][c] if w_rows else c}: {g!r} != {w!r}")
    return out
