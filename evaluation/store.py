"""The resumable results store of a walk-forward run and the run file that pins its settings.

``results.jsonl``: one JSON object per (forecaster, origin), appended a batch at a time with a single write on an
O_APPEND descriptor and fsync'd. On load, duplicates are dropped (first wins) and a torn final line (a crash
mid-write) is cut off, so an interrupted run resumes where it stopped and never counts a result twice.
``parts/<name>.jsonl``: the records of one shard of a sharded (Ray) run, written whole and atomically by the one
process that collects the shards; ``load`` merges the parts with ``results.jsonl``, so a run may resume in either
mode and a finished shard is never redone.
``run.json`` pins the settings, the data and each forecaster's settings: resuming with others is refused.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from forecast.artifacts import atomic_write_json, atomic_write_text
from forecast.errors import SettingsError

log = logging.getLogger(__name__)
SKIP = "_skipped"  # pseudo-forecaster name of the records that say why an origin was skipped
RESULTS = "results.jsonl"
RUN_FILE = "run.json"
PARTS = "parts"


class RunMismatch(SettingsError):
    """The output folder holds results of a run with other settings, data or forecaster settings."""


def _lines(records: Iterable[dict[str, Any]]) -> str:
    """One compact JSON line per record (NaN refused: a record holds None where a number is unknown)."""
    return "".join(json.dumps(r, allow_nan=False, separators=(",", ":")) + "\n" for r in records)


class DamagedStore(SettingsError):
    """A file of the resume store cannot be read; the message names it and says --fresh."""


def _record(raw: bytes, path: Path, number: int) -> dict[str, Any]:
    try:
        rec = json.loads(raw)
    except ValueError:
        rec = None
    if not isinstance(rec, dict) or not isinstance(rec.get("forecaster"), str) or "origin" not in rec:
        raise DamagedStore(f"{path} is damaged: line {number} is not a result record; rerun with --fresh to "
                           "start over (or move the folder aside)")
    return rec


def read_run_file(path: Path) -> dict[str, Any]:
    """run.json as a mapping; a DamagedStore naming it when it is not one (a torn or edited file)."""
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        run = None
    if not isinstance(run, dict) or not all(isinstance(run.get(k), dict) for k in ("settings", "data", "forecasters")):
        raise DamagedStore(f"{path} is damaged (not the run record this program writes); rerun with --fresh to "
                           "start over (or move the folder aside)")
    return run


class ResultStore:
    """Append-only JSON-lines file of finished records, keyed by (forecaster, origin)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.parts = self.path.parent / PARTS

    def load(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Every finished record: results.jsonl, then the shard parts in name order (duplicates: first wins).
        A torn last line of results.jsonl (a run stopped mid-append) is cut off, with a warning; any other
        unreadable line is a DamagedStore naming the file and line."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        files = [self.path] + (sorted(self.parts.glob("*.jsonl")) if self.parts.is_dir() else [])
        for path in files:
            if not path.exists():
                continue
            with open(path, "rb") as fh:
                for number, raw in enumerate(fh, 1):
                    if not raw.endswith(b"\n") and path == self.path:  # that batch never finished
                        log.warning("%s: its last line (%d) is incomplete, from a run stopped while writing it; "
                                    "dropped it (those origins run again)", path, number)
                        self._cut_torn_tail()
                        break
                    rec = _record(raw, path, number)
                    out.setdefault((rec["forecaster"], rec["origin"]), rec)
        return out

    def write_part(self, name: str, records: Sequence[dict[str, Any]]) -> Path:
        """One shard's records as parts/<name>.jsonl, written whole (temporary file, fsync, rename) or not at all."""
        self.parts.mkdir(parents=True, exist_ok=True)
        path = self.parts / f"{name}.jsonl"
        atomic_write_text(path, _lines(records))
        return path

    def _cut_torn_tail(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as fh:
            data = fh.read()
            if not data.endswith(b"\n"):
                fh.truncate(data.rfind(b"\n") + 1)

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        data = _lines(records).encode()
        if not data:
            return
        self._cut_torn_tail()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)


def describe(forecaster: Any) -> dict[str, Any]:
    """What identifies a forecaster's settings (stored in run.json to refuse mixing settings under one name)."""
    if hasattr(forecaster, "describe"):
        return dict(forecaster.describe())
    simple = {k: v for k, v in vars(forecaster).items()
              if isinstance(v, (int, float, str, bool)) and k != "name" and not k.startswith("last_")}  # run state
    return {"kind": type(forecaster).__name__, **simple}


def check_run_file(out_dir: Path, settings: dict[str, Any], data: dict[str, Any],
                   forecasters: Sequence[Any] | dict[str, dict[str, Any]]) -> None:
    """Create or verify run.json; a resume must use the same settings, data and forecaster settings.
    ``forecasters``: the objects, or their descriptions by name (``describe``). Other sections (the shard
    timings of a Ray run) are kept."""
    path = out_dir / RUN_FILE
    described = forecasters if isinstance(forecasters, dict) else {f.name: describe(f) for f in forecasters}
    current = json.loads(json.dumps({"settings": settings, "data": data, "forecasters": described}))
    if path.exists():
        old = read_run_file(path)
        current = {**old, **current}
        if old["settings"] != current["settings"] or old["data"] != current["data"]:
            changed = sorted(k for k in set(old["settings"]) | set(current["settings"])
                             if old["settings"].get(k) != current["settings"].get(k))
            what = f"settings {', '.join(changed)}" if changed else "data"
            raise RunMismatch(f"{out_dir} holds a run with other {what}; use another --out or --fresh")
        for name, desc in current["forecasters"].items():
            if name in old["forecasters"] and old["forecasters"][name] != desc:
                raise RunMismatch(f"forecaster {name!r} ran with other settings in {out_dir}: rename it or --fresh")
        current["forecasters"] = {**old["forecasters"], **current["forecasters"]}
    atomic_write_json(path, current)


def record_shards(out_dir: Path, timings: dict[str, dict[str, Any]]) -> None:
    """Add finished shards' timings to run.json's "shards" section (the run record of a sharded run)."""
    path = out_dir / RUN_FILE
    run = read_run_file(path)
    run["shards"] = {**run.get("shards", {}), **timings}
    atomic_write_json(path, run)
