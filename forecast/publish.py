"""Publishing a forecast: its files appear together or not at all, the run log last.

Every check that can fail (the output folder, the names the files take, the run log's header) runs in
``preflight`` before the forecast, so a run that fails writes nothing; ``publish`` then stages every file (the
chart included) as a temporary and renames them in a fixed order, timestamped files first, the ``_latest``
copies next, and appends the run-log row last. A consumer never pairs a new summary with old paths.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pandas as pd

from forecast.artifacts import (artifact_stamp, bands_name, check_targets, held_signals, iso_utc, paths_name, rename_staged,
                                run_files, stage_files, summary_name)
from forecast.bands import bands_csv_text
from forecast.errors import SettingsError
from forecast.runlog import RunLogSchemaError, append_run_log, check_run_log, log_row, run_log_path

if TYPE_CHECKING:
    from forecast.pipeline import Forecast

log = logging.getLogger(__name__)
EXTRA_FIELDS = ("high", "low", "volume")


def preflight(out_dir: str | os.PathLike[str], symbol: str) -> Path:
    """The output folder exists (created if need be) and takes new files, the latest names are free for files,
    and the run log accepts rows; a SettingsError names the problem otherwise."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
        check_targets(out, [paths_name(symbol, "latest"), bands_name(symbol, "latest"), summary_name(symbol, "latest"),
                            f"runs_{symbol}.csv"])
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise SettingsError(f"config key 'out': {out} cannot take the run's files ({reason})") from None
    check_run_log(run_log_path(out, symbol))
    return out


class Published(NamedTuple):
    files: dict[str, Path]  # by key, as run_files names them
    summary: bytes          # the summary JSON as written (the _latest copy's bytes)


def publish(out_dir: str | os.PathLike[str], symbol: str, fc: Forecast, plot: bool = False,
            done: list | None = None, timestamped: bool = True) -> Published:
    """Write the forecast's files all or nothing; return them by key with the summary JSON's bytes. ``done``
    gets them appended the moment they are all in place, before held signals are delivered: a Ctrl-C, SIGTERM
    or time budget that arrived during the renames then ends the run with a true "all written". Without
    ``timestamped`` the paths CSVs are written as ``_latest`` copies only (the live service's default); the
    timestamped summary JSON is always written, as the run-log row names it."""
    out = Path(out_dir)
    stamp = artifact_stamp(pd.Timestamp(fc.summary["asof"]).to_pydatetime())
    files = run_files(symbol, stamp, fc.summary, fc.paths, iso_utc(fc.context.times), EXTRA_FIELDS, timestamped,
                      bands=bands_csv_text(fc.summary).encode())
    if plot:
        from forecast.plotting import fan_chart_png

        png = fan_chart_png(fc.context.bars, fc.context.times, fc.paths[:, :, 3], fc.summary)
        files["chart"] = (f"fan_{symbol}_{stamp}.png", png)
    try:
        staged = stage_files(out, _ordered(files))
        with held_signals():  # the renames and the run-log row happen together
            written = rename_staged(staged)
            try:
                summary = written["summary"]  # its own forecast's file, never the overwritten _latest copy
                append_run_log(run_log_path(out, symbol), log_row(fc.summary, summary.name))
            except (OSError, RunLogSchemaError) as exc:  # the header may have changed since preflight
                exc.renamed = list(written.values())  # type: ignore[attr-defined]
                raise
            if done is not None:
                done.append(written)
    except (OSError, RunLogSchemaError) as exc:
        raise PublishError(out, exc) from None
    return Published(written, files["summary_latest"][1])


class PublishError(SettingsError):
    """The output folder refused the run's files while they were written, or the run log refused the row (its
    header changed after preflight); exit 2. ``left`` names what the run did leave (the renames are in a fixed
    order, so a failure part-way leaves a prefix of them); empty when nothing was."""

    def __init__(self, out: Path, exc: OSError | RunLogSchemaError) -> None:
        self.left: list[str] = [p.name for p in getattr(exc, "renamed", [])]
        left = f"; it had already written {', '.join(self.left)}" if self.left else ""
        if isinstance(exc, RunLogSchemaError):  # its message names the log and what to do
            super().__init__(f"{exc}{left}")
            return
        reason = exc.strerror or str(exc)
        where = f"{exc.filename}: " if exc.filename else ""
        super().__init__(f"config key 'out': {out} cannot take the run's files ({where}{reason}){left}")


def _ordered(files: dict) -> dict:
    # the chart is renamed with the timestamped files, before the latest copies
    order = [k for k in files if not k.endswith("_latest")] + [k for k in files if k.endswith("_latest")]
    return {k: files[k] for k in order}
