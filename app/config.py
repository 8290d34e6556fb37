"""The scripts' configuration: tables of keys, read from YAML and overridden on the command line.

The tables live with the layer that uses them: KEYS (and the cron script's CRON_KEYS) in forecast.settings,
BACKTEST_KEYS in evaluation.settings, SERVE_KEYS in live.settings, FINETUNE_KEYS in training.settings; SCRIPT_KEYS
here says which tables a script reads (one config.yaml may hold them all). The tables build the argparse flags (`lookback` -> `--lookback`, `mid_window` ->
`--mid-window`), validate values and give each script its frozen config class; reference_table renders one as
the README's Markdown table (tests check the forecast's, the service's and fine-tuning's are current).
Two rules that span keys live here once: a bars file given (`csv`) means source csv (_source_of_csv), and a
fine-tuned model folder's record of what it was trained with supplies tokenizer, lookback, horizon, rth and
time_label (_trained_defaults).
"""
from __future__ import annotations

import argparse
import datetime as dt
import difflib
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from app.yamlfile import load_yaml, yaml_problem
from evaluation.settings import BACKTEST_KEYS, BacktestConfig
from forecast.errors import ConfigError  # noqa: F401 - the scripts and tests import it from here too
from forecast.settings import CRON_KEYS, KEYS, KEYS_BY_NAME, Config, Key
from live.settings import SERVE_KEYS, ServeConfig
from marketdata.redact import redact_url
from training.settings import FINETUNE_KEYS, FinetuneConfig

log = logging.getLogger("app.config")
if TYPE_CHECKING:
    import pandas as pd

# Which tables each script reads. One config.yaml may hold every script's keys; a script ignores the others'.
SCRIPT_KEYS: dict[str, tuple[Key, ...]] = {
    "forecast": KEYS + CRON_KEYS,
    "backtest": KEYS + BACKTEST_KEYS,
    "serve": KEYS + SERVE_KEYS,
    "finetune": KEYS + FINETUNE_KEYS,
}
ALL_KEYS_BY_NAME = {k.name: k for keys in SCRIPT_KEYS.values() for k in keys}


# Each script's settings class, derived from its tables in the layer that uses it.
CONFIG_CLASSES: dict[str, type] = {"forecast": Config, "backtest": BacktestConfig, "serve": ServeConfig,
                                   "finetune": FinetuneConfig}


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
