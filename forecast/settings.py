"""The forecast's settings: the Key type every settings table is made of, the forecast's own table (KEYS, plus
the cron script's CRON_KEYS) and the frozen class derived from it. Every key has a type, a default, a rule and a
one-line help text; app.config reads YAML and flags against these tables, and each layer above owns its own table
(evaluation.settings, live.settings, training.settings). Nothing here imports pandas or torch: a --warm run
reads its settings with this module before it hands the job over (docs/warm.md)."""
from __future__ import annotations

import dataclasses
import zoneinfo
from dataclasses import dataclass
from typing import Any, Callable

from marketdata import symbols as tickers

# pandas, the calendars and torch are imported where needed: a --warm run reads its settings with this module
# alone before it hands the job to the resident worker (docs/warm.md)
BAD_BAR_POLICIES = ("fill", "skip")  # marketdata.quality.BAD_BAR_POLICIES (a test keeps them equal)


@dataclass(frozen=True)
class Key:
    name: str
    kind: type  # int, float, str, bool, list or dict; a value of None is allowed when default is None
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], bool] | None = None
    rule: str = ""  # what `check` allows, for the error message
    affects_results: bool = True  # False: changing it never changes a forecast (so a backtest may resume)
    normal: Callable[[Any], Any] | None = None  # the value's one spelling, before the check (tickers: upper case)
    words: tuple[str, ...] = ()  # strings a number key also takes (n_samples: auto)


def positive(v: Any) -> bool:
    return v > 0


def is_zone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


MAX_TIME_BUDGET_S = 86_400.0  # a day: far above any run, far below what the OS timer takes


# One key, read by backtest.py and serve.py alike (both tables hold this same Key); tickers follow one rule
# (marketdata.symbols): upper case, so a name given twice in two spellings is refused.
SYMBOLS = Key("symbols", list, [], "several tickers: serve.py forecasts them together, one batched engine call; "
              "backtest.py runs each in its own folder under --out, with a pooled report (empty: `symbol`)",
              check=lambda v: all(tickers.is_ticker(s) for s in v) and len(set(v)) == len(v),
              rule=f"a list of tickers ({tickers.RULE}), each once (case aside)", affects_results=False,
              normal=lambda v: [tickers.normal(s) for s in v])


KEYS: tuple[Key, ...] = (
    Key("symbol", str, "QQQ", "ticker to forecast", check=tickers.is_ticker, rule=tickers.RULE,
        normal=tickers.normal),
    Key("horizon", int, 30, "minutes to forecast", check=lambda v: 1 <= v <= 390, rule="1..390"),
    Key("n_samples", int, 100, "number of sampled paths; auto: draw in chunks until P(up)'s 95 % interval is "
        "within ±p_up_precision, max_samples or the time budget (forecast CLI only)",
        check=lambda v: 1 <= v <= 100_000, rule="1..100000", words=("auto",)),
    # these two act only with n_samples auto, which the backtest refuses: they never change a backtest's results
    Key("p_up_precision", float, 0.02, "n_samples auto: stop once P(up)'s 95 % Monte Carlo interval has at most "
        "this half-width", check=lambda v: 0 < v < 0.5, rule="in (0, 0.5)", affects_results=False),
    Key("max_samples", int, 10_000, "n_samples auto: never draw more paths than this",
        check=lambda v: 1 <= v <= 100_000, rule="1..100000", affects_results=False),
    Key("temperature", float, 1.0, "sampling temperature", check=positive, rule="> 0"),
    Key("top_p", float, 0.9, "nucleus sampling mass (1.0 turns it off)", check=lambda v: 0 < v <= 1,
        rule="in (0, 1]"),
    Key("top_k", int, 0, "keep only the k likeliest tokens (0 = off; when set, top_p is ignored)",
        check=lambda v: v >= 0, rule=">= 0"),
    Key("lookback", int, 480, "bars of context given to the model", check=lambda v: v >= 16, rule=">= 16"),
    Key("days", int, 3, "trading sessions of history to load", check=lambda v: 1 <= v <= 30, rule="1..30"),
    Key("rth", bool, True, "regular hours only (false: 04:00-20:00 ET extended hours)"),
    Key("source", str, "alpaca", "where bars come from (a `csv` file given means csv)", choices=("alpaca", "csv")),
    Key("csv", str, None, "bars file (CSV or Parquet); giving one implies source csv"),
    Key("csv_tz", str, "auto", "time zone of naive timestamps in the bars file (auto = UTC)",
        check=lambda v: v == "auto" or is_zone(v), rule="auto or an IANA zone such as America/New_York"),
    Key("csv_label", str, "auto", "bars file labels bars by their start or end minute",
        choices=("auto", "start", "end")),
    Key("feed", str, "iex", "Alpaca feed", choices=("iex", "sip")),
    Key("sip_fallback", str, "iex", "when the plan refuses recent SIP data: use IEX, SIP delayed 15 min, or fail",
        choices=("iex", "delayed", "error")),
    Key("model", str, "NeoQuasar/Kronos-small", "predictor: hub repo id or local directory"),
    Key("model_revision", str, None, "hub revision (commit hash or tag) of the predictor"),
    Key("tokenizer", str, "NeoQuasar/Kronos-Tokenizer-base", "tokenizer: hub repo id or local directory"),
    Key("tokenizer_revision", str, None, "hub revision of the tokenizer"),
    Key("max_context", int, None, "override the model's context length (local checkpoints)",
        check=positive, rule="> 0"),
    Key("device", str, "auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps",
        check=lambda v: v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit()),
        rule="auto, cpu, cuda, cuda:N or mps"),
    Key("dtype", str, "float32", "model precision (bfloat16/float16 on CUDA only)",
        choices=("float32", "bfloat16", "float16")),
    Key("seed", int, None, "random seed for reproducible paths (null = fresh each run)",
        check=lambda v: 0 <= v < 2**32, rule="0..4294967295"),
    Key("percentiles", list, [10, 50, 90], "per-minute percentile bands of the close",
        check=lambda v: len(v) > 0 and all(isinstance(p, (int, float)) and 0 < p < 100 for p in v),
        rule="a non-empty list of numbers strictly between 0 and 100"),
    Key("time_label", str, "start", "model time features use each bar's start or end minute",
        choices=("start", "end")),
    Key("near_close", str, "truncate", "fewer than `horizon` minutes left in the session: forecast to the close "
        "or skip", choices=("truncate", "skip")),
    Key("min_horizon", int, 5, "skip when fewer minutes than this are left to forecast", check=positive,
        rule=">= 1"),
    Key("events", list, [], "event times (ISO 8601 with offset) to keep quiet around, e.g. CPI or FOMC releases",
        check=lambda v: all(isinstance(e, str) for e in v), rule="a list of ISO 8601 timestamp strings"),
    Key("event_before", int, 5, "quiet window: minutes before an event", check=lambda v: 0 <= v <= 1440,
        rule="0..1440"),
    Key("event_after", int, 15, "quiet window: minutes after an event", check=lambda v: 0 <= v <= 1440,
        rule="0..1440"),
    Key("event_action", str, "flag", "inside a quiet window: flag the output or skip the run",
        choices=("flag", "skip")),
    Key("mid_kind", str, "sma", "mid-band: simple or exponential moving average of closes", choices=("sma", "ema")),
    Key("mid_window", int, 20, "mid-band length in bars", check=lambda v: v >= 2, rule=">= 2"),
    Key("vwap_mode", str, "moving", "VWAP to touch: updated with each path's simulated volume, or fixed now",
        choices=("moving", "static")),
    Key("vol_window", int, 60, "bars of recent realised volatility to compare paths with",
        check=lambda v: v >= 2, rule=">= 2"),
    Key("recent_window", int, 30, "bars inspected for gap filling before trusting the data",
        check=positive, rule=">= 1"),
    Key("max_recent_filled", int, 10, "skip when more of the recent bars than this had to be filled",
        check=lambda v: v >= 0, rule=">= 0"),
    Key("bad_bars", str, "fill", "bars a market cannot print (see Data rules): drop and gap-fill them, or skip "
        "the run", choices=BAD_BAR_POLICIES),
    Key("bad_bar_move", float, 50.0, "a bar this many typical 1-minute moves away from the bars around it is a "
        "bad tick", check=lambda v: v >= 5, rule=">= 5"),
    Key("bad_bar_volume", float, 1000.0, "a bar with more than this multiple of the median volume is bad",
        check=lambda v: v >= 10, rule=">= 10"),
    Key("out", str, "outputs", "directory for the JSON, CSV, PNG and the run log", affects_results=False),
    Key("calibrator", str, None, "p_up calibrator JSON fitted by backtest.py (shown beside the raw values)", affects_results=False),
    Key("time_budget", float, 50.0, "seconds a run may take before it stops (cron runs every 60 s)",
        check=lambda v: 0 < v <= MAX_TIME_BUDGET_S, rule="> 0 and at most 86400 (a day)", affects_results=False),
    Key("plot", bool, False, "also write the fan chart PNG", affects_results=False),
)
KEYS_BY_NAME = {k.name: k for k in KEYS}

# The forecast script's own keys: the other scripts share KEYS but have no resident worker.
CRON_KEYS: tuple[Key, ...] = (
    Key("warm", bool, False, "cli_kronos_prob_qqq.py: hand the run to a resident worker that keeps the model and "
        "the recent bars (started by the first such run; docs/warm.md)", affects_results=False),
    Key("warm_idle", float, 10.0, "minutes without a forecast after which the warm worker exits",
        check=positive, rule="> 0", affects_results=False),
)




def settings_class(name: str, keys: tuple[Key, ...], doc: str, module: str) -> type:
    """A frozen dataclass with one field per key (field names are the YAML keys); ``keys`` stays on the class, so
    fingerprint() needs no registry. ``module`` is where the class is bound, so its instances pickle (Ray)."""
    cls = dataclasses.make_dataclass(name, [(k.name, Any) for k in keys], frozen=True,
                                     namespace={"__doc__": doc, "KEYS": keys,
                                                "replace": lambda self, **c: dataclasses.replace(self, **c)})
    cls.__module__ = module
    return cls


# The settings of one forecast run, as the forecast script reads them (the pipeline uses the KEYS fields).
Config = settings_class("Config", KEYS + CRON_KEYS, "Validated settings of one forecast run; field names are the "
                        "YAML keys.", __name__)


def fingerprint(cfg: Any) -> dict[str, Any]:
    """The settings that decide a run's results, from its key table (a backtest resumes only with equal ones)."""
    return {k.name: getattr(cfg, k.name) for k in type(cfg).KEYS if k.affects_results}
