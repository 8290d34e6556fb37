"""How a forecast ends early; the application maps each to its documented exit code."""
from __future__ import annotations


class Skipped(Exception):
    """Nothing to forecast now (too few bars, too many gaps, the session closes, a quiet window); exit 3.
    ``code`` is the kind of skip, a fixed word the live service counts skips by: "gap" (bars missing or too many
    gap fills), "event" (a quiet window), "session_end" (too few minutes left), "data" (anything else)."""

    def __init__(self, message: str, code: str = "data") -> None:
        super().__init__(message)
        self.code = code


class ModelError(Exception):
    """The weights are missing or unusable, or the model produced impossible values; exit 5."""


class SettingsError(ValueError):
    """A setting cannot be used (a calibrator file that is not one, a device this machine lacks); exit 2.
    The message names the config key."""


class ConfigError(SettingsError):
    """A configuration value or file is unusable; the message names the key and what is allowed."""


class Diverged(Exception):
    """Fine-tuning stopped because its loss became NaN or infinite; exit 8. The message says at which step."""
