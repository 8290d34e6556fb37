"""Checks on a script's paths that run before any work, so that a bad one ends in one line (exit 2) and
nothing is made."""
from __future__ import annotations

import os
from pathlib import Path

from app.config import ConfigError


def check_out_dir(out: Path, flag: str = "--out") -> None:
    """``out`` is a folder, or can be made as one: no part of it is a file, and the deepest existing part is
    writable. Nothing is created."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag} {out} is a file, not a folder")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {out} cannot be made: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {out} cannot be written: no write permission on {existing}")


def check_input_file(path: Path, flag: str) -> None:
    """``path`` is a readable file."""
    if not path.exists():
        raise ConfigError(f"{flag} {path}: no such file")
    if not path.is_file():
        raise ConfigError(f"{flag} {path} is not a file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{flag} {path} cannot be read: no read permission")
