"""The report of a many-symbol backtest: each symbol's own report in its folder, and every score pooled over the
symbols in the run's folder, each with its number of independent windows; symbols left out, with the reason."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from evaluation import report as rep
from forecast.artifacts import atomic_write_json

Records = dict[tuple[str, str], dict[str, Any]]


def pooled_records(by_symbol: dict[str, Records]) -> Records:
    """All symbols' records in one set, each tagged with its symbol (an origin recurs once per symbol)."""
    return {(name, f"{sym} {origin}"): {**rec, "symbol": sym}
            for sym, records in by_symbol.items() for (name, origin), rec in records.items()}


def build_universe_report(by_symbol: dict[str, Records], settings: dict[str, Any], out_dir: Path,
                          data: dict[str, dict[str, Any]], left_out: dict[str, str], plots: bool = True,
                          execution: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per-symbol reports (``out_dir/<SYMBOL>/``) and the pooled one (``out_dir``), joined in out_dir/report.json:
    the pooled scores at the top level as in a one-symbol report, ``by_symbol`` with each symbol's scores."""
    per: dict[str, Any] = {}
    for sym, records in by_symbol.items():
        if not any(name != rep.SKIP and "error" not in r for (name, _), r in records.items()):
            left_out[sym] = "no forecast records (every origin skipped or failed)"
            continue
        r = rep.build_report(records, settings[sym], out_dir / sym, data[sym], plots=plots)
        per[sym] = {"folder": sym, "independent_windows": r["independent_windows"],
                    "first_origin": r["first_origin"], "last_origin": r["last_origin"],
                    "skipped_origins": r["skipped_origins"], "failed_forecasts": r["failed_forecasts"],
                    "forecasters": r["forecasters"]}
    if not per:
        raise ValueError("no symbol has forecast records to report on")
    first = settings[next(iter(per))]
    pooled_cfg = first.replace(symbol="+".join(per))
    pooled = rep.build_report(pooled_records({s: by_symbol[s] for s in per}), pooled_cfg, out_dir,
                              {s: data[s] for s in per}, plots=plots)
    pooled["symbols"] = list(per)
    pooled["by_symbol"] = per
    pooled["left_out_symbols"] = dict(left_out)
    if execution:
        pooled["execution"] = execution
    atomic_write_json(out_dir / "report.json", rep.jsonable(pooled))
    return pooled


def universe_console(report: dict[str, Any]) -> str:
    """The forecasters' table for each symbol, then pooled, each with its independent windows."""
    blocks = []
    for sym, r in report["by_symbol"].items():
        blocks.append(f"== {sym} ==\n" + rep.console_table({**r, "settings": report["settings"]}))
    blocks.append(f"== pooled: {', '.join(report['symbols'])} ==\n" + rep.console_table(report))
    for sym, why in report["left_out_symbols"].items():
        blocks.append(f"left out {sym}: {why}")
    return "\n\n".join(blocks)
