"""The bad-input contract of finetune.py, as one table: each row is a folder or an input a user can hand it, and
the run ends in its documented exit code with one line naming the problem, no traceback, and exactly the files
listed left in the run folder (byte for byte where they were the user's).

The run folder is finetune.py's only when it carries the marker (forecast/owned.py) or is a run of an earlier
version (its last/state.pt holds our fingerprint); anything else in it stops the run before a byte is written.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

import finetune
from forecast.owned import MARKER
from support.finetune_run import argv

pytestmark = pytest.mark.usefixtures("one_thread")  # the fixtures one_thread, tiny and bars are in conftest.py

RUN = ("--max-steps", "4", "--eval-every", "2")
TRAINED = {MARKER, "best", "best/config.json", "best/model.safetensors", "best/trained_for.json", "card.json", "last", "last/config.json",
           "last/model.safetensors", "last/state.pt"}


@dataclass
class Case:
    id: str
    code: int
    words: tuple[str, ...]                         # all in the one line (case-insensitive)
    setup: Callable[[Path, Path], None]            # (run folder, a trained run to copy from)
    files: set[str] | None                         # every path left under the run folder; None: no folder
    args: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()                     # the user's files, unchanged byte for byte


def tree(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")} if folder.exists() else None


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def nothing(out: Path, trained: Path) -> None:
    pass


def user_checkpoint(*names: str, card: bool = False):
    """The user's own folders (a checkpoint they keep there), and their card.json, without last/state.pt."""
    def setup(out: Path, trained: Path) -> None:
        for name in names:
            shutil.copytree(trained / "best", out / name)
        if card:
            (out / "card.json").write_text('{"mine": true}\n')
    return setup


def ours(*edits: Callable[[Path], None], marker: bool = True):
    """A finished run of ours (marked, or from an earlier version without the marker), then the edits."""
    def setup(out: Path, trained: Path) -> None:
        shutil.copytree(trained, out)
        if not marker:
            (out / MARKER).unlink()
        for edit in edits:
            edit(out)
    return setup


def write(rel: str, text: str = "mine\n"):
    def edit(out: Path) -> None:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    return edit


def marker_of(tool: str):
    return write(MARKER, json.dumps({"tool": tool}))


def relink(out: Path) -> None:
    """card.json a link to a file of the user's elsewhere: replacing it would write through to theirs."""
    (out.parent / "theirs.json").write_text("{}")
    (out / "card.json").unlink()
    (out / "card.json").symlink_to(out.parent / "theirs.json")


def leftovers(out: Path) -> None:
    """What a run killed mid-write leaves: a staged folder and a temporary of an atomic file write."""
    shutil.copytree(out / "best", out / ".best.tmp")
    (out / ".card.json.x1y2z3.tmp").write_text("{")


CASES = [
    Case("user-best", 2, ("out", "not written by finetune.py", MARKER, "best"), user_checkpoint("best"),
         {"best", "best/config.json", "best/model.safetensors", "best/trained_for.json"}, kept=("best/model.safetensors", "best/trained_for.json",)),
    Case("user-best-last-card-fresh", 2, ("not written by finetune.py", "best"),
         user_checkpoint("best", "last", card=True),
         {"best", "best/config.json", "best/model.safetensors", "best/trained_for.json", "card.json", "last",
          "last/config.json", "last/model.safetensors", "last/trained_for.json"}, args=("--fresh",),
         kept=("card.json", "last/model.safetensors")),
    Case("user-notes", 2, ("not written by finetune.py", "notes.txt"), lambda o, t: write("notes.txt")(o),
         {"notes.txt"}, kept=("notes.txt",)),
    Case("ours-plus-user-file", 2, ("notes.txt", "was not written by finetune.py", "nothing in"),
         ours(write("notes.txt")), TRAINED | {"notes.txt"}, kept=("notes.txt", "card.json")),
    Case("ours-plus-user-file-fresh", 2, ("notes.txt", "was not written by finetune.py"),
         ours(write("notes.txt")), TRAINED | {"notes.txt"}, args=("--fresh",),
         kept=("notes.txt", "last/state.pt")),
    Case("user-file-inside-best", 2, ("best/readme.md", "was not written"), ours(write("best/README.md")),
         TRAINED | {"best/README.md"}, args=("--fresh",), kept=("best/README.md", "best/model.safetensors", "best/trained_for.json")),
    Case("user-folder-inside-ab", 2, ("ab/mine",), ours(write("ab/mine/x.csv")),
         TRAINED | {"ab", "ab/mine", "ab/mine/x.csv"}, kept=("ab/mine/x.csv",)),
    Case("link", 2, ("card.json", "not written"), ours(relink), TRAINED),
    Case("other-tool", 2, ("holds the files of backtest.py", "not of finetune.py"), ours(marker_of("backtest.py")),
         TRAINED, kept=(MARKER,)),
    Case("damaged-marker", 2, (MARKER, "damaged"), ours(write(MARKER, "{")), TRAINED, kept=(MARKER,)),
    Case("ab-only-user-file", 2, ("notes.txt", "not written"), ours(write("notes.txt")), TRAINED | {"notes.txt"},
         args=("--ab", "--fresh"), kept=("notes.txt",)),
    # what must keep working: our own runs resume, also after a kill mid-write and from an earlier version
    Case("resume-ours", 0, (), ours(), TRAINED | {"loss_curve.png"}),
    Case("resume-after-kill", 0, (), ours(leftovers), TRAINED | {"loss_curve.png", ".best.tmp",
         ".best.tmp/config.json", ".best.tmp/model.safetensors", ".best.tmp/trained_for.json", ".card.json.x1y2z3.tmp"}),
    Case("earlier-version-taken-over", 0, (), ours(marker=False), TRAINED | {"loss_curve.png"}),
    Case("earlier-version-fresh", 0, (), ours(marker=False), TRAINED | {"loss_curve.png"}, args=("--fresh",)),
    Case("empty-folder", 0, (), lambda o, t: o.mkdir(), TRAINED | {"loss_curve.png"}),
    # the loss becomes NaN: exit 8 naming the step; the checkpoints of the last good evaluation stay
    Case("loss-nan", 8, ("fine-tuning stopped at step 2", "gradient norm nan", "best keeps step 0", "--lr"),
         nothing, {MARKER, "best", "best/config.json", "best/model.safetensors", "best/trained_for.json", "last", "last/config.json",
                   "last/model.safetensors", "last/state.pt"}, args=("--lr", "100")),
    Case("sessions", 2, ("too few sessions",), nothing, None, args=("--sessions", "4")),
    Case("context", 2, ("longer than the model's context",), nothing, None,
         args=("--lookback", "500", "--horizon", "30")),
]


@pytest.fixture(scope="module")
def trained(tiny, bars, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("trained") / "ft"
    assert finetune.main(argv(tiny, bars, out, *RUN)) == 0
    (out / "loss_curve.png").unlink(missing_ok=True)  # --no-plots still draws it: rows name it where it is new
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tiny, bars, trained, tmp_path, caplog):  # noqa: F811
    out = tmp_path / "ft"
    case.setup(out, trained)
    before = {rel: digest(out / rel) for rel in case.kept}
    caplog.set_level(logging.INFO)
    code = finetune.main(argv(tiny, bars, out, *RUN, *case.args))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert code == case.code, errors
    assert "Traceback" not in caplog.text
    if case.code:
        assert len(errors) == 1 and "\n" not in errors[0], errors
        for word in case.words:
            assert word.lower() in errors[0].lower(), (word, errors[0])
    assert tree(out) == case.files
    assert {rel: digest(out / rel) for rel in case.kept} == before
    if case.code == 0:
        assert json.loads((out / MARKER).read_text())["tool"] == "finetune.py"


def test_the_table_covers_the_ownership_cases():
    ids = {c.id for c in CASES}
    assert {"user-best", "user-best-last-card-fresh", "ours-plus-user-file-fresh", "resume-after-kill",
            "earlier-version-taken-over", "loss-nan"} <= ids
    assert {c.code for c in CASES} == {0, 2, 8}
