#!/usr/bin/env python3
"""Forecast the next 30 minutes of QQQ (or any US symbol) as N sampled Kronos paths, and the numbers a trader
acts on: P(up), expected return, per-minute bands, VWAP / mid-band touch odds, drawdown and run-up quantiles.

    python cli_kronos_prob_qqq.py                       # live, Alpaca keys from the environment
    python cli_kronos_prob_qqq.py --cron                # from cron: skips cleanly when the market is closed
    python cli_kronos_prob_qqq.py --source csv --csv bars.csv --asof 2025-06-02T14:00:00Z   # replay

Exit codes are listed in the README (0 ok, 2 bad input, 3 skipped, 4 data source, 5 model, 6 locked, 7 time).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from app.config import add_config_flags, load_config, overrides_from_args, parse_time, script_parser
from app.exits import ExitCode
from app.operation import install_program_handlers, report_failure, run_lock, time_budget
from app.progress import Stages
from forecast.errors import Skipped

if TYPE_CHECKING:  # pandas, torch and the calendars load only once a run needs them (--warm: docs/warm.md)
    import pandas as pd

    from forecast.resident import Resident

log = logging.getLogger("kronos_prob")
DEFAULT_CONFIG = Path(__file__).resolve().parent / "config.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = script_parser(__doc__, DEFAULT_CONFIG)
    parser.add_argument("--asof", default=None,
                        help="replay: forecast as of this instant (ISO 8601; naive means UTC), using only bars "
                             "closed by then")
    parser.add_argument("--json", action="store_true", help="print the summary JSON instead of the short text")
    parser.add_argument("--cron", action="store_true",
                        help="unattended run: skip cleanly (exit 3) when the market is closed")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only on stderr")
    add_config_flags(parser)
    return parser.parse_args(argv)


def run(cfg, asof: pd.Timestamp | None, cron: bool, written: list, resident: Resident | None = None,
        stages: Stages | None = None) -> object:
    """One run, under the lock and the time budget: bars -> pipeline -> files written all or nothing. A warm
    worker passes its Resident: the kept engine and bars (the same results). Each stage is timed (and shown
    on a terminal) by ``stages``."""
    # Imported here so that bad arguments fail fast, before torch and the calendars load.
    import pandas as pd

    from forecast.pipeline import ForecastPipeline
    from forecast.publish import publish
    from marketdata import calendar as mcal
    from marketdata.recent import fetch_recent_bars, range_note

    stages = stages or Stages(show=False)
    t0 = time.perf_counter()
    if asof is None and cfg.source == "alpaca":
        asof = pd.Timestamp.now(tz="UTC").floor("s")
    if asof is not None:
        skip_if_closed(mcal.market_status(asof, cfg.rth), cron)
    pipeline = ForecastPipeline(cfg, loader=None if resident is None else resident.engine)
    with stages.stage("data"):
        recent = fetch_recent_bars(cfg.source, cfg.symbol, asof, cfg.days, cfg.rth, csv=cfg.csv, csv_tz=cfg.csv_tz,
                                   csv_label=cfg.csv_label, feed=cfg.feed, sip_fallback=cfg.sip_fallback,
                                   url_override=os.environ.get("ALPACA_DATA_URL") or None,
                                   cache=None if resident is None else resident.bars)
    status = mcal.market_status(recent.now, cfg.rth)
    skip_if_closed(status, cron)
    from evaluation.online import cli_online

    online, online_path, learnt = cli_online(cfg.out, cfg.symbol, pipeline, recent.frame, recent.now)
    try:
        fc = pipeline.forecast(recent.frame, recent.now, data_asof=recent.data_asof, provenance=recent.provenance,
                               market_open=status.is_open, status_note=status.describe(),
                               timings={"data": time.perf_counter() - t0}, stage=stages.stage,
                               progress=stages.progress)
    except Skipped as exc:  # a replay outside its file: say what the file covers
        note = range_note(recent.frame, recent.now, cfg.csv) if cfg.source == "csv" else None
        if note is None:
            raise
        raise Skipped(f"{exc}; {note}", exc.code) from None
    with stages.stage("writing"):
        files = publish(cfg.out, cfg.symbol, fc, plot=cfg.plot, done=written).files
    if learnt:  # the outcomes resolved by now, learnt before this forecast: kept once its files are out
        try:
            online.save(online_path)
        except OSError as exc:
            log.warning("online calibration state not saved to %s (%s); the next run learns again", online_path,
                        exc.strerror or exc)
    t = fc.timings
    log.info("forecast in %.2f s (data %.2f, model load %.2f, sampling %.2f); wrote %s", t["total"], t["data"],
             t["model_load"], t["sample"], files["summary"])
    return fc


def skip_if_closed(status, cron: bool) -> None:
    if cron and not status.is_open:
        raise Skipped(f"{status.describe()}; nothing to do under --cron")


def main(argv: list[str] | None = None, program: bool = False, resident: Resident | None = None) -> int:
    args = parse_args(argv)
    if program:
        install_program_handlers(verbose=args.verbose, quiet=args.quiet)
    if resident is None:  # in the warm worker itself the run is done here
        from app.warm import warm_run

        code = warm_run(args, sys.argv[1:] if argv is None else list(argv))
        if code is not None:  # None: not asked for, or the worker could not take it (a line said why)
            return code
    written: list = []
    try:
        cfg = load_config(args.config, overrides_from_args(args))
        asof = None if args.asof is None else parse_time(args.asof, "--asof")
        from forecast.publish import preflight

        out = preflight(cfg.out, cfg.symbol)  # every check that can fail runs before anything is written
        stages = Stages.for_terminal(quiet=args.quiet)  # silent under cron (stderr is no terminal) and with -q
        with run_lock(out / f".run_{cfg.symbol}.lock"):
            with time_budget(cfg.time_budget, stages.account):
                fc = run(cfg, asof, args.cron, written, resident, stages)
    except BaseException as exc:  # noqa: BLE001 - every failure ends in one line and a documented code
        from forecast.publish import PublishError

        # a write that failed part-way says itself what it left
        return report_failure(exc, log, written=None if isinstance(exc, PublishError) and exc.left else bool(written))
    from forecast.summary import console_text

    print_result(json.dumps(fc.summary, indent=2) if args.json else console_text(fc.summary))
    return ExitCode.OK


def print_result(text: str) -> None:
    """The result on stdout. A reader that went away (`--json | head -1`) is no failure: the files are all
    written, so the run ends quietly with 0, and stdout is pointed at /dev/null so that Python's own flush at
    exit does not raise again."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, sys.stdout.fileno())
            os.close(null)
        except (OSError, ValueError):
            pass


if __name__ == "__main__":
    sys.exit(main(program=True))
