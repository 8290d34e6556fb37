"""backtest.py's own keys (it reads the forecast's too); app.config builds the script's settings from them."""
from __future__ import annotations

import datetime as dt
from forecast.settings import KEYS, settings_class, SYMBOLS, Key, positive


def is_iso_date(v: str) -> bool:
    # YYYY-MM-DD only: pandas would also read '10/06/2025' (month first) and 'June' (year 1)
    try:
        return len(v) == 10 and dt.date.fromisoformat(v).isoformat() == v
    except ValueError:
        return False


def is_host_port(v: str) -> bool:
    """host:port with a port in 1..65535 (an IPv6 host in brackets)."""
    host, sep, port = v.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return bool(sep and host and port.isdigit() and 1 <= int(port) <= 65535
                and not any(c.isspace() or c in "/@?#" for c in host))



BACKTEST_KEYS: tuple[Key, ...] = (
    Key("every", int, 10, "minutes between backtest origins", check=lambda v: 1 <= v <= 390, rule="1..390"),
    Key("start", str, None, "first session of the backtest, YYYY-MM-DD (default: the data's first)",
        check=is_iso_date, rule="a date YYYY-MM-DD"),
    Key("end", str, None, "last session of the backtest, YYYY-MM-DD (default: the data's last)",
        check=is_iso_date, rule="a date YYYY-MM-DD, not before start"),
    Key("forecasters", list, ["random_walk", "block_bootstrap", "garch"],
        "forecasters to compare: random_walk, block_bootstrap, garch, kronos (the config's model and sampling)"),
    Key("batch", int, 16, "origins per engine call (results do not depend on it)", check=positive, rule=">= 1",
        affects_results=False),
    Key("refit_every", int, 50, "refit the walk-forward calibrators every n outcomes", check=positive,
        rule=">= 1", affects_results=False),
    Key("isotonic_min", int, 500, "outcomes before isotonic replaces Platt", check=positive, rule=">= 1",
        affects_results=False),
    Key("rule_p_up", float, 0.60, "toy rule: enter when p_up is at least this", check=lambda v: 0 <= v <= 1,
        rule="in [0, 1]", affects_results=False),
    Key("rule_z", float, -1.0, "toy rule: enter only when zscore_mid <= this", affects_results=False),
    Key("stop_bp", float, 25.0, "toy rule: stop loss in basis points", check=positive, rule="> 0",
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
        "local Ray for this run", check=lambda v: v == "auto" or is_host_port(v),
        rule="auto or host:port (port 1..65535)", affects_results=False),
    Key("ray_workers", int, None, "Kronos workers, each holding a warm model (default: one per GPU, else one "
        "per CPU slot but one)", check=positive, rule=">= 1", affects_results=False),
    Key("ray_worker_cpus", int, 1, "CPU slots (and torch threads) per Kronos worker", check=positive,
        rule=">= 1", affects_results=False),
    Key("ray_worker_gpus", float, None, "GPUs per Kronos worker (default: 1 when the cluster has GPUs, else 0)",
        check=lambda v: 0 <= v <= 8, rule="0..8", affects_results=False),
)
BACKTEST_KEYS_BY_NAME = {k.name: k for k in BACKTEST_KEYS}

BacktestConfig = settings_class("BacktestConfig", KEYS + BACKTEST_KEYS, "The forecast's settings plus the backtest's own keys.", __name__)
