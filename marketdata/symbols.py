"""The one rule for a ticker, read by every script, file name, lock, run log and Redis key: ASCII letters,
digits and dots, starting with a letter or a digit, in upper case (``qqq`` and ``QQQ`` are one ticker, with one
lock and one run log). Non-ASCII letters are refused: ``str.isalnum`` would take ``QQQé`` or a full-width ``Ｑ``."""
from __future__ import annotations

import re
from typing import Any

TICKER = re.compile(r"[A-Z0-9][A-Z0-9.]*\Z")
RULE = "ASCII letters, digits and dots"


def normal(value: Any) -> Any:
    """A ticker in upper case; anything else unchanged (for the rule to refuse)."""
    return value.strip().upper() if isinstance(value, str) else value


def is_ticker(value: Any) -> bool:
    """Whether ``value`` is a ticker in its normal (upper-case) form."""
    return isinstance(value, str) and value.isascii() and TICKER.match(value) is not None
