"""Market data, calendar and trader-metric helpers for the Kronos QQQ CLI."""
