#!/usr/bin/env python3
"""The live service: the model loaded once, a forecast for every closed minute, the JSON in files, on Redis and
on a web page that updates itself.

    python serve.py                                   # live: Alpaca keys from the environment, page on :8765
    python serve.py --replay bars.csv --from 2025-06-02T13:30:00Z --speed 60    # offline, no keys
    python serve.py --symbols QQQ,SPY --redis-url redis://127.0.0.1:6379/0

Exit codes as in the README (0 stopped cleanly, 2 bad input, 4 data source, 5 model, 6 locked).
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from app.config import ConfigError, add_config_flags, load_config, overrides_from_args, parse_time, script_parser
from app.exits import ExitCode
from live.memory import bound_kernel_caches
from app.operation import install_program_handlers, interrupt_once, report_failure, run_lock

log = logging.getLogger("kronos_serve")
DEFAULT_CONFIG = Path(__file__).resolve().parent / "config.yaml"
MAX_SPEED = 100_000.0  # a whole session in a quarter of a second; beyond it the replay clock's arithmetic overflows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = script_parser(__doc__, DEFAULT_CONFIG)
    parser.add_argument("--replay", nargs="+", metavar="FILE", default=None,
                        help="play bars files as if live (one per symbol, in --symbols order) instead of Alpaca")
    parser.add_argument("--from", dest="replay_from", default=None, metavar="T",
                        help="replay start (ISO 8601; naive means UTC): bars before it are history "
                             "(default: the open of the file's last session)")
    parser.add_argument("--speed", type=float, default=60.0,
                        help="replay speed: market seconds per wall second (default 60: a minute a second)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only on stderr")
    parser.add_argument("--out", default=None, metavar="DIR", help="the service's folder for the CLI's files: "
                        "the same as --live-out (config.yaml's `out` stays cron's folder)")
    add_config_flags(parser, script="serve", skip=("out",))
    return parser.parse_args(argv)


def serve_overrides(args: argparse.Namespace) -> dict:
    """The flags as config overrides; --out on this command line is the service's own folder, live_out."""
    overrides = overrides_from_args(args)
    out = overrides.pop("out", None)
    if out is not None:
        if overrides.get("live_out") not in (None, out):
            raise ConfigError(f"--out {out} and --live-out {overrides['live_out']} name two folders for the "
                              "service's files; give one")
        overrides["live_out"] = out
    return overrides


def replay_of(args: argparse.Namespace, symbols: list[str], cfg=None):
    """--replay FILE..., or the config's bars file when source is csv (`--csv FILE` means the same here as in every
    script: bars come from that file, played as if live)."""
    from live.service import Replay

    if args.replay is None and cfg is not None and cfg.source == "csv":
        args.replay = [cfg.csv]
    elif args.replay is not None and cfg is not None and cfg.source == "csv" and args.replay != [cfg.csv]:
        raise ConfigError(f"--replay {' '.join(args.replay)} and --csv {cfg.csv} name different bars files: "
                          "give one of the two")
    if args.replay is None:
        if args.replay_from is not None:
            raise ConfigError("--from needs --replay FILE")
        return None
    if len(args.replay) != len(symbols):
        raise ConfigError(f"--replay got {len(args.replay)} file(s) for {len(symbols)} symbol(s) "
                          f"({', '.join(symbols)}); give one file per symbol")
    if not (math.isfinite(args.speed) and 0 < args.speed <= MAX_SPEED):
        raise ConfigError(f"--speed must be a number > 0 and at most {MAX_SPEED:g} (market seconds per wall "
                          f"second; 60 plays a minute a second), got {args.speed:g}")
    for path in args.replay:
        if not Path(path).is_file():
            raise ConfigError(f"--replay: file not found: {path}")
    start = None
    if args.replay_from is not None:
        start = parse_time(args.replay_from, "--from")
    return Replay(dict(zip(symbols, args.replay)), start, args.speed)


def main(argv: list[str] | None = None, program: bool = False) -> int:
    args = parse_args(argv)
    bound_kernel_caches()  # before torch runs a kernel: its caches read the bounds once (see live/memory.py)
    if program:
        install_program_handlers(verbose=args.verbose, quiet=args.quiet)
        interrupt_once(log)  # a second Ctrl-C or SIGTERM while stopping is told, not a traceback
    service = None
    failure: BaseException | None = None
    try:
        cfg = load_config(args.config, serve_overrides(args), script="serve")
        from live.service import Service, symbols_of
        from web.server import start_web

        service = Service(cfg, replay_of(args, symbols_of(cfg), cfg), start_web=start_web, run_lock=run_lock)
        service.start()
        service.wait()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (systemd's stop): a clean stop
        log.info("stopping")
    except BaseException as exc:  # noqa: BLE001 - every failure ends in one line and a documented code
        failure = exc
    if service is not None:
        try:
            service.close()
        except KeyboardInterrupt:  # the first signal came during a failure's shutdown: it still finishes
            service.close()
    return ExitCode.OK if failure is None else report_failure(failure, log)


if __name__ == "__main__":
    sys.exit(main(program=True))
