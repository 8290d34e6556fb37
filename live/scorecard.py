"""How the live forecasts have done: each published forecast kept as a record, its outcome filled in once its last
minute has a bar, and the day's reliability (Brier against the coin flip, band coverage against nominal).

Realised outcomes use the backtest's own rule (``evaluation.outcome.realised_outcome``); band scores use
``forecast.calibrator``; Brier and coverage ``evaluation.scoring``. Nothing here re-implements a market rule.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import pandas as pd

from evaluation.outcome import realised_outcome
from evaluation.scoring import band_coverage, brier_score
from forecast.calibrator import band_score, ensemble_centre_scale
from marketdata.calendar import to_utc

if TYPE_CHECKING:
    from forecast.pipeline import Context

log = logging.getLogger(__name__)
NEW_YORK = "America/New_York"
COIN_FLIP_BRIER = 0.25


def iso(t: pd.Timestamp | None) -> str | None:
    """ISO 8601 in UTC with a Z, as the JSON API writes times."""
    return None if t is None else to_utc(t).isoformat().replace("+00:00", "Z")


def num(x: Any) -> float | None:
    """A JSON-safe float: NaN and infinities become None (JSON has no NaN)."""
    return None if x is None or not math.isfinite(float(x)) else float(x)


@dataclass
class ForecastRecord:
    """One forecast as the history keeps it; ``outcome`` fills in once its last minute has a bar."""
    symbol: str
    asof: pd.Timestamp
    last_bar: pd.Timestamp
    times: pd.DatetimeIndex
    now_close: float
    horizon_min: int
    p_up: float | None
    p_up_cal: float | None
    band: dict[str, Any]            # lo/hi keys, nominal coverage, per-minute lo/hi (raw and calibrated)
    centre: np.ndarray              # ensemble log-return median and 10-90 scale per minute (band score)
    scale: np.ndarray
    settings: dict[str, Any]
    latency_s: float
    context: Context | None         # what the forecast saw: its prepared bars and plan (dropped once reconciled)
    outcome: dict[str, Any] | None = None
    unresolved: str | None = None   # why the outcome cannot be computed, if so
    online: dict[str, Any] | None = None  # the summary's online block (forecast.online), what it learns from
    trust: dict[str, Any] | None = None   # the summary's trust block (forecast.trust)

    def to_dict(self) -> dict[str, Any]:
        b = self.band
        return {"symbol": self.symbol, "asof": iso(self.asof), "last_bar": iso(self.last_bar),
                "horizon_min": self.horizon_min, "end": iso(self.times[-1]), "now_close": self.now_close,
                "p_up": self.p_up, "p_up_calibrated": self.p_up_cal,
                "p_up_online": num((self.online or {}).get(f"p_up_{self.horizon_min}m")),
                "p_up_interval": (self.trust or {}).get("p_up_interval_calibrated"),
                "trust": (self.trust or {}).get("status"), "edge": (self.trust or {}).get("edge"),
                "latency_s": round(self.latency_s, 4),
                "band": {"lo": b["lo_key"], "hi": b["hi_key"], "nominal": b["nominal"],
                         "lo_end": num(b["lo"][-1]), "hi_end": num(b["hi"][-1])},
                "outcome": self.outcome, "unresolved": self.unresolved}


def make_record(symbol: str, summary: dict, closes: np.ndarray, latency_s: float,
                context: Context) -> ForecastRecord:
    """A published forecast as the history keeps it: its band, centre and scale for the band score, settings."""
    times = pd.DatetimeIndex(pd.to_datetime(summary["future_times"], utc=True))
    h = int(summary["horizon_min"])
    block = summary["summary"]
    pct = block["percentiles"]
    keys = sorted(pct, key=lambda k: float(k[1:]))
    lo_key, hi_key = keys[0], keys[-1]
    cal = summary.get("calibrated") or {}
    cal_pct = cal.get("percentiles") or {}
    band = {"lo_key": lo_key, "hi_key": hi_key, "nominal": (float(hi_key[1:]) - float(lo_key[1:])) / 100,
            "lo": np.array(pct[lo_key], float), "hi": np.array(pct[hi_key], float),
            "lo_cal": np.array(cal_pct[lo_key], float) if lo_key in cal_pct else None,
            "hi_cal": np.array(cal_pct[hi_key], float) if hi_key in cal_pct else None}
    now_close = float(summary["now_close"])
    centre, scale = ensemble_centre_scale(closes, now_close)
    return ForecastRecord(symbol, to_utc(summary["asof"]), to_utc(summary["last_bar"]), times, now_close, h,
                   num(block.get(f"p_up_{h}m")), num(cal.get(f"p_up_{h}m")), band, centre, scale,
                   dict(summary.get("settings") or {}), latency_s, context, online=summary.get("online"),
                   trust=summary.get("trust"))



def reconcile(history: Iterable[ForecastRecord], raw: pd.DataFrame,
              on_outcome: Callable[[ForecastRecord, Any], None] | None = None) -> int:
    """Fill in the outcomes of the forecasts whose last minute now has a bar in ``raw``; -> how many.
    ``on_outcome(record, outcome)`` sees each as it resolves (the online calibration learns it)."""
    if raw.empty:
        return 0
    done = 0
    for r in history:
        if r.outcome is not None or r.unresolved or raw.index[-1] < r.times[-1]:
            continue
        try:  # the page's bookkeeping must never stop the bars reaching the forecasting loop
            ctx, r.context = r.context, None
            s = r.settings
            out = realised_outcome(raw, ctx.bars, r.times, vwap_mode=s.get("vwap_mode", "moving"),
                                   mid_window=int(s.get("mid_window", 20)), mid_kind=s.get("mid_kind", "sma"),
                                   new_session=bool(ctx.plan.next_session))
            r.outcome = score(r, out)
            done += 1
        except Exception as exc:  # noqa: BLE001
            r.unresolved = f"outcome failed: {type(exc).__name__}: {exc}"
            log.warning("%s %s: %s", r.symbol, iso(r.asof), r.unresolved)
            continue
        if on_outcome is not None:
            try:  # nor may the online calibration's bookkeeping
                on_outcome(r, out)
            except Exception as exc:  # noqa: BLE001
                log.warning("%s %s: online calibration did not learn this outcome: %s: %s", r.symbol,
                            iso(r.asof), type(exc).__name__, exc)
    return done


def score(r: ForecastRecord, out: Any) -> dict[str, Any]:
    """The outcome block of a forecast: realised close, hits, band score and coverage, Brier."""
    real = out.close
    z = band_score(real, r.now_close, r.centre, r.scale)
    inside = band_coverage(r.band["lo"][None], r.band["hi"][None], real[None])
    res = {"realised_close": float(real[-1]), "up": out.up, "hit_vwap": out.hit_vwap, "hit_mid": out.hit_mid,
           "band_z_end": num(z[-1]), "inside_band_end": bool(inside[-1] > 0.5),
           "inside_band_share": float(np.nanmean(inside)),
           "brier": None if r.p_up is None else (r.p_up - out.up) ** 2,
           "brier_calibrated": None if r.p_up_cal is None else (r.p_up_cal - out.up) ** 2}
    if r.band["lo_cal"] is not None and r.band["hi_cal"] is not None:
        cal = band_coverage(r.band["lo_cal"][None], r.band["hi_cal"][None], real[None])
        res["inside_band_calibrated_end"] = bool(cal[-1] > 0.5)
    return res


def reliability(history: Iterable[ForecastRecord]) -> dict[str, Any]:
    """The day's reconciled forecasts: Brier against the coin flip and band coverage against nominal."""
    records = list(history)
    if not records:
        return {"n": 0, "pending": 0, "brier_reference": COIN_FLIP_BRIER}
    day = records[-1].asof.tz_convert(NEW_YORK).date()
    today = [r for r in records if r.asof.tz_convert(NEW_YORK).date() == day]
    done = [r for r in today if r.outcome is not None]
    up = np.array([r.outcome["up"] for r in done], float)
    p = np.array([np.nan if r.p_up is None else r.p_up for r in done], float)
    p_cal = np.array([np.nan if r.p_up_cal is None else r.p_up_cal for r in done], float)
    inside = [r.outcome["inside_band_end"] for r in done]
    inside_cal = [r.outcome["inside_band_calibrated_end"] for r in done
                  if "inside_band_calibrated_end" in r.outcome]
    band = today[-1].band
    return {"date": day.isoformat(), "n": len(done), "pending": len(today) - len(done),
            "brier": num(brier_score(p, up)) if done else None,
            "brier_calibrated": num(brier_score(p_cal, up)) if done and np.isfinite(p_cal).any() else None,
            "brier_reference": COIN_FLIP_BRIER,
            "up_rate": num(up.mean()) if done else None,
            "band": f"{band['lo_key']}-{band['hi_key']}", "nominal": band["nominal"],
            "coverage": num(np.mean(inside)) if inside else None,
            "coverage_calibrated": num(np.mean(inside_cal)) if inside_cal else None,
            "coverage_all_minutes": num(np.mean([r.outcome["inside_band_share"] for r in done]))
            if done else None}


def p_up_history(history: Iterable[ForecastRecord]) -> list[dict[str, Any]]:
    """The session's P(up) as the page draws it: raw, calibrated (walk-forward) and online, the calibrated
    interval (forecast.trust), and the realised up once known."""
    records = list(history)
    if not records:
        return []
    day = records[-1].asof.tz_convert(NEW_YORK).date()
    out = []
    for r in records:
        if r.asof.tz_convert(NEW_YORK).date() != day:
            continue
        interval = (r.trust or {}).get("p_up_interval_calibrated") or [None, None]
        out.append({"asof": iso(r.asof), "p_up": r.p_up, "p_up_calibrated": r.p_up_cal,
                    "p_up_online": num((r.online or {}).get(f"p_up_{r.horizon_min}m")),
                    "lo": num(interval[0]) if interval[0] is not None else None,
                    "hi": num(interval[1]) if interval[1] is not None else None,
                    "up": None if r.outcome is None else r.outcome["up"]})
    return out
