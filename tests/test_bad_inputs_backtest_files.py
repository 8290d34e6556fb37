"""backtest.py's output folder and bars files, as one table: what a user can leave in --out (their own files,
another tool's folder, a run of an earlier version) and bars files that name another symbol. Each row asserts
the exit code, the words of the one line, and exactly the files left in --out (the user's byte for byte).

backtest.py (with or without --fresh) creates, replaces or deletes only what it wrote: its folder carries a
marker (forecast/owned.py) and anything in it outside the backtest's layout stops the run before a byte is
written.
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

import backtest
from support import simulated
from forecast.owned import MARKER

RUN = {MARKER, "results.jsonl", "run.json", "report.json", "per_origin.csv", "calibrator_random_walk.json"}


@dataclass
class Case:
    id: str
    code: int
    words: tuple[str, ...]
    setup: Callable[[Path, Path, dict], None]     # (--out, a finished run to copy from, the argv's parts)
    files: set[str] | None                        # every path left under --out; None: no folder
    args: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()                    # unchanged byte for byte


def tree(folder: Path) -> set[str] | None:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")} if folder.exists() else None


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write(rel: str, text: str = "mine\n"):
    def edit(out: Path) -> None:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    return edit


def ours(*edits: Callable[[Path], None], marker: bool = True):
    def setup(out: Path, done: Path, a: dict) -> None:
        shutil.copytree(done, out)
        if not marker:
            (out / MARKER).unlink()
        for edit in edits:
            edit(out)
    return setup


def users(*edits: Callable[[Path], None]):
    def setup(out: Path, done: Path, a: dict) -> None:
        out.mkdir()
        for edit in edits:
            edit(out)
    return setup


def shard_part(out: Path) -> None:
    """What a Ray run leaves: a shard's records in parts/ (here a copy of the store's)."""
    (out / "parts").mkdir()
    shutil.copy(out / "results.jsonl", out / "parts" / "2025-03-06.baselines.jsonl")


def killed_mid_write(out: Path) -> None:
    (out / ".report.json.k3y9.tmp").write_text("{")
    (out / ".equity.png.tmp.png").write_bytes(b"\x89PNG")


def universe(symbol_files: dict[str, str]):
    """--symbols with --data-dir: each file holds the bars of the symbol named in its Symbol column."""
    def setup(out: Path, done: Path, a: dict) -> None:
        data = out.parent / "data"
        data.mkdir()
        for name, inside in symbol_files.items():
            bars = a["frame"].rename_axis("timestamp").reset_index().assign(Symbol=inside)
            bars.to_csv(data / f"{name}.csv", index=False)
        a["argv"] = [x for x in a["argv"] if x not in ("--csv", str(a["csv"]))]
        a["argv"] += ["--symbols", ",".join(symbol_files), "--data-dir", str(data)]
    return setup


def with_symbol(symbol: str):
    def setup(out: Path, done: Path, a: dict) -> None:
        path = out.parent / "bars_sym.csv"
        a["frame"].rename_axis("timestamp").reset_index().assign(Symbol=symbol).to_csv(path, index=False)
        a["argv"][a["argv"].index(str(a["csv"]))] = str(path)
    return setup


CASES = [
    # the case: --fresh deleted parts/ wholesale, the user's files in it included
    Case("fresh-user-file-in-parts", 2, ("parts/notes.txt", "not written by backtest.py"),
         ours(shard_part, write("parts/notes.txt")), RUN | {"parts", "parts/2025-03-06.baselines.jsonl",
                                                            "parts/notes.txt"},
         args=("--fresh",), kept=("parts/notes.txt", "parts/2025-03-06.baselines.jsonl", "results.jsonl")),
    Case("fresh-user-jsonl-in-parts", 2, ("parts/mine.jsonl",), ours(write("parts/mine.jsonl", "{}\n")),
         RUN | {"parts", "parts/mine.jsonl"}, args=("--fresh",), kept=("parts/mine.jsonl", "run.json")),
    Case("resume-user-file", 2, ("notes.txt", "not written by backtest.py", "nothing in"), ours(write("notes.txt")),
         RUN | {"notes.txt"}, kept=("notes.txt", "report.json")),
    Case("user-folder-unmarked", 2, ("not written by backtest.py", MARKER, "holds"),
         users(write("parts/a.csv"), write("report.json", "{}")), {"parts", "parts/a.csv", "report.json"},
         args=("--fresh",), kept=("parts/a.csv", "report.json")),
    Case("user-files-like-ours-unmarked", 2, ("not written by backtest.py", "results.jsonl"),
         users(write("results.jsonl", "{}\n")), {"results.jsonl"}, args=("--fresh",), kept=("results.jsonl",)),
    Case("finetune-folder", 2, ("holds the files of finetune.py", "not of backtest.py"),
         users(write(MARKER, json.dumps({"tool": "finetune.py"}))), {MARKER}, kept=(MARKER,)),
    Case("symbol-folder-user-file", 2, ("QQQ/mine.csv",), ours(write("QQQ/mine.csv")),
         RUN | {"QQQ", "QQQ/mine.csv"}, kept=("QQQ/mine.csv",)),
    # what must keep working: our own runs resume or start over
    Case("resume-ours", 0, (), ours(), RUN),
    Case("fresh-ours", 0, (), ours(shard_part), RUN, args=("--fresh",)),
    Case("resume-after-kill", 0, (), ours(killed_mid_write), RUN | {".report.json.k3y9.tmp", ".equity.png.tmp.png"}),
    Case("earlier-version-taken-over", 0, (), ours(marker=False), RUN),
    # a bars file of another symbol is refused, never forecast at the wrong symbol's price, before --out is made
    Case("csv-of-another-symbol", 2, ("symbol column says QQQ", "the run is for SPY"), with_symbol("QQQ"),
         None, args=("--symbol", "SPY")),
    Case("data-dir-swapped-files", 2, ("SPY.csv", "symbol column says QQQ", "the run is for SPY"),
         universe({"SPY": "QQQ", "QQQ": "SPY"}), None),
    Case("data-dir-one-file-of-another-symbol", 2, ("IWM.csv", "symbol column says QQQ", "the run is for IWM"),
         universe({"QQQ": "QQQ", "IWM": "QQQ"}), None),
    Case("data-dir-lower-case-file", 0, (), universe({"qqq": "qqq"}),
         {MARKER, "report.json", "per_origin.csv", "calibrator_random_walk.json", "QQQ", *(f"QQQ/{n}" for n in
                                                                                           RUN - {MARKER})}),
    Case("symbols-twice", 2, ("'symbols'", "each once"), universe({"QQQ": "QQQ"}), None,
         args=("--symbols", "qqq,QQQ")),
]


@pytest.fixture(scope="module")
def sim():
    return simulated.simulate_bars("2025-03-03", 4, seed=23)


def base_argv(csv: Path, out: Path) -> list[str]:
    return ["--config", str(Path(backtest.__file__).parent / "config.yaml"), "--csv", str(csv),
            "--start", "2025-03-06", "--every", "90", "--n-samples", "8", "--forecasters", "random_walk",
            "--out", str(out), "--no-progress", "--no-plots"]


@pytest.fixture(scope="module")
def done(sim, tmp_path_factory):
    root = tmp_path_factory.mktemp("bt")
    csv = root / "bars.csv"
    sim.rename_axis("timestamp").reset_index().to_csv(csv, index=False)
    assert backtest.main(base_argv(csv, root / "run")) == 0
    return root / "run", csv


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_backtest_folder_and_files(case: Case, sim, done, tmp_path, caplog):
    run, csv = done
    out = tmp_path / "out"
    a = {"argv": base_argv(csv, out), "csv": csv, "frame": sim}
    case.setup(out, run, a)
    before = {rel: digest(out / rel) for rel in case.kept}
    caplog.set_level(logging.INFO)
    code = backtest.main(a["argv"] + list(case.args))
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
        assert json.loads((out / MARKER).read_text())["tool"] == "backtest.py"
        assert json.loads((out / "report.json").read_text())["forecasters"]["random_walk"]["n_origins"] > 0
