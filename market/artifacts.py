"""Run artifacts: atomic file writes, per-run summary/paths files, the run log.

Every file a consumer may read is written atomically (temp file in the same
directory, fsync, os.replace), so a reader sees either the old or the new
complete file, never a partial one.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import fcntl
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FILE_MODE = 0o644  # mkstemp creates 0600; artifacts are meant to be read by others
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_SYMBOL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_STAMP_RE = re.compile(r"^\d{8}T\d{6}Z$")
# Field index of each series in a [N, H, 6] paths array.
PATH_FIELDS = {"open": 0, "high": 1, "low": 2, "close": 3, "volume": 4, "amount": 5}

# Run log columns, in file order. Changing this list changes the header, and an
# existing log with the old header is then refused (RunLogSchemaError): rotate it.
RUN_LOG_COLUMNS: tuple[str, ...] = (
    "asof", "last_bar", "symbol", "now_close", "horizon_min", "n_samples",
    "p_up", "p_up_cal", "exp_ret", "p10_end", "p50_end", "p90_end",
    "p_hit_vwap", "vwap", "vwap_mode", "p_hit_mid", "mid_band", "zscore_mid",
    "drawdown_p90", "runup_p90", "p_vol_exceeds_recent",
    "model", "device", "seed", "runtime_s", "summary_file",
)


class RunLogSchemaError(ValueError):
    """The run log on disk has another header than RUN_LOG_COLUMNS."""


# ---------------------------------------------------------------- atomic writes


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every filesystem allows it.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; on any failure the temp file is
    removed and an existing ``path`` is left as it was."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """UTF-8 text, written atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """JSON with indent 2, keys in insertion order, trailing newline. NaN/inf are
    refused (ValueError): they are not valid JSON; use None."""
    return atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


# ---------------------------------------------------------------- names and formats


def artifact_stamp(asof_utc: dt.datetime) -> str:
    """UTC stamp for file names, e.g. 20250501T140000Z. Naive times are refused
    because their zone is a guess."""
    ts = pd.Timestamp(asof_utc)
    if ts.tzinfo is None:
        raise ValueError("asof_utc must be timezone-aware")
    return ts.tz_convert("UTC").strftime(STAMP_FORMAT)


def _check_name_parts(symbol: str, stamp: str) -> None:
    # Both end up in file names: refuse anything that could leave out_dir.
    if not _SYMBOL_RE.match(symbol):
        raise ValueError(f"bad symbol for a file name: {symbol!r}")
    if not (_STAMP_RE.match(stamp) or stamp == "latest"):
        raise ValueError(f"bad stamp {stamp!r}; expected e.g. 20250501T140000Z")


def summary_name(symbol: str, stamp: str) -> str:
    return f"pred_summary_{symbol}_{stamp}.json"


def paths_name(symbol: str, stamp: str, field: str = "close") -> str:
    middle = "paths" if field == "close" else f"paths_{field}"
    return f"{middle}_{symbol}_{stamp}.csv"


def iso_utc(times: Sequence[Any] | pd.DatetimeIndex) -> list[str]:
    """Tz-aware times -> ['2025-05-01T14:00:00Z', ...]."""
    idx = pd.DatetimeIndex(times)
    if idx.tz is None:
        raise ValueError("future_times must be timezone-aware")
    return [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in idx.tz_convert("UTC")]


SIGNIFICANT_DIGITS = 10  # sub-cent on any price, far below the sampling noise; keeps files readable


def format_number(x: Any) -> str:
    """Plain decimal text a spreadsheet reads: no exponent, at most SIGNIFICANT_DIGITS significant digits,
    '' for None/NaN/inf."""
    if x is None:
        return ""
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    v = float(x)
    if not math.isfinite(v):
        return ""
    return np.format_float_positional(v, precision=SIGNIFICANT_DIGITS, unique=True, fractional=False, trim="-")


def paths_csv_text(values: np.ndarray, header_times: list[str]) -> str:
    """[N, H] values -> CSV text: header 'path,<time1>,...', rows 'i,v1,...'."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", *header_times])
    for i, row in enumerate(values):
        w.writerow([i, *(format_number(v) for v in row)])
    return buf.getvalue()


# ---------------------------------------------------------------- run artifacts


def write_run_artifacts(out_dir: str | os.PathLike[str], symbol: str, stamp: str,
                        summary: Mapping[str, Any], paths: np.ndarray,
                        future_times: Sequence[Any] | pd.DatetimeIndex,
                        extra: Sequence[str] = ("high", "low", "volume")) -> dict[str, Path]:
    """Write one run's files into ``out_dir`` (created if missing) and return them.

    Keys of the result: "paths_<field>" for each extra field, "paths_close",
    "summary", "paths_close_latest", "summary_latest". The JSON gets an
    "artifacts" block (stamp and the timestamped file names) so a reader of the
    _latest summary can open the exact paths files of the same run. Order:
    timestamped files first, the latest paths copy, the latest summary last;
    every file is written atomically. Pass the repaired paths (repair_paths).
    """
    _check_name_parts(symbol, stamp)
    arr = np.asarray(paths, dtype=float)
    if arr.ndim != 3 or arr.shape[2] != 6:
        raise ValueError(f"paths must have shape [N, H, 6], got {arr.shape}")
    header = iso_utc(future_times)
    if len(header) != arr.shape[1]:
        raise ValueError(f"{len(header)} future_times for a horizon of {arr.shape[1]}")
    unknown = [f for f in extra if f not in PATH_FIELDS or f == "close"]
    if unknown:
        raise ValueError(f"unknown extra fields {unknown}; choose from {sorted(PATH_FIELDS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    written: dict[str, Path] = {}
    for field in (*extra, "close"):
        key = f"paths_{field}"
        written[key] = atomic_write_text(out / paths_name(symbol, stamp, field),
                                         paths_csv_text(arr[:, :, PATH_FIELDS[field]], header))
    block = {"stamp": stamp, **{k: p.name for k, p in written.items()}}
    full = {**summary, "artifacts": block}
    written["summary"] = atomic_write_json(out / summary_name(symbol, stamp), full)
    # latest copies last: whatever a latest file names already exists
    written["paths_close_latest"] = atomic_write_bytes(
        out / paths_name(symbol, "latest"), written["paths_close"].read_bytes())
    written["summary_latest"] = atomic_write_bytes(
        out / summary_name(symbol, "latest"), written["summary"].read_bytes())
    return written


# ---------------------------------------------------------------- run log


def _csv_line(values: Sequence[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


def _cell(v: Any) -> str:
    if isinstance(v, (dt.datetime, pd.Timestamp)):
        return pd.Timestamp(v).isoformat()
    if v is None or isinstance(v, (int, float, np.integer, np.floating, np.bool_, bool)):
        return format_number(v)
    return str(v)


def append_run_log(log_path: str | os.PathLike[str], row: Mapping[str, Any]) -> None:
    """Append one run as a CSV row with the RUN_LOG_COLUMNS header.

    Unknown keys raise ValueError (a typo must not silently lose a value);
    missing keys are written empty. The header is written when the file is new
    or empty. An existing file with another header raises RunLogSchemaError
    (rotate it by hand). The row goes out in one os.write on an O_APPEND
    descriptor under an exclusive flock, so concurrent appenders neither
    interleave nor both write a header, and a crash cannot leave half a row.
    """
    unknown = sorted(set(row) - set(RUN_LOG_COLUMNS))
    if unknown:
        raise ValueError(f"unknown run log keys {unknown}; allowed: {list(RUN_LOG_COLUMNS)}")
    header = _csv_line(RUN_LOG_COLUMNS)
    line = _csv_line([_cell(row.get(c)) for c in RUN_LOG_COLUMNS])
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size == 0:
            data = (header + line).encode("utf-8")
        else:
            _check_log_file(log_path, header, size)
            data = line.encode("utf-8")
        if os.write(fd, data) != len(data):
            raise OSError(f"short write to {log_path}; the last row may be partial")
        os.fsync(fd)
    finally:
        os.close(fd)  # also drops the lock


def _check_log_file(log_path: str | os.PathLike[str], header: str, size: int) -> None:
    with open(log_path, "rb") as fh:
        first = fh.readline().decode("utf-8", errors="replace")
        fh.seek(size - 1)
        last = fh.read(1)
    if first != header:
        raise RunLogSchemaError(
            f"{log_path}: header {first.strip()!r} differs from the expected "
            f"{header.strip()!r}; move the old log aside and rerun")
    if last != b"\n":
        raise RunLogSchemaError(f"{log_path}: does not end with a newline; fix it by hand")
