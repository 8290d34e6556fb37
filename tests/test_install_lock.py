"""The venv the tests run in holds exactly the locks' versions (setup_venv.sh installs from them), and the locks
still satisfy the ranges in requirements*.txt they were compiled from (`bash setup_venv.sh --lock` refreshes them).
A fresh machine then runs what CI ran, not whatever the registry serves that day."""
from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCKS = {"requirements.txt": "requirements.lock", "requirements-ray.txt": "requirements-ray.lock",
         "requirements-test.txt": "requirements-test.lock"}


def pins(lock: Path) -> dict[str, str]:
    """name -> version of every line of a lock whose environment marker holds for this interpreter."""
    out: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$", line)
        if m and (m.group(3) is None or Marker(m.group(3)).evaluate()):
            out[canonicalize_name(m.group(1))] = m.group(2)
    return out


def ranges(requirements: Path) -> list[Requirement]:
    lines = (line.split("#")[0].strip() for line in requirements.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


@pytest.mark.parametrize("lock", sorted(LOCKS.values()))
def test_venv_holds_the_locked_versions(lock: str) -> None:
    locked = pins(ROOT / lock)
    assert len(locked) >= 10 if lock == "requirements.lock" else locked
    wrong = {name: (version, metadata.version(name)) for name, version in locked.items()
             if metadata.version(name) != version}
    assert wrong == {}, f"installed versions differ from {lock} (name: (locked, installed)); rerun setup_venv.sh"


@pytest.mark.parametrize("inputs", sorted(LOCKS))
def test_locks_satisfy_the_requirement_ranges(inputs: str) -> None:
    locked = {}
    for lock in LOCKS.values():
        locked |= pins(ROOT / lock)
    for req in ranges(ROOT / inputs):
        version = locked.get(canonicalize_name(req.name))
        assert version is not None, f"{req.name} of {inputs} is not in the locks: run bash setup_venv.sh --lock"
        assert req.specifier.contains(version, prereleases=True), f"{req.name}=={version} breaks '{req}' of {inputs}"


def test_torch_is_the_pinned_release() -> None:
    import torch

    if os.environ.get("TORCH_SPEC") or os.environ.get("TORCH_VERSION"):
        pytest.skip("TORCH_SPEC or TORCH_VERSION chose another torch on purpose")
    pinned = re.search(r"TORCH_VERSION=\$\{TORCH_VERSION:-([0-9.]+)\}", (ROOT / "setup_venv.sh").read_text())
    assert pinned, "setup_venv.sh no longer pins TORCH_VERSION"
    assert Version(torch.__version__).public == pinned.group(1)


def test_pins_evaluate_markers_for_this_python() -> None:
    # an independent look at one forked pin: numpy's lock lines cover every supported Python exactly once
    numpy_lines = [line for line in (ROOT / "requirements.lock").read_text().splitlines() if line.startswith("numpy==")]
    markers = [Marker(line.split(";", 1)[1].rstrip(" \\")) if ";" in line else None for line in numpy_lines]
    for minor in range(10, 15):
        env = {"python_full_version": f"3.{minor}.0", "python_version": f"3.{minor}"}
        assert sum(1 for m in markers if m is None or m.evaluate(env)) == 1, f"Python 3.{minor}"
