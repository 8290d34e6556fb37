"""Run artifacts: atomic file writes and the per-run summary/paths files.

Every file a consumer may read is written atomically (temp file in the same
directory, fsync, os.replace), so a reader sees either the old or the new
complete file, never a partial one.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
import math
import os
import re
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
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


def bands_name(symbol: str, stamp: str) -> str:
    return f"bands_{symbol}_{stamp}.csv"


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
    files = run_files(symbol, stamp, summary, arr, header, extra)
    return commit_files(out_dir, files)


def run_files(symbol: str, stamp: str, summary: Mapping[str, Any], arr: np.ndarray, header: list[str],
              extra: Sequence[str], timestamped: bool = True,
              bands: bytes | None = None) -> dict[str, tuple[str, bytes]]:
    """Key -> (file name, content) of one run's files, in the order they must appear on disk. Without
    ``timestamped``: the timestamped summary (small; the run-log row names it, so every row keeps its own
    forecast) and the ``_latest`` copies of the close paths, the bands and the summary (``extra`` unused).
    ``bands``: the per-minute bands CSV (forecast/bands.py), written beside the paths when given."""
    if not timestamped:
        files = {"paths_close_latest": (paths_name(symbol, "latest"),
                                        paths_csv_text(arr[:, :, PATH_FIELDS["close"]], header).encode())}
        if bands is not None:
            files["bands_latest"] = (bands_name(symbol, "latest"), bands)
        block = {"stamp": stamp, "summary": summary_name(symbol, stamp),
                 "summary_latest": summary_name(symbol, "latest"), **{k: name for k, (name, _) in files.items()}}
        body = (json.dumps({**summary, "artifacts": block}, indent=2, allow_nan=False) + "\n").encode()
        return {"summary": (summary_name(symbol, stamp), body), **files,
                "summary_latest": (summary_name(symbol, "latest"), body)}
    files: dict[str, tuple[str, bytes]] = {}
    for field in (*extra, "close"):
        files[f"paths_{field}"] = (paths_name(symbol, stamp, field),
                                   paths_csv_text(arr[:, :, PATH_FIELDS[field]], header).encode())
    if bands is not None:
        files["bands"] = (bands_name(symbol, stamp), bands)
    block = {"stamp": stamp, **{k: name for k, (name, _) in files.items()}}
    body = (json.dumps({**summary, "artifacts": block}, indent=2, allow_nan=False) + "\n").encode()
    files["summary"] = (summary_name(symbol, stamp), body)
    # latest copies last: whatever a latest file names already exists
    files["paths_close_latest"] = (paths_name(symbol, "latest"), files["paths_close"][1])
    if bands is not None:
        files["bands_latest"] = (bands_name(symbol, "latest"), bands)
    files["summary_latest"] = (summary_name(symbol, "latest"), body)
    return files


def check_targets(out_dir: Path, names: Sequence[str]) -> None:
    """Raise OSError naming the first target that a rename could not replace (a folder in its place)."""
    for name in names:
        target = out_dir / name
        if target.exists() and not target.is_file():
            raise IsADirectoryError(f"{target} exists and is not a file; the run's files cannot replace it")


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """Ctrl-C, SIGTERM and the time budget's alarm wait until the block is done (then they take effect), so a set
    of renames is never split.

    Python runs signal handlers in the main thread, whichever thread the kernel hands the signal to (torch's
    worker threads do not block it), so masking the main thread alone would not hold them: the main thread swaps
    in handlers that only record, and replays what arrived once the block is done. In another thread (the live
    service's writer) there is nothing to hold: the handlers run in the main thread, not here."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)
    previous = {signum: signal.getsignal(signum) for signum in held}
    for signum in held:
        signal.signal(signum, lambda signum, frame: arrived.append(signum))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        for signum in dict.fromkeys(arrived):  # each signal once, in the order it came
            handler = previous[signum]
            if callable(handler):
                handler(signum, None)
            elif handler in (signal.SIG_DFL, None):
                signal.raise_signal(signum)


def stage_files(out_dir: Path, files: Mapping[str, tuple[str, bytes]]) -> list[tuple[str, str, Path]]:
    """Write every file to a fsync'd temporary in ``out_dir``: (key, temporary, target) in the mapping's order.
    On any failure the temporaries are removed and the folder is as it was."""
    check_targets(out_dir, [name for name, _ in files.values()])
    staged: list[tuple[str, str, Path]] = []
    try:
        for key, (name, data) in files.items():
            fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
            staged.append((key, tmp, out_dir / name))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, FILE_MODE)
    except BaseException:
        for _, tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    return staged


def rename_staged(staged: Sequence[tuple[str, str, Path]]) -> dict[str, Path]:
    """Rename the staged temporaries into place in order; if one rename fails the rest are removed."""
    written = {}
    try:
        for key, tmp, target in staged:
            os.replace(tmp, target)
            written[key] = target
    except BaseException as exc:
        for key, tmp, _ in staged:
            if key not in written:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        exc.renamed = list(written.values())  # type: ignore[attr-defined]  # what a caller must report as left
        raise
    if staged:
        _fsync_dir(staged[0][2].parent)
    return written


def commit_files(out_dir: str | os.PathLike[str], files: Mapping[str, tuple[str, bytes]]) -> dict[str, Path]:
    """All or nothing: every file is first staged as a temporary; only when all of them exist are they renamed
    into place, in the mapping's order, with signals held."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staged = stage_files(out, files)
    with held_signals():
        return rename_staged(staged)
