#!/usr/bin/env python3
"""Fine-tune Kronos on your own minute bars, and keep it only if an A/B backtest on held-out sessions says so.

    python finetune.py --csv bars.csv --model NeoQuasar/Kronos-small --lookback 240 --out outputs/ft
    python finetune.py --sessions 25 --out outputs/ft                       # the last 25 sessions from Alpaca
    torchrun --nproc-per-node 4 finetune.py --csv bars.csv --out outputs/ft # DistributedDataParallel
    python finetune.py --csv bars.csv --out outputs/ft --ab                 # only the A/B of OUT/best

Sessions are split in time: train, then validation (early stopping), then test (held out for the A/B). Writes
OUT/best/ (config.json + model.safetensors: use it as --model OUT/best), OUT/last/ (resume: rerun the same
command), OUT/card.json, OUT/loss_curve.png and OUT/ab/. Exit codes as the forecast CLI's (README).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from app.config import add_config_flags, load_config, overrides_from_args, script_parser
from app.exits import ExitCode
from app.operation import install_program_handlers, report_failure

log = logging.getLogger("finetune")
DEFAULT_CONFIG = Path(__file__).resolve().parent / "config.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = script_parser(__doc__, DEFAULT_CONFIG, "settings (the forecast's keys and fine-tuning's own)")
    p.add_argument("--out", type=Path, default=Path("outputs/finetune"), help="run folder")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming the run in --out (with "
                   "--ab: only the A/B in OUT/ab starts over, the trained model is kept)")
    p.add_argument("--ab", action="store_true", help="only run the A/B backtest of the run in --out")
    p.add_argument("--no-plots", action="store_true", help="no backtest charts in OUT/ab")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    add_config_flags(p, script="finetune", skip=("out",))
    return p.parse_args(argv)


def main(argv: list[str] | None = None, program: bool = False) -> int:
    args = parse_args(argv)
    if program:
        install_program_handlers(verbose=args.verbose, quiet=args.quiet)
    try:
        overrides = overrides_from_args(args)
        overrides.pop("out", None)  # --out here is the run folder, not the forecast's
        cfg = load_config(args.config, overrides, script="finetune")
        from training.run import fine_tune

        fine_tune(cfg, args.out, fresh=args.fresh, ab_only=args.ab, progress=not args.no_progress,
                  plots=not args.no_plots)
        return ExitCode.OK
    except BaseException as exc:  # noqa: BLE001 - one line and a documented code; our own bugs keep the traceback
        return report_failure(exc, log, interrupted="rerun the same command to resume from OUT/last")


if __name__ == "__main__":
    sys.exit(main(program=True))
