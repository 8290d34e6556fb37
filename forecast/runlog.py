"""The run log: one CSV row per forecast, the input of run-log calibration. Its schema lives here only.

The file is append-only. Each row goes out in one os.write on an O_APPEND descriptor under an exclusive flock, so
concurrent appenders neither interleave nor both write a header, and a crash cannot leave half a row. A log that a
spreadsheet saved again (a UTF-8 BOM, CRLF line ends, quoted fields, columns moved, no final newline) is read
the same way by cron runs and by calibration (``read_header``), and appended to in its own column order.
"""
from __future__ import annotations

import codecs
import csv
import datetime as dt
import fcntl
import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from forecast.artifacts import FILE_MODE, format_number

log = logging.getLogger(__name__)

# Run log columns, in file order. New columns go at the end only: a log started under an older version (its
# header the first columns of this list, at least through summary_file, in any order) keeps its own columns and
# still takes rows; any other header is refused (RunLogSchemaError) before the run writes anything: move it aside.
RUN_LOG_COLUMNS: tuple[str, ...] = (
    "asof", "last_bar", "symbol", "now_close", "horizon_min", "n_samples",
    "p_up", "p_up_cal", "exp_ret", "p10_end", "p50_end", "p90_end",
    "p_hit_vwap", "vwap", "vwap_mode", "p_hit_mid", "mid_band", "zscore_mid",
    "drawdown_p90", "runup_p90", "p_vol_exceeds_recent",
    "model", "device", "seed", "runtime_s", "summary_file",
    "market_open", "feed", "delayed", "filled_bars",
    "bad_bars", "filled_max_window",
    "p_up_online", "p10_end_online", "p50_end_online", "p90_end_online", "p_hit_vwap_online",
    "trust_status", "trust_edge",
    # the 95 % Monte Carlo intervals of the estimates above, and why sampling stopped (n_samples: auto)
    "p_up_lo", "p_up_hi", "p_up_cal_lo", "p_up_cal_hi", "exp_ret_se",
    "p10_end_lo", "p10_end_hi", "p50_end_lo", "p50_end_hi", "p90_end_lo", "p90_end_hi",
    "p_hit_vwap_lo", "p_hit_vwap_hi", "p_hit_mid_lo", "p_hit_mid_hi",
    "p_vol_exceeds_recent_lo", "p_vol_exceeds_recent_hi", "sampling_stop",
    "asof_new_york", "last_bar_new_york",
)
OLDEST_HEADER = RUN_LOG_COLUMNS.index("summary_file") + 1  # the first version's columns


class RunLogSchemaError(ValueError):
    """The run log on disk cannot be appended to (another header, unreadable)."""


def run_log_path(out_dir: str | os.PathLike[str], symbol: str) -> Path:
    return Path(out_dir) / f"runs_{symbol}.csv"


def log_row(summary: dict[str, Any], summary_file: str) -> dict[str, Any]:
    """One run-log row from the summary JSON: what a calibration step joins with the realised outcome later."""
    h = summary["horizon_min"]
    m = summary["summary"]
    data = summary.get("data") or {}
    ends = {f"{k}_end": v[-1] for k, v in m["percentiles"].items() if k in ("p10", "p50", "p90")}
    return {
        "asof": summary["asof"], "last_bar": summary["last_bar"], "symbol": summary["symbol"],
        "now_close": summary["now_close"], "horizon_min": h, "n_samples": summary["n_samples"],
        "p_up": m[f"p_up_{h}m"], "p_up_cal": (summary["calibrated"] or {}).get(f"p_up_{h}m"),
        "exp_ret": m[f"exp_ret_{h}m"], **ends,
        "p_hit_vwap": m.get(f"p_hit_vwap_{h}m"), "vwap": m.get("vwap"), "vwap_mode": m.get("vwap_mode"),
        "p_hit_mid": m.get(f"p_hit_mid_{h}m"), "mid_band": m.get("mid_band"), "zscore_mid": m.get("zscore_mid"),
        "drawdown_p90": m.get(f"drawdown_p90_{h}m"), "runup_p90": m.get(f"runup_p90_{h}m"),
        "p_vol_exceeds_recent": m.get(f"p_vol_exceeds_recent_{h}m"),
        "model": summary["model"]["model"], "device": summary["model"]["device"], "seed": summary["seed"],
        "runtime_s": summary["timings_s"].get("total"), "summary_file": summary_file,
        "market_open": summary.get("market_open"), "feed": data.get("feed"), "delayed": data.get("delayed"),
        "filled_bars": data.get("filled_count"), "bad_bars": data.get("bad_bars"),
        "filled_max_window": data.get("filled_max_window"),
        "asof_new_york": new_york_cell(summary["asof"]), "last_bar_new_york": new_york_cell(summary["last_bar"]),
        **online_columns(summary),
        **_interval_cells(summary),
    }


def new_york_cell(utc_iso: str) -> str:
    """A UTC time as New York wall time, "2025-06-02 11:00:00": the form spreadsheets read as a date-time (the
    column's name says the zone; the UTC column beside it is the unambiguous one)."""
    return pd.Timestamp(utc_iso).tz_convert("America/New_York").strftime("%Y-%m-%d %H:%M:%S")


def online_columns(summary: dict[str, Any]) -> dict[str, Any]:
    """The online values (forecast.online) and the trust verdict of a run: what the next run's online update and
    trust status read back."""
    h = summary["horizon_min"]
    on = summary.get("online") or {}
    pct = on.get("percentiles") or {}
    trust = summary.get("trust") or {}
    return {"p_up_online": on.get(f"p_up_{h}m"),
            **{f"{k}_end_online": (pct[k][-1] if k in pct else None) for k in ("p10", "p50", "p90")},
            "p_hit_vwap_online": on.get(f"p_hit_vwap_{h}m"), "trust_status": trust.get("status"),
            "trust_edge": trust.get("edge")}


def _interval_cells(summary: dict[str, Any]) -> dict[str, Any]:
    """The Monte Carlo intervals of the logged estimates (95 %: lo and hi columns; the mean's standard error)."""
    h = summary["horizon_min"]
    m, cal = summary["summary"], summary["calibrated"] or {}
    bands = m.get("percentiles_ci") or {}
    pairs = {"p_up": m.get(f"p_up_{h}m_ci"), "p_up_cal": cal.get(f"p_up_{h}m_ci"),
             **{f"{k}_end": (bands.get(k) or [None])[-1] for k in ("p10", "p50", "p90")},
             "p_hit_vwap": m.get(f"p_hit_vwap_{h}m_ci"), "p_hit_mid": m.get(f"p_hit_mid_{h}m_ci"),
             "p_vol_exceeds_recent": m.get(f"p_vol_exceeds_recent_{h}m_ci")}
    out: dict[str, Any] = {}
    for name, ci in pairs.items():
        out[f"{name}_lo"], out[f"{name}_hi"] = ci if ci else (None, None)
    return {**out, "exp_ret_se": m.get(f"exp_ret_{h}m_se"),
            "sampling_stop": (summary.get("sampling") or {}).get("stopped")}


def _csv_line(values: Sequence[str], newline: str = "\n") -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator=newline).writerow(values)
    return buf.getvalue()


def _cell(v: Any) -> str:
    if isinstance(v, (dt.datetime, pd.Timestamp)):
        return pd.Timestamp(v).isoformat()
    if v is None or isinstance(v, (int, float, np.integer, np.floating, np.bool_, bool)):
        return format_number(v)
    return str(v)


class Header(NamedTuple):
    columns: tuple[str, ...]  # as the file names them, in its order
    newline: str              # the file's line end: a spreadsheet saves "\r\n"


def read_header(path: Path) -> Header | None:
    """The log's header as a spreadsheet may have saved it (a UTF-8 BOM, CRLF, quoted names, spaces around
    them); None for a missing or empty file (or one holding only a BOM). The one reading of the header, for
    appending and calibrating."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RunLogSchemaError(f"run log {path} cannot be read: {exc.strerror}") from None
    if first.startswith(codecs.BOM_UTF8):
        first = first[len(codecs.BOM_UTF8):]
    if not first:
        return None
    text = first.decode("utf-8", errors="replace").rstrip("\r\n")
    columns = tuple(_column_name(f) for f in next(csv.reader([text]), []))
    return Header(columns, "\r\n" if first.endswith(b"\r\n") else "\n")


def _column_name(text: str) -> str:
    return text.strip().lstrip("\ufeff")


def check_run_log(log_path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The columns an existing log takes, in its order (RUN_LOG_COLUMNS, or an older version's first columns,
    in any order); raise RunLogSchemaError when it cannot take our rows. A missing or empty file takes every
    column. Runs before a forecast writes anything, and tells (once per run) the newer columns that an older
    header does not record."""
    fields = _log_columns(Path(log_path))
    missing = [c for c in RUN_LOG_COLUMNS if c not in fields]
    if missing:
        log.info("run log %s has an older header: it does not record %s (move it aside to start a full one)",
                 log_path, ", ".join(missing))
    return fields


def _log_columns(path: Path) -> tuple[str, ...]:
    # check_run_log without the note: append_run_log checks the header again under its lock, silently
    header = read_header(path)
    if header is None:
        return RUN_LOG_COLUMNS
    fields = header.columns
    # Columns are matched by name: a spreadsheet may have moved them. The set must be one version's columns.
    one_version = len(set(fields)) == len(fields) and set(fields) == set(RUN_LOG_COLUMNS[:len(fields)])
    if len(fields) < OLDEST_HEADER or not one_version:
        hint = ""
        if len(fields) == 1 and ";" in fields[0]:
            hint = " (it is semicolon-separated: save it with commas)"
        raise RunLogSchemaError(f"run log {path} has another header{hint} ({len(fields)} columns, expected "
                                f"{len(RUN_LOG_COLUMNS)}: {','.join(RUN_LOG_COLUMNS[:3])},...); move it aside and rerun")
    return fields


def append_run_log(log_path: str | os.PathLike[str], row: Mapping[str, Any]) -> None:
    """Append one run as a CSV row with the RUN_LOG_COLUMNS header (written when the file is new or empty). An
    existing log gets the row in its own header's column order (a spreadsheet may have reordered them; an
    older version's header has fewer) and with its own line end, so the file stays one consistent table.

    Unknown keys raise ValueError (a typo must not silently lose a value); missing keys are written empty."""
    unknown = sorted(set(row) - set(RUN_LOG_COLUMNS))
    if unknown:
        raise ValueError(f"unknown run log keys {unknown}; allowed: {list(RUN_LOG_COLUMNS)}")
    fd = os.open(log_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        header = read_header(Path(log_path)) if size else None
        if header is None:  # new, empty (or only a BOM)
            data = _csv_line(RUN_LOG_COLUMNS) + _csv_line([_cell(row.get(c)) for c in RUN_LOG_COLUMNS])
        else:
            columns = _log_columns(Path(log_path))  # the header may have changed since preflight
            line = _csv_line([_cell(row.get(c)) for c in columns], header.newline)
            last = os.pread(fd, 1, size - 1)
            data = line if last == b"\n" else header.newline + line  # a spreadsheet may drop the final newline
        encoded = data.encode("utf-8")
        if os.write(fd, encoded) != len(encoded):
            raise OSError(f"short write to {log_path}; the last row may be partial")
        os.fsync(fd)
    finally:
        os.close(fd)  # also drops the lock


def read_run_log(log_path: str | os.PathLike[str]) -> pd.DataFrame:
    """The log as a frame (CRLF and quoted fields welcome). Replays of the same instant count once: the last
    row of each (symbol, asof, horizon_min) wins, so replaying an --asof twice never weighs it twice."""
    log = pd.read_csv(log_path, encoding="utf-8-sig")
    log.columns = [_column_name(str(c)) for c in log.columns]  # as read_header names them
    missing = [c for c in ("asof", "symbol", "now_close", "horizon_min", "p_up") if c not in log.columns]
    if missing:
        raise RunLogSchemaError(f"run log {log_path} lacks column(s) {', '.join(missing)}")
    return log.drop_duplicates(subset=["symbol", "asof", "horizon_min"], keep="last").reset_index(drop=True)
