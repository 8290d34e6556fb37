#!/usr/bin/env python3
"""Walk-forward backtest of the QQQ path forecasters, and calibrators for the live forecast.

    python backtest.py --csv bars.csv --start 2025-05-05 --end 2025-06-30 --every 10 --out outputs/backtest
    python backtest.py --csv bars.csv --kronos name=kronos_p09,top_p=0.9 --kronos name=kronos_p10,top_p=1.0
    python backtest.py --csv bars.csv --fit-run-log outputs/runs_QQQ.csv --out outputs/cal

Data, calendar, preprocessing (prepare_bars), horizon planning, metrics and atomic writes are the forecast
CLI's own (market/*); settings default to config.yaml. Rerunning the same command resumes an interrupted run.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from market import backtest as bt
from market import baselines
from market import calendar as mcal
from market.config import Config, ConfigError, load_config
from market.operation import ExitCode

log = logging.getLogger("backtest")
DEFAULT_CONFIG = Path(__file__).resolve().parent / "config.yaml"
BASELINES = {"random_walk": baselines.RandomWalk, "block_bootstrap": baselines.BlockBootstrap}
if baselines.arch_model is not None:
    BASELINES["garch"] = baselines.Garch
SPEC_TYPES = {"top_p": float, "top_k": int, "temperature": float, "lookback": int, "max_context": int}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None,
                   help="the forecast CLI's settings (symbol, days, rth, csv, model, sampling...); default: "
                        "config.yaml beside this script")
    p.add_argument("--csv", help="bars file (CSV or Parquet); without it, Alpaca (keys from the environment)")
    p.add_argument("--start", help="first session, YYYY-MM-DD (default: the data's first)")
    p.add_argument("--end", help="last session, YYYY-MM-DD (default: the data's last)")
    p.add_argument("--every", type=int, default=10, help="minutes between origins (default 10)")
    p.add_argument("--n-paths", type=int, help="paths per forecast (default: config n_samples)")
    p.add_argument("--forecasters", default=",".join(BASELINES),
                   help=f"comma list of {', '.join(BASELINES)}, kronos (the config's model and sampling)")
    p.add_argument("--kronos", action="append", default=[], metavar="SPEC",
                   help="a Kronos setting, e.g. name=k_p10,top_p=1.0,time_label=end (keys: name, model, tokenizer, "
                        "top_p, top_k, temperature, lookback, time_label, max_context); repeatable")
    p.add_argument("--kronos-settings", type=Path, help="YAML list of such settings (mappings)")
    p.add_argument("--out", type=Path, default=Path("outputs/backtest"))
    p.add_argument("--fresh", action="store_true", help="discard earlier results in --out instead of resuming")
    p.add_argument("--batch", type=int, default=16, help="origins per batch (Kronos samples a batch at once)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rule-p-up", type=float, default=0.60)
    p.add_argument("--rule-z", type=float, default=-1.0, help="enter only when zscore_mid <= this")
    p.add_argument("--stop-bp", type=float, default=25.0)
    p.add_argument("--fee-bp", type=float, default=0.5, help="per side")
    p.add_argument("--slippage-bp", type=float, default=1.0, help="per side")
    p.add_argument("--refit-every", type=int, default=50, help="refit the walk-forward calibrators every n outcomes")
    p.add_argument("--isotonic-min", type=int, default=500, help="outcomes before isotonic replaces Platt")
    p.add_argument("--fit-run-log", type=Path, help="only fit a calibrator from the forecast CLI's run log")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def load_frame(cfg: Config, csv: str | None, start: str | None, end: str | None) -> tuple[pd.DataFrame, dict]:
    """All bars of the sessions start..end (New York dates) and the history before them, from the file or from
    Alpaca, with what identifies them for a resume."""
    from market.bars import AlpacaBarSource, DataError, credentials_from_env, read_bars_file

    path = csv or (cfg.csv if cfg.source == "csv" else None)
    if path:
        frame = read_bars_file(path, tz=cfg.csv_tz, label=cfg.csv_label)
        return frame, {"source": "csv", "file": os.path.abspath(path), "bytes": os.path.getsize(path)}
    if start is None or end is None:
        raise DataError("with Alpaca, give --start and --end")
    creds = credentials_from_env(os.environ)
    if creds is None:
        raise DataError("no bars file and no Alpaca keys (ALPACA_KEY_ID / ALPACA_SECRET_KEY)")
    cal = mcal.xnys()
    first_open = mcal.session_window(cal.date_to_session(mcal.to_session_label(start), "next"), cfg.rth)[0]
    first = mcal.recent_sessions(first_open, cfg.days + 1, cfg.rth)[0]  # history for the first origins too
    lo = mcal.session_window(first, cfg.rth)[0]
    hi = mcal.session_window(cal.date_to_session(mcal.to_session_label(end), "previous"), cfg.rth)[1]
    source = AlpacaBarSource(creds.key_id, creds.secret_key, feed=cfg.feed,
                             url_override=os.environ.get("ALPACA_DATA_URL") or None)  # as the forecast CLI
    frame = source.fetch(cfg.symbol, lo, hi)
    return frame, {"source": "alpaca", "symbol": cfg.symbol, "feed": cfg.feed, "from": lo.isoformat(),
                   "to": hi.isoformat()}


def kronos_specs(args: argparse.Namespace, cfg: Config) -> list[dict[str, Any]]:
    specs: list[dict[str, Any]] = []
    if "kronos" in args.forecasters.split(","):
        specs.append({"name": "kronos"})
    for text in args.kronos:
        try:
            spec = dict(item.split("=", 1) for item in text.split(",") if item)
            specs.append({k: SPEC_TYPES.get(k, str)(v) for k, v in spec.items()})
        except ValueError:
            raise ConfigError(f"--kronos {text!r}: expected key=value pairs separated by commas, "
                              "e.g. name=k_p10,top_p=1.0") from None
    if args.kronos_settings:
        specs += list(yaml.safe_load(args.kronos_settings.read_text()) or [])
    for i, spec in enumerate(specs):
        spec.setdefault("name", f"kronos_{i + 1}")
        for key in ("model", "tokenizer", "top_p", "top_k", "temperature", "lookback", "time_label", "max_context"):
            spec.setdefault(key, getattr(cfg, key))
    return specs


def build_forecasters(args: argparse.Namespace, cfg: Config) -> list[Any]:
    names = [n for n in args.forecasters.split(",") if n and n != "kronos"]
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise SystemExit(f"unknown forecaster(s) {unknown}; choose from {list(BASELINES)} or kronos")
    out: list[Any] = [BASELINES[n]() for n in names]
    samplers: dict[tuple, Any] = {}
    for spec in kronos_specs(args, cfg):
        from kronos import KronosPathSampler

        key = (spec["model"], spec["tokenizer"], spec["max_context"])
        if key not in samplers:  # settings of one checkpoint share its weights
            samplers[key] = KronosPathSampler.from_pretrained(
                model=spec["model"], tokenizer=spec["tokenizer"], device=None if cfg.device == "auto" else cfg.device,
                max_context=spec["max_context"], model_revision=cfg.model_revision,
                tokenizer_revision=cfg.tokenizer_revision, dtype=cfg.dtype)
        out.append(bt.KronosForecaster(spec["name"], samplers[key], spec["lookback"], spec["time_label"],
                                       spec["temperature"], spec["top_k"], spec["top_p"],
                                       spec={"model": str(spec["model"]), "tokenizer": str(spec["tokenizer"])}))
    return out


def settings_from(args: argparse.Namespace, cfg: Config, forecasters: list[Any]) -> bt.Settings:
    lookbacks = [f.lookback for f in forecasters if isinstance(f, bt.KronosForecaster)]
    return bt.Settings(
        symbol=cfg.symbol, horizon=cfg.horizon, every=args.every, start=args.start, end=args.end,
        n_paths=args.n_paths or cfg.n_samples, seed=args.seed, days=cfg.days, rth=cfg.rth, near_close=cfg.near_close,
        min_horizon=cfg.min_horizon, min_history=max([cfg.lookback] + lookbacks), recent_window=cfg.recent_window,
        max_recent_filled=cfg.max_recent_filled, mid_window=cfg.mid_window, mid_kind=cfg.mid_kind,
        vol_window=cfg.vol_window, vwap_mode=cfg.vwap_mode, batch=args.batch, refit_every=args.refit_every,
        isotonic_min=args.isotonic_min, rule_p_up=args.rule_p_up, rule_z=args.rule_z, rule_stop_bp=args.stop_bp,
        fee_bp=args.fee_bp, slippage_bp=args.slippage_bp)


def fit_run_log(args: argparse.Namespace, cfg: Config) -> int:
    from market.calibration import fit_from_run_log

    log_df = pd.read_csv(args.fit_run_log, usecols=["asof"])
    asof = pd.to_datetime(log_df["asof"], utc=True).dt.tz_convert("America/New_York")
    frame, _ = load_frame(cfg, args.csv, asof.min().date().isoformat(), asof.max().date().isoformat())
    calibrator = fit_from_run_log(args.fit_run_log, frame, symbol=cfg.symbol, horizon_min=cfg.horizon,
                                  isotonic_min=args.isotonic_min)
    path = calibrator.save(args.out / f"calibrator_{cfg.symbol}_runlog.json")
    print(f"{path}: p_up {calibrator.p_up.method} on {calibrator.p_up.n} outcomes, bands on {calibrator.bands.n}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit codes as the forecast CLI's: 2 bad input or another run in --out, 4 data source, 5 model, 130 Ctrl-C."""
    from kronos import CheckpointError
    from market.bars import DataError, DataSourceError, NoDataError

    try:
        return run(parse_args(argv))
    except (ConfigError, DataError, NoDataError, bt.RunMismatch) as exc:
        code, text = ExitCode.BAD_INPUT, str(exc)
    except DataSourceError as exc:
        code, text = ExitCode.DATA_SOURCE, str(exc)
    except CheckpointError as exc:
        code, text = ExitCode.MODEL, str(exc)
    except KeyboardInterrupt:
        code, text = ExitCode.INTERRUPTED, "interrupted; rerun the same command to resume"
    print(f"backtest: {text}", file=sys.stderr)
    return int(code)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    overrides = {"csv": args.csv, "source": "csv" if args.csv else None}
    cfg = load_config(args.config, {k: v for k, v in overrides.items() if v is not None})
    args.out.mkdir(parents=True, exist_ok=True)
    if args.fit_run_log:
        return fit_run_log(args, cfg)
    if args.fresh:
        for name in (bt.RESULTS, bt.RUN_FILE):
            (args.out / name).unlink(missing_ok=True)
    frame, data = load_frame(cfg, args.csv, args.start, args.end)
    forecasters = build_forecasters(args, cfg)
    settings = settings_from(args, cfg, forecasters)
    log.info("%d bars; forecasters %s; results in %s", len(frame), [f.name for f in forecasters], args.out)
    records = bt.run_walk_forward(frame, settings, forecasters, args.out, data, progress=not args.no_progress)
    report = bt.build_report(records, settings, args.out, data, plots=not args.no_plots)
    print(bt.console_table(report))
    print(f"report: {args.out / 'report.json'}; per origin: {args.out / 'per_origin.csv'}; "
          f"calibrators: {', '.join(report['calibrators'].values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
