"""finetune.py's argument checks, as a table in the style of test_bad_inputs.py: each row is an argument or
settings file a user can hand fine-tuning, and the run must end with exit 2 and one line naming the problem, no
traceback, before anything is made: no --out folder (and a file in its way left as it was). (The contract about
what fine-tuning may replace in an existing --out lives in test_bad_inputs_finetune.py.)

Rows run in-process through ``main(argv)`` with a tiny random-weight checkpoint and synthetic bars.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

import finetune
from app.exits import ExitCode
from support.kronos_checkpoints import write_checkpoint_pair
from support.bars import ROOT, synthetic_bars


@dataclass
class Case:
    id: str
    words: tuple[str, ...]                                   # all in the one line (case-insensitive)
    args: tuple[str, ...] = ()
    setup: Callable[[Path, dict], None] | None = None        # writes inputs under the case folder, edits argv


def config(text: str):
    def setup(d: Path, a: dict) -> None:
        (d / "config.yaml").write_text(text)
        a["config"] = d / "config.yaml"
    return setup


def out_at(*parts: str):
    """A file of the user's at d/f, and --out at d/f/<parts> (the file itself when no parts)."""
    def setup(d: Path, a: dict) -> None:
        (d / "f").write_text("mine\n")
        a["out"] = d.joinpath("f", *parts)
    return setup


def semicolon_bars(d: Path, a: dict) -> None:
    (d / "semi.csv").write_text("timestamp;open;high;low;close;volume\n2025-06-04T14:00:00Z;1;2;0.5;1;10\n")
    a["csv"] = d / "semi.csv"


CASES = [
    Case("out-is-a-file", ("--out", "is a file, not a folder"), setup=out_at()),
    Case("out-under-a-file", ("--out", "cannot be created", "is a file, not a folder"), setup=out_at("run")),
    Case("lr-nan", ("'lr'", "finite number"), args=("--lr", "nan")),
    Case("lr-absurd", ("'lr'", "in (0, 1000]"), args=("--lr", "1e38")),  # overflowed AdamW: a traceback
    Case("grad-clip-inf", ("'grad_clip'", "finite number"), args=("--grad-clip", "inf")),
    Case("weight-decay-minus-inf", ("'weight_decay'", "finite number"), args=("--weight-decay=-inf",)),
    Case("dropout-nan-in-yaml", ("'dropout'", "finite number"), setup=config("dropout: .nan\n")),
    Case("time-budget-absurd", ("'time_budget'", "86400"), args=("--time-budget", "1e20")),
    Case("seed-too-large", ("'seed'", "0..4294967295"), args=("--seed", str(2**32))),
    Case("config-duplicate-key", ("duplicate key 'lr'", "line 3", "first given at line 1"),
         setup=config("lr: 0.001\nmax_steps: 10\nlr: 0.1\n")),
    Case("bars-semicolon-separated", ("semicolon-separated", "use commas"), setup=semicolon_bars),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bad_finetune_args")
    model, tokenizer = write_checkpoint_pair(root / "ckpt", shape="tiny", seed=0)
    synthetic_bars().to_csv(root / "bars.csv", index=False)
    return {"model": model, "tokenizer": tokenizer, "csv": root / "bars.csv"}


def argv_for(a: dict) -> list[str]:
    return ["--config", str(a.get("config", ROOT / "config.yaml")), "--csv", str(a["csv"]), "--model", str(a["model"]),
            "--tokenizer", str(a["tokenizer"]), "--out", str(a["out"]), "--lookback", "30", "--horizon", "10",
            "--sessions", "3", "--val-sessions", "1", "--test-sessions", "1", "--device", "cpu", "--no-progress",
            *a["args"]]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_argument(case: Case, inputs: dict, tmp_path: Path, caplog) -> None:
    a = {**inputs, "out": tmp_path / "out", "args": case.args}
    if case.setup is not None:
        case.setup(tmp_path, a)
    made_by_setup = {p.name for p in tmp_path.iterdir()}
    caplog.set_level(logging.INFO)
    assert finetune.main(argv_for(a)) == ExitCode.BAD_INPUT
    last = caplog.records[-1]
    message = last.getMessage()
    assert last.levelno == logging.ERROR and last.exc_info is None and "\n" not in message
    assert all(w.lower() in message.lower() for w in case.words), message
    assert not a["out"].is_dir()  # nothing made
    if (tmp_path / "f").exists():
        assert (tmp_path / "f").read_text() == "mine\n"  # the user's file, as it was
    assert {p.name for p in tmp_path.iterdir()} == made_by_setup
