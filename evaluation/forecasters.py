"""The forecasters a backtest compares: Kronos through the forecast pipeline, and the baselines, side by side.

Every forecaster turns replayed cases into paths [N, H, 6]. Kronos paths follow the pipeline's seeding rule (seed
and first minute), so a backtest row equals the CLI's replay of the same instant; a baseline draws from one numpy
stream per (forecaster, origin), so its results never depend on batching, order or resumption either.
"""
from __future__ import annotations

import zlib
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from evaluation import baselines
from evaluation.replay import Case
from evaluation.store import SKIP, describe
from forecast.pipeline import ForecastPipeline

BASELINES: dict[str, type] = {"random_walk": baselines.RandomWalk, "block_bootstrap": baselines.BlockBootstrap}
if baselines.arch_model is not None:
    BASELINES["garch"] = baselines.Garch
KRONOS_KEYS = ("model", "tokenizer", "model_revision", "tokenizer_revision", "max_context", "top_p", "top_k",
               "temperature", "lookback", "time_label")  # what a --kronos setting may change


class KronosForecaster:
    """Kronos with one set of sampling settings: the pipeline of that setting's config (sharing the engine)."""

    def __init__(self, name: str, pipeline: ForecastPipeline) -> None:
        self.name, self.pipeline = name, pipeline

    def describe(self) -> dict[str, Any]:
        return describe_kronos(self.pipeline.cfg)

    def sample_cases(self, cases: Sequence[Case], n_paths: int, seed: int,
                     on_origins: Callable[[int], None] | None = None) -> list[np.ndarray]:
        return self.pipeline.sample([c.context for c in cases], n_paths=n_paths, seed=seed, check=False,
                                    on_origins=on_origins)


def describe_kronos(cfg: Any) -> dict[str, Any]:
    """What run.json pins of a Kronos setting: its config keys (the object's describe, and a Ray driver's that
    builds none, are this one function, so both modes pin the same and may resume each other's runs)."""
    return {"kind": "kronos", **{k: getattr(cfg, k) for k in KRONOS_KEYS}}


def rng_for(seed: int, name: str, origin: pd.Timestamp) -> np.random.Generator:
    # One stream per (forecaster, origin): results do not depend on batching, order or resumption.
    return np.random.default_rng([seed, zlib.crc32(name.encode()), int(origin.value // 60_000_000_000)])


def sample_cases(forecaster: Any, cases: Sequence[Case], cfg: Any,
                 on_origins: Callable[[int], None] | None = None) -> list[np.ndarray]:
    """Paths [N, h, 6] for each case; ``on_origins(k)`` is told as k more cases are done (a progress bar)."""
    if isinstance(forecaster, KronosForecaster):
        return forecaster.sample_cases(cases, cfg.n_samples, cfg.seed, on_origins)
    out = []
    for c in cases:
        out.append(forecaster.sample(c.history, c.times, cfg.n_samples, rng_for(cfg.seed, forecaster.name, c.origin)))
        if on_origins is not None:
            on_origins(1)
    return out


def check_baseline_names(names: Sequence[str]) -> None:
    """An unknown baseline name is a ConfigError naming it and the choices."""
    from forecast.errors import ConfigError

    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ConfigError(f"unknown forecaster(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(BASELINES)} or kronos")


def kronos_name(i: int, spec: dict[str, Any]) -> str:
    """The i-th (from 0) Kronos setting's name: its own, else kronos_<i+1>."""
    return spec.get("name") or f"kronos_{i + 1}"


def forecaster_names(names: Sequence[str], kronos_settings: Sequence[dict[str, Any]]) -> list[str]:
    """Every forecaster's name as build_forecasters names them (baselines, then Kronos settings); an unknown
    baseline or a clash is a ConfigError (check_forecaster_names)."""
    check_baseline_names(names)
    every = list(names) + [kronos_name(i, s) for i, s in enumerate(kronos_settings)]
    check_forecaster_names(every)
    return every


def check_forecaster_names(names: Sequence[str]) -> None:
    """Records are keyed by forecaster name: every name unique, and none the skip records' name."""
    from forecast.errors import ConfigError

    if len(set(names)) != len(names) or SKIP in names:
        raise ConfigError(f"forecaster names must be unique and not {SKIP!r}: {list(names)}")


def build_forecasters(cfg: Any, names: Sequence[str], kronos_settings: Sequence[dict[str, Any]],
                      load_sampler: Any = None) -> list[Any]:
    """Baselines by name, then one KronosForecaster per setting (a dict of config keys and 'name'); settings of
    one checkpoint share its engine. An unknown baseline name is a ValueError naming it."""
    check_baseline_names(names)
    out: list[Any] = [BASELINES[n]() for n in names]
    engines: dict[tuple, Any] = {}
    for name, kcfg in kronos_configs(cfg, kronos_settings):
        key = tuple(getattr(kcfg, k) for k in ("model", "tokenizer", "model_revision", "tokenizer_revision",
                                                "max_context", "device", "dtype"))
        pipeline = ForecastPipeline(kcfg, sampler=engines.get(key), calibrator=None)
        engines[key] = pipeline.sampler  # loads the engine once per checkpoint
        out.append(KronosForecaster(name, pipeline))
    return out


def kronos_configs(cfg: Any, kronos_settings: Sequence[dict[str, Any]]) -> list[tuple[str, Any]]:
    """(name, config) of each Kronos setting, without loading anything."""
    out = []
    for i, spec in enumerate(kronos_settings):
        out.append((kronos_name(i, spec), cfg.replace(**{k: v for k, v in spec.items() if k != "name"})))
    return out


def describe_forecasters(cfg: Any, names: Sequence[str], kronos_settings: Sequence[dict[str, Any]]
                         ) -> dict[str, dict[str, Any]]:
    """What run.json pins of each forecaster, as build_forecasters' objects describe themselves, but without
    loading a model (a Ray driver never needs one)."""
    out = {n: describe(BASELINES[n]()) for n in names if n in BASELINES}
    for name, kcfg in kronos_configs(cfg, kronos_settings):
        out[name] = describe_kronos(kcfg)
    return out
