"""How a forecast ends early; the application maps each to its documented exit code."""
from __future__ import annotations


class Skipped(Exception):
    """Nothing to forecast now (too few bars, too many gaps, the session closes, a quiet window); exit 3."""


class ModelError(Exception):
    """The weights are missing or unusable, or the model produced impossible values; exit 5."""


class SettingsError(ValueError):
    """A setting cannot be used (a calibrator file that is not one, a device this machine lacks); exit 2.
    The message names the config key."""
