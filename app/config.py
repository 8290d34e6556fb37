"""The scripts' configuration: tables of keys, read from YAML and overridden on the command line.

KEYS are the forecast's; BACKTEST_KEYS, SERVE_KEYS and FINETUNE_KEYS are each script's own, and SCRIPT_KEYS says
which tables a script reads (one config.yaml may hold them all). Every key has a type, a default, a rule and a
one-line help text. The tables build the argparse flags (`lookback` -> `--lookback`, `mid_window` ->
`--mid-window`), validate values and give each script its frozen config class; reference_table renders one as
the README's Markdown table (tests check the forecast's, the service's and fine-tuning's are current).
Two rules that span keys live here once: a bars file given (`csv`) means source csv (_source_of_csv), and a
fine-tuned model folder's record of what it was trained with supplies tokenizer, lookback, horizon, rth and
time_label (_trained_defaults).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import difflib
import logging
import math
import zoneinfo
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from app.yamlfile import load_yaml, yaml_problem
from forecast.errors import ConfigError  # noqa: F401 - the scripts and tests import it from here too
from marketdata import symbols as tickers
from marketdata.redact import redact_url

log = logging.getLogger("app.config")
if TYPE_CHECKING:
    import pandas as pd

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


def _positive(v: Any) -> bool:
    return v > 0


def _is_zone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _is_redis_url(v: Any) -> bool:
    """A redis://, rediss:// or unix:// URL; a redis(s) URL's port, when given, a number 1..65535."""
    from urllib.parse import urlsplit

    if not isinstance(v, str) or not v.startswith(("redis://", "rediss://", "unix://")):
        return False
    if v.startswith("unix://"):
        return len(v) > len("unix://")
    try:
        parts = urlsplit(v)
        port = parts.port  # a port that is not a number, or out of range, raises here
    except ValueError:
        return False
    return bool(parts.hostname) and port != 0


def _is_iso_date(v: str) -> bool:
    # YYYY-MM-DD only: pandas would also read '10/06/2025' (month first) and 'June' (year 1)
    try:
        return len(v) == 10 and dt.date.fromisoformat(v).isoformat() == v
    except ValueError:
        return False


def _is_host_port(v: str) -> bool:
    """host:port with a port in 1..65535 (an IPv6 host in brackets)."""
    host, sep, port = v.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return bool(sep and host and port.isdigit() and 1 <= int(port) <= 65535
                and not any(c.isspace() or c in "/@?#" for c in host))


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
    Key("temperature", float, 1.0, "sampling temperature", check=_positive, rule="> 0"),
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
        check=lambda v: v == "auto" or _is_zone(v), rule="auto or an IANA zone such as America/New_York"),
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
        check=_positive, rule="> 0"),
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
    Key("min_horizon", int, 5, "skip when fewer minutes than this are left to forecast", check=_positive,
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
        check=_positive, rule=">= 1"),
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
        check=_positive, rule="> 0", affects_results=False),
)


BACKTEST_KEYS: tuple[Key, ...] = (
    Key("every", int, 10, "minutes between backtest origins", check=lambda v: 1 <= v <= 390, rule="1..390"),
    Key("start", str, None, "first session of the backtest, YYYY-MM-DD (default: the data's first)",
        check=_is_iso_date, rule="a date YYYY-MM-DD"),
    Key("end", str, None, "last session of the backtest, YYYY-MM-DD (default: the data's last)",
        check=_is_iso_date, rule="a date YYYY-MM-DD, not before start"),
    Key("forecasters", list, ["random_walk", "block_bootstrap", "garch"],
        "forecasters to compare: random_walk, block_bootstrap, garch, kronos (the config's model and sampling)"),
    Key("batch", int, 16, "origins per engine call (results do not depend on it)", check=_positive, rule=">= 1",
        affects_results=False),
    Key("refit_every", int, 50, "refit the walk-forward calibrators every n outcomes", check=_positive,
        rule=">= 1", affects_results=False),
    Key("isotonic_min", int, 500, "outcomes before isotonic replaces Platt", check=_positive, rule=">= 1",
        affects_results=False),
    Key("rule_p_up", float, 0.60, "toy rule: enter when p_up is at least this", check=lambda v: 0 <= v <= 1,
        rule="in [0, 1]", affects_results=False),
    Key("rule_z", float, -1.0, "toy rule: enter only when zscore_mid <= this", affects_results=False),
    Key("stop_bp", float, 25.0, "toy rule: stop loss in basis points", check=_positive, rule="> 0",
        affects_results=False),
    Key("fee_bp", float, 0.5, "toy rule: fee per side in basis points", check=lambda v: v >= 0, rule=">= 0",
        affects_results=False),
    Key("slippage_bp", float, 1.0, "toy rule: slippage per side in basis points", check=lambda v: v >= 0,
        rule=">= 0", affects_results=False),
    SYMBOLS,
    Key("data_dir", str, None, "folder of one bars file per symbol, <SYMBOL>.csv or .parquet (else: Alpaca)",
        affects_results=False),
    Key("bars_cache", str, "outputs/bars_cache", "Alpaca bars of a many-symbol backtest are cached here, one "
        "Parquet file per symbol and session", affects_results=False),
    Key("ray", bool, False, "run the backtest's shards (symbol x session) on a Ray cluster", affects_results=False),
    Key("ray_address", str, None, "the cluster: auto (the one `ray start` began here) or host:port; default: a "
        "local Ray for this run", check=lambda v: v == "auto" or _is_host_port(v),
        rule="auto or host:port (port 1..65535)", affects_results=False),
    Key("ray_workers", int, None, "Kronos workers, each holding a warm model (default: one per GPU, else one "
        "per CPU slot but one)", check=_positive, rule=">= 1", affects_results=False),
    Key("ray_worker_cpus", int, 1, "CPU slots (and torch threads) per Kronos worker", check=_positive,
        rule=">= 1", affects_results=False),
    Key("ray_worker_gpus", float, None, "GPUs per Kronos worker (default: 1 when the cluster has GPUs, else 0)",
        check=lambda v: 0 <= v <= 8, rule="0..8", affects_results=False),
)
BACKTEST_KEYS_BY_NAME = {k.name: k for k in BACKTEST_KEYS}


# serve.py's own keys (the live service); it reads the forecast's keys too.
SERVE_KEYS: tuple[Key, ...] = (
    SYMBOLS,
    Key("host", str, "127.0.0.1", "address the web page and API listen on (any other than loopback needs "
        "KRONOS_SERVE_TOKEN)", affects_results=False),
    Key("port", int, 8765, "port of the web page and API (0 = any free port)", check=lambda v: 0 <= v <= 65535,
        rule="0..65535", affects_results=False),
    Key("live_out", str, "outputs/live", "the service's folder for the CLI's files (keep it apart from cron's "
        "`out`)", affects_results=False),
    Key("timestamped_files", bool, False, "also keep every forecast's timestamped paths CSVs (its timestamped "
        "summary JSON, which its run-log row names, the _latest copies and the run log are always written)",
        affects_results=False),
    Key("redis_url", str, None, "publish each summary to this Redis (redis://host:6379/0); null = no Redis",
        check=_is_redis_url, rule="a redis://host:port/db, rediss:// or unix:// URL (port a number 1..65535)",
        affects_results=False),
    Key("redis_prefix", str, "kronos", "Redis names: PUBLISH on <prefix>:<SYMBOL>, latest under "
        "<prefix>:<SYMBOL>:latest", check=lambda v: bool(v) and " " not in v, rule="a name without spaces",
        affects_results=False),
    Key("poll_delay", float, 3.0, "seconds after each minute to poll Alpaca's REST API while the stream is down",
        check=lambda v: 0 <= v <= 50, rule="0..50", affects_results=False),
    Key("history", int, 500, "forecasts kept in memory for the page and /forecast/history", check=_positive,
        rule=">= 1", affects_results=False),
)


# finetune.py's own keys; it reads the forecast's keys too (model, tokenizer, lookback, horizon, source, csv, ...).
FINETUNE_KEYS: tuple[Key, ...] = (
    Key("sessions", int, 20, "trading sessions of bars to fine-tune on (the last K), split in time into "
        "train, validation and test", check=lambda v: 3 <= v <= 400, rule="3..400"),
    Key("val_sessions", int, 2, "sessions after the training ones, for validation and early stopping",
        check=_positive, rule=">= 1"),
    Key("test_sessions", int, 3, "the last sessions, held out for the A/B backtest only", check=_positive,
        rule=">= 1"),
    Key("cross_sessions", bool, False, "let a window of lookback + horizon bars span consecutive sessions "
        "(overnight gap included, as a live context of several days does)"),
    Key("stride", int, 1, "bars between the starts of consecutive windows", check=_positive, rule=">= 1"),
    Key("batch_size", int, 16, "windows per optimizer step, over all processes together", check=_positive,
        rule=">= 1"),
    Key("lr", float, 4e-5, "predictor peak learning rate (upstream's fine-tuning recipe)", check=_positive,
        rule="> 0"),
    Key("train_tokenizer", bool, False, "also fine-tune the tokenizer (reconstruction + quantiser losses)"),
    Key("tokenizer_lr", float, 2e-4, "tokenizer peak learning rate, when it is trained", check=_positive,
        rule="> 0"),
    Key("weight_decay", float, 0.1, "AdamW weight decay (betas 0.9, 0.95)", check=lambda v: v >= 0, rule=">= 0"),
    Key("warmup_steps", int, 50, "linear warm-up steps before the cosine decay", check=_positive, rule=">= 1"),
    Key("max_steps", int, 1000, "optimizer steps at most (the cosine decay ends here)", check=_positive,
        rule=">= 1"),
    Key("eval_every", int, 50, "steps between validation passes (and resumable checkpoints)", check=_positive,
        rule=">= 1"),
    Key("eval_windows", int, 256, "validation windows per pass, evenly spaced (0 = all)",
        check=lambda v: v >= 0, rule=">= 0"),
    Key("patience", int, 5, "validation passes without improvement before stopping early", check=_positive,
        rule=">= 1"),
    Key("grad_clip", float, 3.0, "clip the gradients' global norm to this", check=_positive, rule="> 0"),
    Key("dropout", float, None, "dropout of every layer while training (null = the checkpoint's own "
        "*_dropout_p values)", check=lambda v: 0 <= v < 1, rule="in [0, 1)"),
    Key("ab_after_training", bool, True, "run the A/B backtest on the test sessions when training ends",
        affects_results=False),
    Key("ab_every", int, 30, "A/B backtest: minutes between origins", check=lambda v: 1 <= v <= 390, rule="1..390",
        affects_results=False),
    Key("ab_baselines", list, ["random_walk", "block_bootstrap"], "A/B backtest: baselines shown beside the "
        "two Kronos checkpoints", check=lambda v: all(n in ("random_walk", "block_bootstrap", "garch") for n in v),
        rule="a list of random_walk, block_bootstrap, garch", affects_results=False),
)


# Which tables each script reads. One config.yaml may hold every script's keys; a script ignores the others'.
SCRIPT_KEYS: dict[str, tuple[Key, ...]] = {
    "forecast": KEYS + CRON_KEYS,
    "backtest": KEYS + BACKTEST_KEYS,
    "serve": KEYS + SERVE_KEYS,
    "finetune": KEYS + FINETUNE_KEYS,
}
ALL_KEYS_BY_NAME = {k.name: k for keys in SCRIPT_KEYS.values() for k in keys}


def _config_class(name: str, keys: tuple[Key, ...], doc: str) -> type:
    cls = dataclasses.make_dataclass(name, [(k.name, Any) for k in keys], frozen=True,
                                     namespace={"__doc__": doc, "replace": lambda self, **c: dataclasses.replace(self, **c)})
    cls.__module__ = __name__
    return cls


# The one definition of every setting: the classes are derived from the tables, field names are the YAML keys.
Config = _config_class("Config", SCRIPT_KEYS["forecast"], "Validated settings of one forecast run; field names are the YAML keys.")
BacktestConfig = _config_class("BacktestConfig", SCRIPT_KEYS["backtest"],
                               "The forecast's settings plus the backtest's own keys.")
ServeConfig = _config_class("ServeConfig", SCRIPT_KEYS["serve"], "The forecast's settings plus the service's own keys.")
FinetuneConfig = _config_class("FinetuneConfig", SCRIPT_KEYS["finetune"],
                               "The forecast's settings plus fine-tuning's own keys.")
CONFIG_CLASSES: dict[str, type] = {"forecast": Config, "backtest": BacktestConfig, "serve": ServeConfig,
                                   "finetune": FinetuneConfig}


def fingerprint(cfg: Any) -> dict[str, Any]:
    """The settings that decide a run's results, from the key tables (a backtest resumes only with equal ones)."""
    script = next(name for name, cls in CONFIG_CLASSES.items() if isinstance(cfg, cls))
    return {k.name: getattr(cfg, k.name) for k in SCRIPT_KEYS[script] if k.affects_results}


def _coerce(key: Key, value: Any) -> Any:
    """Turn a YAML or command-line value into the key's type, or raise ConfigError naming the key."""
    if value is None:
        if key.default is None:
            return None
        raise ConfigError(f"config key '{key.name}' must not be empty")
    kind = key.kind
    if isinstance(value, str) and value.strip().lower() in key.words:
        return value.strip().lower()
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
                return value.lower() in ("true", "yes", "1", "on")
            raise TypeError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise TypeError
            out = float(value)
            if not math.isfinite(out):  # one rule for every number key: NaN and infinities never pass
                raise ConfigError(f"config key '{key.name}' must be a finite number, got {value!r}")
            return out
        if kind is list:
            if isinstance(value, str):  # from the command line: comma separated
                items = [s.strip() for s in value.split(",") if s.strip()]
                if key.name == "percentiles":
                    return [float(s) for s in items]
                return items
            if not isinstance(value, list):
                raise TypeError
            return list(value)
        if kind is str:
            if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
                return value.isoformat()  # YAML reads an unquoted 2025-06-02 as a date
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise TypeError
            return str(value)
    except ConfigError:
        raise
    except (TypeError, ValueError):
        pass
    words = "".join(f" or {w}" for w in key.words)
    raise ConfigError(f"config key '{key.name}' must be {_kind_name(kind)}{words}, got {value!r}")


def _kind_name(kind: type) -> str:
    return {bool: "true or false", int: "a whole number", float: "a number", list: "a list",
            str: "a string"}[kind]


def _check(key: Key, value: Any) -> Any:
    """The value in its normal form, checked against the key's choices and rule."""
    if value is None:
        return None
    if key.normal is not None:
        value = key.normal(value)
    if key.choices is not None and value not in key.choices:
        raise ConfigError(f"config key '{key.name}' must be one of {', '.join(key.choices)}; got {value!r}")
    if key.check is not None and value not in key.words and not key.check(value):
        shown = redact_url(value) if isinstance(value, str) and "://" in value else value  # no password shown
        raise ConfigError(f"config key '{key.name}' must be {key.rule}; got {shown!r}")
    return value


def read_yaml(path: Path) -> dict[str, Any]:
    """The YAML file as a mapping; a missing file, bad YAML or unknown keys raise ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = load_yaml(text)  # a key given twice is an error, not last-wins
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is {yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of key: value, not {type(data).__name__}")
    for name in data:
        if name not in ALL_KEYS_BY_NAME:
            close = difflib.get_close_matches(str(name), ALL_KEYS_BY_NAME, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{name}' in {path}{hint}")
    return data


def build_config(file_values: dict[str, Any], overrides: dict[str, Any], script: str = "forecast") -> Any:
    """Defaults, then the file, then command-line overrides (None means 'not given'); validated.
    ``script`` picks the tables (SCRIPT_KEYS) and the class that comes back: Config, BacktestConfig, ..."""
    cfg = CONFIG_CLASSES[script](**key_values(file_values, overrides, script))
    _check_combination(cfg)
    return cfg


def key_values(file_values: dict[str, Any], overrides: dict[str, Any], script: str = "forecast") -> dict[str, Any]:
    """Every key's value (default, then file, then override), each coerced and checked on its own; the checks
    across keys (which need torch's and pandas' modules) are build_config's."""
    overrides = _source_of_csv(overrides, "--csv")
    if overrides.get("source") is None:  # the command line did not decide where bars come from
        file_values = _source_of_csv(file_values, "config file")
    overrides = _trained_defaults(file_values, overrides, {k.name for k in SCRIPT_KEYS[script]})
    values: dict[str, Any] = {}
    for key in SCRIPT_KEYS[script]:
        raw = key.default
        if key.name in file_values:
            raw = file_values[key.name]
        if overrides.get(key.name) is not None:
            raw = overrides[key.name]
        values[key.name] = _check(key, _coerce(key, raw))
    if values.get("source") == "alpaca":
        values["csv"] = None  # a file's `csv` that a --source alpaca flag overruled is not read
    return values


def _source_of_csv(layer: dict[str, Any], where: str) -> dict[str, Any]:
    """The one rule for `csv` and `source`, applied to each layer (the file, then the command line): a bars file
    given without a source means source csv; one given beside source alpaca is a contradiction. A later layer's
    source still wins over an earlier one's (a --csv flag beats `source: alpaca` in config.yaml)."""
    if layer.get("csv") is None:
        return layer
    source = layer.get("source")
    if source is None:
        return {**layer, "source": "csv"}
    if source == "alpaca":
        said = ("--csv FILE reads bars from that file, which contradicts --source alpaca: drop one of the two"
                if where == "--csv" else "the config file names a bars file in 'csv' but sets 'source: alpaca': "
                "set source: csv to read the file, or csv: null to use Alpaca")
        raise ConfigError(said)
    return layer


_TOLD: set[tuple[str, str, str]] = set()  # contradictions of a fine-tuned folder's record already warned about


def _trained_defaults(file_values: dict[str, Any], overrides: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """A fine-tuned model folder records its tokenizer and the forecast settings it was trained for
    (kronos.loading.read_trained_for): they win over config.yaml and the defaults; a command-line flag still wins
    over them, with a warning naming both values."""
    model = overrides.get("model") if overrides.get("model") is not None else file_values.get("model")
    # a look at the disk first: only a folder with the record pays for importing kronos (torch); a --warm
    # client reads its settings with this module alone (the name is kronos.loading.TRAINED_FOR)
    if not isinstance(model, str) or not (Path(model).expanduser() / "trained_for.json").is_file():
        return overrides
    from kronos.loading import TRAINED_FOR, read_trained_for

    record = read_trained_for(model)
    if not record:
        return overrides
    out = dict(overrides)
    for name, value in record.items():
        if name not in names or (name == "tokenizer_revision" and overrides.get("tokenizer") is not None):
            continue  # a tokenizer given on the command line comes with its own revision (or none)
        given = overrides.get(name)
        if given is None:
            out[name] = value
            continue
        given = _coerce(ALL_KEYS_BY_NAME[name], given)
        same = given == value
        if name == "tokenizer" and Path(given).expanduser().exists():
            same = Path(given).expanduser().resolve() == Path(value).resolve()
        told = (str(model), name, str(given))
        if not same and told not in _TOLD:  # once per process: a --warm client and its worker read the settings
            _TOLD.add(told)
            shown = (lambda v: str(v).lower() if isinstance(v, bool) else str(v))
            log.warning("%s %s contradicts %s, which was trained with %s %s; using %s", flag(name), shown(given),
                        Path(model).expanduser() / TRAINED_FOR, name, shown(value), shown(given))
    return out


def parse_setting_spec(text: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    """'name=k_p10,top_p=1.0' -> {'name': 'k_p10', 'top_p': 1.0}: every key must be in ``allowed`` (or 'name')
    and every value passes its key's own rule, so a typo is a ConfigError naming it."""
    out: dict[str, Any] = {}
    for item in (s.strip() for s in text.split(",") if s.strip()):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"setting {text!r}: expected key=value pairs separated by commas, e.g. "
                              "name=k_p10,top_p=1.0")
        if name == "name":
            out[name] = value.strip()
            continue
        if name not in allowed:
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"setting {text!r}: unknown key '{name}'{hint}; allowed: name, {', '.join(allowed)}")
        key = KEYS_BY_NAME[name]
        out[name] = _check(key, _coerce(key, value.strip()))
    return out


def _check_combination(cfg: Config) -> None:
    if cfg.n_samples == "auto" and not isinstance(cfg, Config):
        raise ConfigError("config key 'n_samples' may be auto for the forecast CLI only; give this script a number "
                          "of paths (every origin and forecaster must be scored on the same N)")
    if cfg.source == "csv" and not cfg.csv:
        raise ConfigError("config key 'csv' must name a bars file when source is csv (or pass --csv PATH)")
    if cfg.dtype != "float32" and cfg.device in ("cpu", "mps"):
        raise ConfigError(f"config key 'dtype' must be float32 on device {cfg.device}; "
                          "bfloat16 and float16 need CUDA")
    import pandas as pd

    from kronos.config import CONTEXT_BY_REPO  # lookback + horizon must fit the published checkpoint's context

    context = cfg.max_context or CONTEXT_BY_REPO.get(cfg.model)
    if context is not None and cfg.lookback + cfg.horizon > context:
        raise ConfigError(f"config keys 'lookback' + 'horizon' = {cfg.lookback} + {cfg.horizon} exceed the "
                          f"model's context of {context} bars; lower lookback to at most "
                          f"{context - cfg.horizon}")
    start, end = getattr(cfg, "start", None), getattr(cfg, "end", None)
    if start and end and end < start:  # both YYYY-MM-DD: text order is date order
        raise ConfigError(f"config key 'end' ({end}) is before 'start' ({start}); give --end on or after --start")
    if cfg.min_horizon > cfg.horizon:
        raise ConfigError(f"config key 'min_horizon' ({cfg.min_horizon}) must not exceed 'horizon' "
                          f"({cfg.horizon})")
    for text in cfg.events:
        try:
            stamp = pd.Timestamp(text)
        except (ValueError, TypeError):
            stamp = None
        if stamp is None or stamp.tzinfo is None:
            raise ConfigError(f"config key 'events' must hold ISO 8601 times with a UTC offset, "
                              f"like 2026-12-10T14:00:00-05:00; got {text!r}")


def script_parser(doc: str | None, default_config: Path, config_help: str = "YAML settings") -> argparse.ArgumentParser:
    """The parser every script starts from: its docstring's first paragraph as description, and --config, which
    defaults to ``default_config`` (config.yaml beside the scripts) when that file exists, else to no file."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=default_config if default_config.exists() else None,
                        help=f"{config_help} (default: {default_config.name} beside this script)")
    return parser


def parse_time(text: str, flag_name: str) -> pd.Timestamp:
    """A time flag's value (ISO 8601; naive means UTC) in UTC; a ConfigError naming the flag otherwise."""
    import pandas as pd

    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError):
        stamp = pd.NaT
    if stamp is pd.NaT:
        raise ConfigError(f"{flag_name} must be an ISO 8601 time like 2025-06-02T14:00:00Z, got {text!r}")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, script: str = "forecast", skip: tuple[str, ...] = ()) -> None:
    """One optional flag per config key (except ``skip``: the script defines those flags itself); values stay
    strings here and are validated by build_config."""
    group = parser.add_argument_group("configuration overrides (each wins over config.yaml)")
    for key in SCRIPT_KEYS[script]:
        if key.name in skip:
            continue
        if key.kind is bool:
            group.add_argument(flag(key.name), dest=key.name, action=argparse.BooleanOptionalAction,
                               default=None, help=key.help)
        else:
            meta = key.name.upper() if key.kind is not list else "A,B,..."
            group.add_argument(flag(key.name), dest=key.name, default=None, metavar=meta,
                               help=f"{key.help} (default {key.default!r})")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in ALL_KEYS_BY_NAME if getattr(args, name, None) is not None}


def load_config(path: Path | None, overrides: dict[str, Any], script: str = "forecast") -> Any:
    """config.yaml (or the given file; none at all means defaults) with the overrides applied."""
    file_values = read_yaml(path) if path is not None else {}
    return build_config(file_values, overrides, script)


def reference_table(keys: tuple[Key, ...] = KEYS + CRON_KEYS) -> str:
    """A config reference as a Markdown table, for the README."""
    rows = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    for key in keys:
        allowed = ", ".join(key.choices) if key.choices else (key.rule or _kind_name(key.kind))
        allowed += "".join(f" or {w}" for w in key.words)
        default = "null" if key.default is None else str(key.default).lower() if key.kind is bool \
            else str(key.default)
        rows.append(f"| `{key.name}` | `{default}` | {allowed} | {key.help} |")
    return "\n".join(rows)
