"""config.yaml loading, command-line overrides and validation messages."""
import argparse
from pathlib import Path

import pytest

from app.config import (CRON_KEYS, ConfigError, KEYS, SERVE_KEYS, add_config_flags, build_config, load_config,
                        overrides_from_args, read_yaml)

ROOT = Path(__file__).resolve().parents[1]


def parse(argv):
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    return overrides_from_args(parser.parse_args(argv))


def test_shipped_config_matches_the_documented_defaults():
    cfg = load_config(ROOT / "config.yaml", {})
    assert (cfg.symbol, cfg.horizon, cfg.n_samples, cfg.lookback, cfg.days) == ("QQQ", 30, 100, 480, 3)
    assert (cfg.temperature, cfg.top_p, cfg.top_k) == (1.0, 0.9, 0)
    assert cfg.model == "NeoQuasar/Kronos-small" and cfg.tokenizer == "NeoQuasar/Kronos-Tokenizer-base"
    assert cfg.percentiles == [10, 50, 90] and cfg.rth is True and cfg.feed == "iex"
    # The file sets every key, so a default changed in code alone would show up here.
    assert set(read_yaml(ROOT / "config.yaml")) == {k.name for k in KEYS + CRON_KEYS + SERVE_KEYS}


def test_every_key_has_a_command_line_flag():
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    flags = {opt for action in parser._actions for opt in action.option_strings}
    for key in KEYS:
        assert "--" + key.name.replace("_", "-") in flags


def test_command_line_wins_over_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("n_samples: 50\ntop_p: 0.5\nrth: true\n")
    cfg = load_config(path, parse(["--n-samples", "7", "--no-rth", "--percentiles", "5,95", "--seed", "3"]))
    assert (cfg.n_samples, cfg.top_p, cfg.rth, cfg.percentiles, cfg.seed) == (7, 0.5, False, [5.0, 95.0], 3)


@pytest.mark.parametrize("text, words", [
    ("lookbak: 100\n", ["unknown config key 'lookbak'", "did you mean 'lookback'"]),
    ("horizon: [\n", ["not valid YAML", "line"]),
    ("- a\n- b\n", ["must be a mapping"]),
    ("top_p: 1.5\n", ["'top_p'", "(0, 1]"]),
    ("temperature: 0\n", ["'temperature'", "> 0"]),
    ("top_k: -1\n", ["'top_k'", ">= 0"]),
    ("n_samples: many\n", ["'n_samples'", "whole number"]),
    ("n_samples: 2.5\n", ["'n_samples'", "whole number"]),
    ("feed: polygon\n", ["'feed'", "iex, sip"]),
    ("lookback: 500\n", ["'lookback' + 'horizon'", "512", "at most 482"]),
    ("source: csv\n", ["'csv'", "--csv"]),
    ("percentiles: [0, 50]\n", ["'percentiles'"]),
    ("events: ['2026-12-10 14:00']\n", ["'events'", "offset"]),
    ("device: gpu\n", ["'device'", "cuda:N"]),
    ("csv_tz: Eastern/Nowhere\n", ["'csv_tz'", "IANA zone"]),
    ("symbol: null\n", ["'symbol'", "empty"]),
])
def test_bad_values_name_the_key_and_the_rule(tmp_path, text, words):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, {})
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", {})


def test_local_checkpoint_context_is_checked_only_when_known():
    # A local directory's context is unknown until it loads, unless max_context says it.
    assert build_config({"model": "/some/dir", "lookback": 1000}, {}).lookback == 1000
    with pytest.raises(ConfigError, match="context of 600"):
        build_config({"model": "/some/dir", "lookback": 1000, "max_context": 600}, {})
    # Kronos-mini has a context of 2048.
    assert build_config({"model": "NeoQuasar/Kronos-mini", "lookback": 2000}, {}).lookback == 2000


def test_bfloat16_needs_cuda():
    with pytest.raises(ConfigError, match="'dtype'"):
        build_config({"dtype": "bfloat16", "device": "cpu"}, {})
    assert build_config({"dtype": "bfloat16", "device": "cuda"}, {}).dtype == "bfloat16"


def test_readme_config_reference_is_current():
    from app.config import reference_table

    assert reference_table() in (ROOT / "README.md").read_text(), "regenerate the README's config table"


def test_readme_serve_keys_reference_is_current():
    from app.config import reference_table

    assert reference_table(SERVE_KEYS) in (ROOT / "README.md").read_text(), "regenerate the README's serve table"


def test_readme_backtest_keys_reference_is_current():
    from app.config import BACKTEST_KEYS, reference_table

    assert reference_table(BACKTEST_KEYS) in (ROOT / "README.md").read_text(), "regenerate the backtest table"


def test_serve_keys_are_validated():
    cfg = build_config({"symbols": ["qqq", "SPY"], "port": 0}, {}, script="serve")
    assert cfg.symbols == ["QQQ", "SPY"] and cfg.port == 0 and cfg.redis_url is None
    with pytest.raises(ConfigError, match="'redis_url'"):
        build_config({"redis_url": "http://localhost:6379"}, {}, script="serve")
    with pytest.raises(ConfigError, match="'port'"):
        build_config({"port": 70000}, {}, script="serve")
    with pytest.raises(ConfigError, match="'symbols'"):
        build_config({"symbols": ["QQQ; rm"]}, {}, script="serve")


@pytest.mark.parametrize("script", ["backtest", "serve"])
@pytest.mark.parametrize("symbols", [[123], ["QQQ", None], [["QQQ"]], ["QQQ; rm"]])
def test_symbols_must_be_tickers_in_every_script(script, symbols):
    """backtest.py and serve.py read the same `symbols` key from the same file: the same rule, the same error."""
    with pytest.raises(ConfigError, match=r"'symbols' must be a list of tickers"):
        build_config({"symbols": symbols}, {}, script=script)
    assert build_config({"symbols": ["QQQ", "BRK.B"]}, {}, script=script).symbols == ["QQQ", "BRK.B"]


@pytest.mark.parametrize("script", ["forecast", "backtest", "serve", "finetune"])
def test_tickers_are_upper_case_ascii_and_named_once(script):
    """One rule (marketdata.symbols) for every script: qqq is QQQ (one lock, one run log, one Redis key), so
    qqq,QQQ names one ticker twice; a non-ASCII letter, which str.isalnum takes, is no ticker."""
    assert build_config({}, {"symbol": " qqq "}, script=script).symbol == "QQQ"
    assert build_config({}, {"symbol": "brk.b"}, script=script).symbol == "BRK.B"
    for bad in ("QQQ\u00e9", "\uff31QQ", "\u0661\u0662", ".QQQ", "QQ-Q", ""):
        with pytest.raises(ConfigError, match="'symbol' must be ASCII letters, digits and dots"):
            build_config({}, {"symbol": bad}, script=script)
    if script in ("backtest", "serve"):
        assert build_config({}, {"symbols": "spy,qqq"}, script=script).symbols == ["SPY", "QQQ"]
        for bad in ("qqq,QQQ", "QQQ,spy,Qqq", "QQQ,SP\u00dd"):
            with pytest.raises(ConfigError, match=r"'symbols' must be a list of tickers .*each once"):
                build_config({}, {"symbols": bad}, script=script)


def test_backtest_with_a_symbol_that_is_not_a_ticker_is_exit_2(tmp_path, caplog):
    import backtest
    from app.exits import ExitCode

    (tmp_path / "config.yaml").write_text("symbols: [123]\n")
    code = backtest.main(["--config", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "bt"),
                          "--no-progress"])
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert code == ExitCode.BAD_INPUT == 2
    assert len(errors) == 1 and errors[0].exc_info is None and "'symbols'" in errors[0].getMessage()
