"""The run's summary: the JSON document and the short console text."""
from __future__ import annotations

from typing import Any

import pandas as pd

from forecast.artifacts import iso_utc
from forecast.extended import note_of
from forecast.metrics import Metrics

NEW_YORK = "America/New_York"
HISTORY_FOR_PLOT = 120  # closes kept in the summary so plot_paths.py can draw recent history


def build_summary(*, cfg: Any, ctx: Any, metrics: Metrics, calibrated: dict[str, Any] | None, notes: list[str],
                  engine: dict[str, Any], provenance: dict[str, Any], timings: dict[str, float],
                  market_open: bool, sampling: dict[str, Any] | None = None,
                  vs_ext: dict[str, float] | None = None) -> dict[str, Any]:
    """The pred_summary JSON: the original plan's fields first, then everything needed to audit the run.
    ``n_samples`` is the number of paths drawn; ``sampling`` says how that number was reached (n_samples: auto);
    ``vs_ext``: P(up) and the mean return against the latest extended-hours price (forecast.extended)."""
    bars, times, now = ctx.bars, ctx.times, ctx.now
    h = len(times)
    recent = bars.iloc[-HISTORY_FOR_PLOT:]
    flat = metrics.to_dict()
    first = (f"p_up_{h}m", f"p_up_{h}m_ci", f"exp_ret_{h}m", f"exp_ret_{h}m_se", "percentiles", "percentiles_ci")
    summary_block = {key: flat[key] for key in first}
    summary_block.update({k: v for k, v in flat.items() if k not in summary_block})
    ext = getattr(ctx, "extended", None)
    summary_block.update(vs_ext or {})  # beside the values against the regular close the paths start from
    return {
        "symbol": cfg.symbol,
        "now_close": ctx.now_close,
        "n_samples": metrics.n_paths,
        "temp": cfg.temperature,
        "top_p": cfg.top_p,
        "top_k": cfg.top_k,
        "horizon_min": h,
        "horizon_requested_min": cfg.horizon,
        "asof": now.isoformat().replace("+00:00", "Z"),
        "asof_new_york": now.tz_convert(NEW_YORK).isoformat(),
        "last_bar": bars.index[-1].isoformat().replace("+00:00", "Z"),
        "forecast_start": times[0].isoformat().replace("+00:00", "Z"),
        "forecast_start_new_york": times[0].tz_convert(NEW_YORK).isoformat(),
        "extended_hours": None if ext is None else ext.to_dict(),
        "market_open": market_open,
        "notes": notes,
        "events_in_window": list(ctx.events),
        "future_times": iso_utc(times),
        "summary": summary_block,
        "calibrated": calibrated,
        "sampling": sampling or {"n_samples": cfg.n_samples, "stopped": "fixed"},
        "model": engine,
        "seed": cfg.seed,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "data": provenance,
        "history": {"times": iso_utc(recent.index), "close": [float(x) for x in recent["close"]]},
        "settings": {"lookback": cfg.lookback, "days": cfg.days, "rth": cfg.rth, "time_label": cfg.time_label,
                     "percentiles": cfg.percentiles, "vwap_mode": cfg.vwap_mode, "mid_kind": cfg.mid_kind,
                     "mid_window": cfg.mid_window, "vol_window": cfg.vol_window},
    }


def console_text(summary: dict[str, Any]) -> str:
    """A few lines a trader reads at a glance."""
    h = summary["horizon_min"]
    m = summary["summary"]
    close = summary["now_close"]
    pct = m["percentiles"]
    band_ci = m.get("percentiles_ci") or {}
    band = " / ".join(f"{k} {v[-1]:.2f}{_range(band_ci.get(k, [None])[-1])}" for k, v in pct.items())
    cal = summary.get("calibrated") or {}
    p_up = m[f"p_up_{h}m"]
    p_up_text = f"{p_up:.1%}{_pm(m.get(f'p_up_{h}m_ci'))}"
    if f"p_up_{h}m" in cal:
        p_up_text += f" (calibrated {cal[f'p_up_{h}m']:.1%}{_pm(cal.get(f'p_up_{h}m_ci'))})"
    when = pd.Timestamp(summary["asof"]).tz_convert(NEW_YORK).strftime("%Y-%m-%d %H:%M:%S %Z")
    se = m.get(f"exp_ret_{h}m_se")
    stopped = (summary.get("sampling") or {}).get("stopped", "fixed")
    drawn = (f"{summary['n_samples']} paths{'' if stopped == 'fixed' else f' (auto, stopped: {stopped})'}, "
             f"{h} min ahead")
    ext = summary.get("extended_hours")
    start = summary.get("forecast_start")
    start_text = "" if start is None else \
        f" from {pd.Timestamp(start).tz_convert(NEW_YORK).strftime('%H:%M %Z')}"
    if ext is None:
        lines = [f"{summary['symbol']} {close:.2f} at {when}, {drawn}{start_text} (± 95 % Monte Carlo error)"]
    else:  # the model's paths start from the regular close; the extended-hours price is the one trading now
        bar = pd.Timestamp(ext["bar"]).tz_convert(NEW_YORK)
        regular_end = pd.Timestamp(ext["regular_bar"]).tz_convert(NEW_YORK) + pd.Timedelta(minutes=1)
        lines = [f"{summary['symbol']} at {when}: {ext['session']} {ext['price']:.2f} ({bar:%H:%M} bar), "
                 f"{ext['gap_to_close']:+.2%} vs the regular close {close:.2f} ({regular_end:%Y-%m-%d %H:%M})",
                 f"  paths start from the regular close: {drawn}{start_text} (± 95 % Monte Carlo error)"]
        p_up_text += f" vs close, {m[f'p_up_{h}m_vs_ext']:.1%} vs {ext['session']} {ext['price']:.2f}"
    lines += [
        f"  P(up {h}m)        {p_up_text}",
        f"  expected return  {_bp(m[f'exp_ret_{h}m'], sign=True)} bp = {_dollars(m[f'exp_ret_{h}m'], close, sign=True)}"
        + ("" if se is None else f" (s.e. {_bp(se)} bp)"),
        f"  close in {h}m     {band}",
        f"  P(touch VWAP {_num(m.get('vwap'))})  {_pct(m.get(f'p_hit_vwap_{h}m'))}"
        f"{_pm(m.get(f'p_hit_vwap_{h}m_ci'))}   "
        f"P(touch mid {_num(m.get('mid_band'))})  {_pct(m.get(f'p_hit_mid_{h}m'))}{_pm(m.get(f'p_hit_mid_{h}m_ci'))}",
        _excursion_line("drawdown", [m.get(f"drawdown_p{q}_{h}m") for q in QUANTILES], close, -1),
        _excursion_line("run-up  ", [m.get(f"runup_p{q}_{h}m") for q in QUANTILES], close, +1),
    ]
    lines += _online_and_trust_lines(summary)
    told = note_of(ext) if ext is not None else None  # the header lines above say it already
    lines += [f"  note: {n}" for n in summary["notes"] if n != told]
    if summary["events_in_window"]:
        lines.append(f"  FLAG: event quiet window ({', '.join(summary['events_in_window'])})")
    return "\n".join(lines)


def _online_and_trust_lines(summary: dict[str, Any]) -> list[str]:
    """Online values beside the raw and walk-forward ones, and the trust status (forecast.online, forecast.trust)."""
    from forecast.trust import console_line

    h = summary["horizon_min"]
    on = summary.get("online") or {}
    out = []
    if on:
        band = " / ".join(f"{k} {v[-1]:.2f}" for k, v in on["percentiles"].items())
        out.append(f"  online           P(up) {on[f'p_up_{h}m']:.1%}, close in {h}m {band} "
                   f"({on['n_updates']} outcomes learnt)")
    line = console_line(summary.get("trust"))
    return out + ([line] if line else [])


QUANTILES = (50, 90, 95)  # the drawdown and run-up quantiles the console and the page show


def _excursion_line(name: str, values: list[Any], close: float, side: int) -> str:
    """'  drawdown p50/p90/p95  12.1 / 13.0 / 13.4 bp = $0.65 / $0.70 / $0.72 -> 533.63 / 533.58 / 533.56': each
    quantile in basis points, in dollars per share from the close the paths start at, and the price it reaches
    (a stop below for the drawdown, a target above for the run-up)."""
    def join(fmt: Any) -> str:
        return " / ".join("n/a" if v is None else fmt(v) for v in values)

    return (f"  {name} p50/p90/p95  {join(_bp)} bp = {join(lambda v: _dollars(v, close))} -> "
            f"{join(lambda v: f'{close * (1 + side * v):.2f}')}")


def _bp(x: Any, sign: bool = False) -> str:
    """A return in basis points to one decimal: the console's one precision for returns."""
    return "n/a" if x is None else f"{x * 1e4:{'+' if sign else ''}.1f}"


def _dollars(x: Any, close: float, sign: bool = False) -> str:
    """A return as dollars per share from ``close``, to the cent."""
    if x is None:
        return "n/a"
    v = x * close
    return f"{'-' if v < 0 else '+' if sign else ''}${abs(v):.2f}"


def _pct(x: Any) -> str:
    """A probability in percent to one decimal (returns are in basis points, prices to the cent)."""
    return "n/a" if x is None else f"{x:.1%}"


def _pm(ci: Any) -> str:
    """' ± 9.6' (percentage points, half the 95 % interval's width) for a probability's interval."""
    return "" if not ci or None in ci else f" ± {(ci[1] - ci[0]) * 50:.1f}"


def _range(ci: Any) -> str:
    """' [498.70-499.52]' for a price quantile's interval ('' where N paths cannot bound it)."""
    return "" if not ci or None in ci else f" [{ci[0]:.2f}-{ci[1]:.2f}]"


def _num(x: Any) -> str:
    return "n/a" if x is None else f"{x:.2f}"
