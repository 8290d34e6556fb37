"""Output folders a script owns: it creates, replaces or deletes only what it wrote itself.

A script's run folder carries a marker file (``MARKER``) naming the script that claimed it. Its ``Owner`` says
which names the script writes there (a tree of fnmatch patterns: a file pattern maps to None, a folder pattern to
the layout of its contents), so everything else in the folder is foreign: a user's notes, another tool's files,
a checkpoint copied in by hand. Before a script writes anything, ``claim`` walks the folder; the first foreign
path stops the run with a SettingsError (exit 2) naming it, and nothing is touched.

Leftovers of our own atomic writes (``.NAME.XXXX.tmp`` of a file, ``.NAME.tmp`` / ``.NAME.old`` of a folder)
count as ours when NAME fits the layout: a run killed mid-write must still resume.

A folder without the marker that is not empty was not claimed by this version. It is taken over (the marker
written) only when every entry fits the layout and the owner's ``signature`` recognises a run of ours (a
``run.json`` of a backtest, the ``last/state.pt`` of a fine-tuning run); otherwise the run stops, naming it.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from forecast.artifacts import atomic_write_json
from forecast.errors import SettingsError

log = logging.getLogger(__name__)
MARKER = ".kronos-owned.json"
Layout = Mapping[str, Optional["Layout"]]  # pattern -> None (a file) or the layout of a folder's contents
TEMP_SUFFIXES = (".tmp", ".old")


class ForeignPath(SettingsError):
    """The output folder holds something this script did not write; exit 2, nothing touched."""


@dataclass(frozen=True)
class Owner:
    tool: str                                               # the script, as the messages name it
    layout: Layout
    signature: Callable[[Path], bool] = lambda folder: False  # an unmarked folder is an earlier run of ours


def _fits(name: str, is_dir: bool, layout: Layout) -> tuple[bool, Layout | None]:
    """Whether an entry fits the layout, and the layout of its contents when it is a folder."""
    for pattern, inner in layout.items():
        if fnmatchcase(name, pattern) and (inner is not None) == is_dir:
            return True, inner
    return False, None


def _is_leftover(name: str, layout: Layout) -> bool:
    """``.NAME.tmp``, ``.NAME.old`` or ``.NAME.<random>.tmp`` of a NAME the layout holds."""
    if not name.startswith(".") or not name.endswith(TEMP_SUFFIXES):
        return False
    base = name[1:-4]
    bases = {base, base.rsplit(".", 1)[0]} if "." in base else {base}
    return any(fnmatchcase(b, p) for b in bases for p in layout)


def first_foreign(folder: Path, layout: Layout) -> Path | None:
    """The first path under ``folder`` (sorted, depth first) that does not fit ``layout``; links are never ours."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except NotADirectoryError:
        return folder
    for entry in entries:
        path = Path(entry.path)
        if entry.name == MARKER and entry.is_file(follow_symlinks=False):
            continue
        if entry.is_symlink():
            return path
        is_dir = entry.is_dir(follow_symlinks=False)
        if _is_leftover(entry.name, layout):
            continue
        ok, inner = _fits(entry.name, is_dir, layout)
        if not ok:
            return path
        if inner is not None:
            found = first_foreign(path, inner)
            if found is not None:
                return found
    return None


def marked_by(folder: Path) -> str | None:
    """The tool named by the folder's marker; None when it has none. A damaged marker is a ForeignPath."""
    path = folder / MARKER
    if not path.is_file():
        return None
    try:
        tool = json.loads(path.read_text(encoding="utf-8"))["tool"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ForeignPath(f"{path} is damaged: the folder's owner is unknown, so nothing in it is touched; "
                          "choose another --out") from None
    return str(tool)


def check(folder: Path, owner: Owner, flag: str = "--out") -> bool:
    """Raise ForeignPath unless the script may write in ``folder`` (nothing is written here); True when the
    marker is still to be written (a new, empty or taken-over folder)."""
    folder = Path(folder)
    if not folder.exists():
        return True
    if not folder.is_dir():
        raise ForeignPath(f"{flag} {folder} is a file, not a folder")
    tool = marked_by(folder)
    if tool is not None and tool != owner.tool:
        raise ForeignPath(f"{folder} holds the files of {tool}, not of {owner.tool}; choose another {flag}")
    foreign = first_foreign(folder, owner.layout)
    if tool is not None:
        if foreign is not None:
            raise ForeignPath(f"{foreign} was not written by {owner.tool}, so nothing in {folder} is touched: "
                              f"move it away or choose another {flag}")
        return False
    first = foreign or next(iter(sorted(folder.iterdir())), None)
    if first is None:
        return True
    if foreign is None and owner.signature(folder):
        log.info("%s: a run of an earlier version of %s; it is taken over (%s written)", folder, owner.tool, MARKER)
        return True
    raise ForeignPath(f"{folder} was not written by {owner.tool} (it has no {MARKER}) and holds {first}: choose "
                      f"another {flag}, or move what it holds away")


def claim(folder: Path, owner: Owner, flag: str = "--out") -> Path:
    """``check``, then create the folder and write its marker when it has none."""
    folder = Path(folder)
    if check(folder, owner, flag):
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / MARKER, marker_body(owner))
    return folder


def marker_body(owner: Owner) -> dict[str, Any]:
    return {"tool": owner.tool,
            "note": f"{owner.tool} writes, replaces and deletes only its own files here and stops at anything else"}
