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
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from market.config import Config, ConfigError, add_config_flags, load_config, overrides_from_args
from market.operation import (ExitCode, RunError, Skipped, exit_on_sigterm, run_lock, setup_logging,
                              time_budget)

log = logging.getLogger("kronos_prob")
DEFAULT_CONFIG = Path(__file__).resolve().parent / "config.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None,
                        help=f"YAML settings (default: {DEFAULT_CONFIG.name} beside this script)")
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


def parse_asof(text: str | None) -> pd.Timestamp | None:
    if text is None:
        return None
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError):
        raise ConfigError(f"--asof must be an ISO 8601 time like 2025-06-02T14:00:00Z, got {text!r}") from None
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


@dataclass
class Forecast:
    summary: dict
    bars: pd.DataFrame
    times: pd.DatetimeIndex
    paths: np.ndarray  # [N, H, 6], repaired


def forecast(cfg: Config, asof: pd.Timestamp | None, cron: bool) -> Forecast:
    """One run's work, under the time budget: bars -> N paths -> metrics. Writes nothing."""
    # Imported here so that bad arguments fail fast, before torch and the calendars load.
    from market import calendar as mcal
    from market.horizon import events_in_window, model_time_index, plan_horizon
    from market.metrics import compute_metrics, repair_paths
    from market.sources import load_recent_bars
    from market.summary import build_summary

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    if asof is None and cfg.source == "alpaca":
        asof = pd.Timestamp.now(tz="UTC").floor("s")
    if asof is not None:
        skip_if_closed(mcal.market_status(asof, cfg.rth), cron)

    recent = load_recent_bars(cfg.source, cfg.symbol, asof, cfg.days, cfg.rth, csv=cfg.csv, csv_tz=cfg.csv_tz,
                              csv_label=cfg.csv_label, feed=cfg.feed, sip_fallback=cfg.sip_fallback,
                              recent_window=cfg.recent_window, max_recent_filled=cfg.max_recent_filled,
                              url_override=os.environ.get("ALPACA_DATA_URL") or None)
    now, bars = recent.now, recent.bars
    status = mcal.market_status(now, cfg.rth)
    skip_if_closed(status, cron)
    if recent.info.skip_reason:
        raise Skipped(recent.info.skip_reason)
    if len(bars) < cfg.lookback:
        raise Skipped(f"only {len(bars)} bars in the last {cfg.days} session(s), the lookback needs "
                      f"{cfg.lookback}: raise days or lower lookback")
    timings["data"] = time.perf_counter() - t0

    plan = plan_horizon(bars.index[-1], cfg.horizon, cfg.rth, cfg.near_close, cfg.min_horizon)
    notes = list(plan.notes)
    if not status.is_open and not plan.next_session:
        notes.insert(0, f"{status.describe()}: forecast from the last close")
    if recent.provenance.get("note"):
        notes.append(recent.provenance["note"])
    events = events_in_window(now, plan.times, cfg.events, cfg.event_before, cfg.event_after)
    if events and cfg.event_action == "skip":
        raise Skipped(f"inside the quiet window of event(s) {', '.join(events)} (event_action: skip)")

    t1 = time.perf_counter()
    sampler = load_sampler(cfg)
    timings["model_load"] = time.perf_counter() - t1

    context = bars.iloc[-cfg.lookback:]
    t2 = time.perf_counter()
    paths = sampler.sample(context, model_time_index(context.index, cfg.time_label),
                           model_time_index(plan.times, cfg.time_label), n_paths=cfg.n_samples,
                           temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed)
    timings["sample"] = time.perf_counter() - t2
    if not np.isfinite(paths).all():
        raise ModelError(f"the model produced {int((~np.isfinite(paths)).sum())} non-finite values; "
                         "the checkpoint or the dtype may be broken")

    now_close = float(bars["close"].iloc[-1])
    metrics = compute_metrics(paths, bars, now_close, percentiles=cfg.percentiles, mid_window=cfg.mid_window,
                              mid_kind=cfg.mid_kind, vol_window=cfg.vol_window, vwap_mode=cfg.vwap_mode,
                              new_session=plan.next_session)
    repaired, _ = repair_paths(paths)
    calibrated = apply_calibrator(cfg.calibrator, metrics, repaired[:, :, 3], cfg.percentiles, notes)
    engine = {"model": cfg.model, "model_revision": sampler.model_revision or cfg.model_revision,
              "tokenizer": cfg.tokenizer, "tokenizer_revision": sampler.tokenizer_revision or cfg.tokenizer_revision,
              "device": str(sampler.device), "dtype": cfg.dtype, "max_context": sampler.max_context}
    timings["total"] = time.perf_counter() - t0
    summary = build_summary(cfg=cfg, now=now, bars=bars, times=plan.times, metrics=metrics,
                            calibrated=calibrated, notes=notes, events=events, engine=engine,
                            provenance=recent.provenance, timings=timings, market_open=status.is_open)
    log.info("forecast in %.2f s (data %.2f, model load %.2f, sampling %.2f)", timings["total"],
             timings["data"], timings["model_load"], timings["sample"])
    return Forecast(summary=summary, bars=bars, times=plan.times, paths=repaired)


def write_outputs(cfg: Config, result: Forecast) -> None:
    """Every file atomically; the timestamped files first, the _latest copies, the run log, the chart."""
    from market.artifacts import append_run_log, artifact_stamp, write_run_artifacts
    from market.summary import log_row

    out = Path(cfg.out)
    stamp = artifact_stamp(pd.Timestamp(result.summary["asof"]).to_pydatetime())
    files = write_run_artifacts(out, cfg.symbol, stamp, result.summary, result.paths, result.times)
    append_run_log(out / f"runs_{cfg.symbol}.csv", log_row(result.summary, files["summary"].name))
    log.info("wrote %s", files["summary"])
    if cfg.plot:
        from market.plotting import fan_chart

        png = out / f"fan_{cfg.symbol}_{stamp}.png"
        fan_chart(result.bars, result.times, result.paths[:, :, 3], result.summary, png)
        log.info("wrote %s", png)


def skip_if_closed(status, cron: bool) -> None:
    if cron and not status.is_open:
        raise Skipped(f"{status.describe()}; nothing to do under --cron")


def load_sampler(cfg: Config):
    """The Kronos engine; any failure to find or fit the weights is a model error (exit 5)."""
    import torch

    from kronos import CheckpointError, KronosPathSampler

    device = None if cfg.device == "auto" else cfg.device
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device' is {cfg.device}, but this PyTorch ({torch.__version__}) sees no "
                          "CUDA GPU: use device auto or cpu, or run setup_venv.sh on the GPU machine")
    if cfg.device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("config key 'device' is mps, but this machine has no Apple GPU: use auto or cpu")
    try:
        return KronosPathSampler.from_pretrained(
            model=cfg.model, tokenizer=cfg.tokenizer, device=device, max_context=cfg.max_context,
            model_revision=cfg.model_revision, tokenizer_revision=cfg.tokenizer_revision, dtype=cfg.dtype)
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None


class ModelError(RunError):
    exit_code = ExitCode.MODEL


def apply_calibrator(path: str | None, metrics: dict, close_paths: np.ndarray, percentiles: list,
                     notes: list[str]) -> dict | None:
    """Calibrated values beside the raw ones, when a calibrator fitted by backtest.py is configured."""
    if not path:
        return None
    from market.calibration import load_calibrator

    try:
        calibrator = load_calibrator(path)
    except FileNotFoundError:
        raise ConfigError(f"config key 'calibrator': file not found: {path}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"config key 'calibrator': {path} is not a calibrator file ({exc})") from None
    h = metrics["horizon_min"]
    if calibrator.horizon_min != h:
        notes.append(f"calibrator fitted for {calibrator.horizon_min}-minute forecasts; not applied to this "
                     f"{h}-minute one")
        return None
    levels = tuple(q / 100 for q in percentiles)
    both = calibrator.side_by_side(metrics[f"p_up_{h}m"], metrics["now_close"], close_paths,
                                   p_hit_vwap=metrics.get(f"p_hit_vwap_{h}m"), levels=levels)
    calibrated = {f"p_up_{h}m": both["p_up_cal"], "method": both["p_up_method"], "calibrator": str(path),
                  "percentiles": {key: band for key, band in zip(metrics["percentiles"], both["bands_cal"])}}
    if "p_hit_vwap_cal" in both:
        calibrated[f"p_hit_vwap_{h}m"] = both["p_hit_vwap_cal"]
    return calibrated


def exit_code_for(exc: BaseException) -> ExitCode:
    """Map every expected failure to its documented exit code."""
    from market.bars import DataError, DataSourceError, NoDataError

    if isinstance(exc, RunError):
        return exc.exit_code
    if isinstance(exc, (ConfigError, DataError, ValueError)):
        return ExitCode.BAD_INPUT
    if isinstance(exc, NoDataError):
        return ExitCode.SKIPPED
    if isinstance(exc, (DataSourceError, ConnectionError, TimeoutError)):
        return ExitCode.DATA_SOURCE
    return ExitCode.INTERNAL


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(verbose=args.verbose, quiet=args.quiet)
    warnings.filterwarnings("ignore", message="Series.values returning an ndarray")
    exit_on_sigterm()
    try:
        config_path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
        cfg = load_config(config_path, overrides_from_args(args))
        asof = parse_asof(args.asof)
        lock = Path(cfg.out) / f".run_{cfg.symbol}.lock"
        with run_lock(lock):
            with time_budget(cfg.time_budget):
                result = forecast(cfg, asof, args.cron)
            write_outputs(cfg, result)
    except KeyboardInterrupt:
        log.error("interrupted; nothing half-written was left behind")
        return ExitCode.INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every failure ends in one line and a documented code
        code = exit_code_for(exc)
        if code == ExitCode.INTERNAL:
            log.exception("unexpected error (a bug; please report it with this traceback)")
        elif code == ExitCode.SKIPPED:
            log.warning("skipped: %s", exc)
        else:
            log.error("%s", exc)
        return code
    from market.summary import console_text

    print(json.dumps(result.summary, indent=2) if args.json else console_text(result.summary))
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
