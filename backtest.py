#!/usr/bin/env python3
"""Walk-forward backtest of the path forecasters, and calibrators for the live forecast.

    python backtest.py --csv bars.csv --start 2025-05-05 --end 2025-06-30 --every 10 --out outputs/backtest
    python backtest.py --csv bars.csv --kronos name=kronos_p09,top_p=0.9 --kronos name=kronos_p10,top_p=1.0
    python backtest.py --csv bars.csv --fit-run-log outputs/runs_QQQ.csv --out outputs/cal
    python backtest.py --symbols QQQ,SPY,IWM --data-dir bars/ --start 2025-05-05 --end 2025-06-30 --ray

Every origin is replayed through the forecast pipeline the CLI uses (same data preparation, horizon plan, metrics
and seeding rule); settings come from config.yaml and the same flags, plus the backtest's own. Rerunning the
same command resumes an interrupted run. With --symbols, each symbol runs in its own folder under --out and the
report pools them; with --ray, the work is spread over a Ray cluster with the same results. Exit codes as the
forecast CLI's (README).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from app.config import (ConfigError, add_config_flags, load_config, overrides_from_args,
                        parse_setting_spec, script_parser)
from app.exits import ExitCode
from app.operation import install_program_handlers, report_failure
from app.paths import check_input_file, check_out_dir
from app.yamlfile import load_yaml, yaml_problem

log = logging.getLogger("backtest")
DEFAULT_CONFIG = Path(__file__).resolve().parent / "config.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = script_parser(__doc__, DEFAULT_CONFIG, "the forecast CLI's settings and the backtest's own")
    p.add_argument("--kronos", action="append", default=[], metavar="SPEC",
                   help="a Kronos setting, e.g. name=k_p10,top_p=1.0,time_label=end (config keys: model, "
                        "tokenizer, top_p, top_k, temperature, lookback, time_label, max_context...); repeatable")
    p.add_argument("--kronos-settings", type=Path, help="YAML list of such settings (mappings)")
    p.add_argument("--out", type=Path, default=Path("outputs/backtest"), help="results and report folder")
    p.add_argument("--fresh", action="store_true", help="discard earlier results in --out instead of resuming")
    p.add_argument("--fit-run-log", type=Path, help="only fit a calibrator from the forecast CLI's run log")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    add_config_flags(p, script="backtest", skip=("out",))
    return p.parse_args(argv)


def kronos_settings(args: argparse.Namespace, forecasters: list[str]) -> list[dict[str, Any]]:
    """Each Kronos setting as config keys (validated by the key table) plus its name."""
    from evaluation.forecasters import KRONOS_KEYS

    specs: list[dict[str, Any]] = [{"name": "kronos"}] if "kronos" in forecasters else []
    specs += [parse_setting_spec(text, KRONOS_KEYS) for text in args.kronos]
    if args.kronos_settings:
        try:
            listed = load_yaml(args.kronos_settings.read_text()) or []  # a key given twice is an error
        except OSError as exc:
            raise ConfigError(f"--kronos-settings {args.kronos_settings}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--kronos-settings {args.kronos_settings} is {yaml_problem(exc)}") from None
        if not isinstance(listed, list) or not all(isinstance(s, dict) for s in listed):
            raise ConfigError(f"--kronos-settings {args.kronos_settings} must be a YAML list of mappings")
        specs += [parse_setting_spec(",".join(f"{k}={v}" for k, v in s.items()), KRONOS_KEYS) for s in listed]
    return specs


def fit_run_log(args: argparse.Namespace, cfg: Any) -> int:
    from evaluation.calibration import fit_from_run_log
    from evaluation.universe import load_symbol
    from forecast.pipeline import ForecastPipeline
    from forecast.runlog import read_run_log

    asof = pd.to_datetime(read_run_log(args.fit_run_log)["asof"], utc=True).dt.tz_convert("America/New_York")
    cfg = cfg.replace(start=cfg.start or asof.min().date().isoformat(), end=cfg.end or asof.max().date().isoformat())
    frame, _ = load_symbol(cfg)
    calibrator = fit_from_run_log(args.fit_run_log, frame, ForecastPipeline(cfg, calibrator=None),
                                  symbol=cfg.symbol, horizon_min=cfg.horizon, isotonic_min=cfg.isotonic_min)
    args.out.mkdir(parents=True, exist_ok=True)
    path = calibrator.save(args.out / f"calibrator_{cfg.symbol}_runlog.json")
    print(f"{path}: p_up {calibrator.p_up.method} on {calibrator.p_up.n} outcomes, bands on {calibrator.bands.n}")
    return ExitCode.OK


def backtest_config(args: argparse.Namespace) -> Any:
    """config.yaml and the flags; a fixed seed and no calibrator, so that a backtest is reproducible."""
    overrides = overrides_from_args(args)
    overrides.pop("out", None)  # --out here is the backtest's folder, not the forecast's
    cfg = load_config(args.config, overrides, script="backtest")
    return cfg.replace(seed=0 if cfg.seed is None else cfg.seed, calibrator=None)


def run_universe(args: argparse.Namespace, cfg: Any, names: list[str], specs: list[dict]) -> int:
    """--symbols: every usable symbol in out/<SYMBOL>/; the pooled report."""
    from evaluation.jobs import SymbolJob, run_jobs
    from evaluation.universe import load_universe
    from evaluation.universe_report import build_universe_report, universe_console
    from marketdata.frame import DataError

    loaded = load_universe(cfg, cfg.symbols, Path(cfg.data_dir) if cfg.data_dir else None, Path(cfg.bars_cache))
    left_out = {sd.symbol: sd.problem for sd in loaded if sd.problem}
    jobs = [SymbolJob(sd.symbol, sd.frame, args.out / sd.symbol, cfg.replace(symbol=sd.symbol), sd.data)
            for sd in loaded if not sd.problem]
    if not jobs:
        raise DataError("no symbol has usable bars: " + "; ".join(f"{s}: {w}" for s, w in left_out.items()))
    by_symbol, execution = run_jobs(jobs, cfg, names, specs, progress=not args.no_progress, fresh=args.fresh,
                                    root=args.out)
    report = build_universe_report(by_symbol, {j.symbol: j.cfg for j in jobs}, args.out,
                                   {j.symbol: j.data for j in jobs}, left_out, plots=not args.no_plots,
                                   execution=execution)
    print(universe_console(report))
    print(f"report: {args.out / 'report.json'} (pooled; each symbol's in its folder); "
          f"per origin: {args.out / 'per_origin.csv'}")
    return ExitCode.OK


def run(args: argparse.Namespace) -> int:
    from evaluation import report as rep
    from evaluation.forecasters import forecaster_names
    from evaluation.jobs import BACKTEST, SymbolJob, run_jobs
    from evaluation.universe import load_symbol
    from forecast.owned import check, claim

    cfg = backtest_config(args)
    check_out_dir(args.out)  # every path is checked before anything is read or made
    check(args.out, BACKTEST)  # only our own files are ever replaced or deleted in --out (exit 2 otherwise)
    if args.fit_run_log:
        check_input_file(args.fit_run_log, "--fit-run-log")
        claim(args.out, BACKTEST)
        return fit_run_log(args, cfg)
    specs = kronos_settings(args, cfg.forecasters)
    names = [n for n in cfg.forecasters if n != "kronos"]
    forecaster_names(names, specs)  # known baselines, no name twice
    lookback = max([cfg.lookback] + [s.get("lookback", cfg.lookback) for s in specs])
    cfg = cfg.replace(lookback=lookback)  # every forecaster sees the origins the longest context allows
    if cfg.symbols:
        return run_universe(args, cfg, names, specs)
    frame, data = load_symbol(cfg)
    by_symbol, _ = run_jobs([SymbolJob(cfg.symbol, frame, args.out, cfg, data)], cfg, names, specs,
                            progress=not args.no_progress, fresh=args.fresh, root=args.out)
    report = rep.build_report(by_symbol[cfg.symbol], cfg, args.out, data, plots=not args.no_plots)
    print(rep.console_table(report))
    print(f"report: {args.out / 'report.json'}; per origin: {args.out / 'per_origin.csv'}; "
          f"calibrators: {', '.join(report['calibrators'].values())}")
    return ExitCode.OK


def main(argv: list[str] | None = None, program: bool = False) -> int:
    args = parse_args(argv)
    if program:
        install_program_handlers()
    try:
        return run(args)
    except BaseException as exc:  # noqa: BLE001 - one line and a documented code; our own bugs keep the traceback
        return report_failure(exc, log, interrupted="rerun the same command to resume")


if __name__ == "__main__":
    sys.exit(main(program=True))
