"""serve.py's own keys (the live service; it reads the forecast's too); app.config builds its settings from them."""
from __future__ import annotations

from typing import Any

from forecast.settings import KEYS, settings_class, SYMBOLS, Key, positive


def is_redis_url(v: Any) -> bool:
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
        check=is_redis_url, rule="a redis://host:port/db, rediss:// or unix:// URL (port a number 1..65535)",
        affects_results=False),
    Key("redis_prefix", str, "kronos", "Redis names: PUBLISH on <prefix>:<SYMBOL>, latest under "
        "<prefix>:<SYMBOL>:latest", check=lambda v: bool(v) and " " not in v, rule="a name without spaces",
        affects_results=False),
    Key("poll_delay", float, 3.0, "seconds after each minute to poll Alpaca's REST API while the stream is down",
        check=lambda v: 0 <= v <= 50, rule="0..50", affects_results=False),
    Key("history", int, 500, "forecasts kept in memory for the page and /forecast/history", check=positive,
        rule=">= 1", affects_results=False),
)

ServeConfig = settings_class("ServeConfig", KEYS + SERVE_KEYS, "The forecast's settings plus the service's own keys.", __name__)
