"""The live service's online calibration: as the scorecard sees each forecast's outcome resolve, the symbol's online
state (forecast.online) learns it, is saved atomically (OUT/online_SYMBOL.json, resumed after a restart) and the
pipeline's next forecast uses it, with the recent outcomes trust.status is decided on.

Outcomes resolve when the forecast's last minute has a bar (live.scorecard.reconcile), in the history's order; every
step's band tracker then learns its minute's close, and the probability maps the window's up and VWAP touch.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evaluation.online import STATE_NAME, load_state, recent_outcomes

log = logging.getLogger(__name__)


class OnlineKeeper:
    """One symbol's online state, shared by the hub (which resolves outcomes) and the pipeline (which reads it)."""

    def __init__(self, out_dir: str | Path, symbol: str, pipeline: Any) -> None:
        cfg = pipeline.cfg
        self.levels = tuple(q / 100 for q in cfg.percentiles)
        self.path = Path(out_dir) / STATE_NAME.format(symbol=symbol.upper())
        self.state = load_state(self.path, cfg.horizon, self.levels)
        self.pipeline, self.horizon = pipeline, cfg.horizon
        self._lock = threading.Lock()
        pipeline.online = self.state
        pipeline.recent = recent_outcomes(self.state, cfg.horizon, self.levels[-1] - self.levels[0])

    def on_outcome(self, record: Any, out: Any) -> None:
        """One resolved forecast (live.scorecard.ForecastRecord and its evaluation.outcome result)."""
        on = record.online
        end = record.times[-1] + pd.Timedelta(minutes=1)
        st = self.state
        if not on or (st.last_resolved and end <= pd.Timestamp(st.last_resolved)):
            return  # made without online values (another horizon) or already learnt before a restart
        with self._lock:
            keys = list(on["percentiles"])
            issued = np.array([on["percentiles"][k] for k in keys], float)  # [L, H]
            if record.horizon_min == st.horizon and issued.shape[0] == len(st.levels):
                for h in range(1, min(issued.shape[1], len(out.close)) + 1):
                    st.update_band(h, issued[:, h - 1], float(out.close[h - 1]))
            st.update_prob("p_up", on["p_up_base"], float(out.up))
            if "p_hit_vwap_base" in on and out.hit_vwap is not None:
                st.update_prob("p_hit_vwap", on["p_hit_vwap_base"], float(out.hit_vwap))
            y = float(out.close[-1])
            inside = float(issued[0, -1] <= y <= issued[-1, -1])
            st.remember(record.times[0].isoformat(), record.asof.tz_convert("America/New_York").date().isoformat(),
                        inside, on[f"p_up_{record.horizon_min}m"], float(out.up))
            st.last_resolved = end.isoformat()
            try:
                st.save(self.path)
            except OSError as exc:  # the page and the forecasts go on; the next outcome tries again
                log.warning("online calibration state not saved to %s: %s", self.path, exc)
            self.pipeline.recent = recent_outcomes(st, self.horizon, self.levels[-1] - self.levels[0])
