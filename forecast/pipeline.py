"""The forecast pipeline: bars closed by now -> context -> N Kronos paths -> metrics -> calibrated values -> summary.

One object, built once from the config, serves every entry point: the forecast CLI, the backtest's Kronos
forecaster, the live service and fine-tuning's A/B. It writes nothing. The model loads on first use (or with
``load()``), so a run that skips on its data never pays for it.

Seeding rule: the paths of a forecast depend only on the seed, the forecast's first minute, the context and the
settings; never on which other origins share an engine call. ``origin_seed`` turns (seed, first minute) into the
engine seed of that origin, so ``cli --asof T --seed S`` reproduces origin T of ``backtest --seed S``.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Protocol, Sequence

import numpy as np
import pandas as pd

from forecast.auto_samples import sample_until_precise
from forecast.calibrator import Calibrator, load_calibrator
from forecast.errors import ModelError, SettingsError, Skipped
from forecast.extended import ExtendedPrice, latest_extended, relative_to
from forecast.horizon import HorizonPlan, events_in_window, model_time_features, plan_horizon
from forecast.mc_error import map_interval
from forecast.metrics import Metrics, compute_metrics, repair_paths
from forecast.summary import build_summary
from marketdata.prepare import PrepareInfo, prepare_bars
from marketdata.quality import BarRules

if TYPE_CHECKING:  # the forecast's settings; the pipeline reads their fields only
    from forecast.online import OnlineCalibrator
    from forecast.settings import Config
    from forecast.trust import Recent


class PathSampler(Protocol):
    """What the pipeline uses of the engine (kronos.KronosPathSampler; tests pass stand-ins): numpy in, paths out."""
    model_revision: str | None
    tokenizer_revision: str | None
    device: Any                                   # a torch.device; only printed here
    max_context: int
    progress: Callable[[int, int], None] | None   # decode steps done / total of a sample_batch call

    def sample_batch(self, values: np.ndarray, x_stamp: np.ndarray, y_stamp: np.ndarray, n_paths: int = 100,
                     temperature: float = 1.0, top_k: int = 0, top_p: float = 0.9,
                     seeds: Sequence[int | None] | None = None) -> np.ndarray: ...

    def open_stream(self, values: np.ndarray, x_stamp: np.ndarray, y_stamp: np.ndarray, temperature: float = 1.0,
                    top_k: int = 0, top_p: float = 0.9, seed: int | None = None) -> Any: ...

log = logging.getLogger(__name__)
PRICE_FIELDS = slice(0, 4)  # open, high, low, close of a path bar
AUTO_RESERVE = 0.2  # n_samples auto: share of time_budget kept for metrics and files after the last chunk


@dataclass(frozen=True)
class Context:
    """What the live run at ``now`` sees: prepared bars (closed, gaps filled) and the minutes to forecast."""
    now: pd.Timestamp          # the run's instant (the clock, --asof, or a backtest origin)
    bars: pd.DataFrame         # canonical, gap-filled, closed by the data's cut
    info: PrepareInfo
    plan: HorizonPlan
    events: tuple[str, ...]    # event quiet windows the forecast span meets (flagged)
    extended: ExtendedPrice | None = None  # rth: the latest extended-hours price after the last regular bar

    @property
    def times(self) -> pd.DatetimeIndex:
        return self.plan.times

    @property
    def now_close(self) -> float:
        return float(self.bars["close"].iloc[-1])

    @property
    def first_minute(self) -> pd.Timestamp:
        return self.plan.times[0]


@dataclass
class Forecast:
    context: Context
    paths: np.ndarray                 # [N, H, 6], repaired
    metrics: Metrics
    calibrated: dict[str, Any] | None
    summary: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def origin_seed(seed: int | None, first_minute: pd.Timestamp) -> int | None:
    """The engine seed of one origin: a 63-bit mix of the run seed and the forecast's first minute (None stays
    None: fresh entropy). Distinct origins get independent streams, so Monte Carlo noise never repeats across
    a backtest."""
    if seed is None:
        return None
    minute = int(pd.Timestamp(first_minute).value // 60_000_000_000)
    words = np.random.SeedSequence([int(seed) & (2**63 - 1), minute]).generate_state(2, dtype=np.uint32)
    return int(words[0]) << 31 ^ int(words[1])


def engine_inputs(bars: pd.DataFrame, times: pd.DatetimeIndex, time_label: str) -> tuple[np.ndarray, ...]:
    """A context frame and its forecast minutes as the engine's arrays: values [P, 6], stamps [P, 5], [H, 5]."""
    from kronos import complete_columns

    values = complete_columns(bars[["open", "high", "low", "close", "volume"]].to_numpy(np.float64))
    return values, model_time_features(bars.index, time_label), model_time_features(times, time_label)


class ForecastPipeline:
    """Turns bars closed by now into a forecast, with a warm engine."""

    def __init__(self, cfg: Config, sampler: PathSampler | None = None, calibrator: Calibrator | None = None,
                 loader: Callable[[Config], PathSampler] | None = None) -> None:
        self.cfg = cfg
        self._sampler = sampler
        self._loader = loader or load_sampler  # a warm worker passes its kept engines' lookup
        self.calibrator = calibrator if calibrator is not None else self._load_calibrator(cfg.calibrator)
        # Set by the entry point that keeps them (the cron CLI, the live service): the online calibration state
        # (forecast.online) and the recent resolved outcomes trust.status is decided on (forecast.trust.Recent).
        self.online: OnlineCalibrator | None = None
        self.recent: Recent | None = None

    # ------------------------------------------------------------------------------------------- the engine

    @property
    def sampler(self) -> PathSampler:
        if self._sampler is None:
            self.load()
        return self._sampler

    def load(self) -> float:
        """Load the Kronos engine now (seconds taken); a failure is a ModelError naming the problem."""
        t0 = time.perf_counter()
        if self._sampler is None:
            self._sampler = self._loader(self.cfg)
        return time.perf_counter() - t0

    def engine_info(self) -> dict[str, Any]:
        s, cfg = self.sampler, self.cfg
        return {"model": cfg.model, "model_revision": s.model_revision or cfg.model_revision,
                "tokenizer": cfg.tokenizer, "tokenizer_revision": s.tokenizer_revision or cfg.tokenizer_revision,
                "device": str(s.device), "dtype": cfg.dtype, "max_context": s.max_context}

    @staticmethod
    def _load_calibrator(path: str | None) -> Calibrator | None:
        if not path:
            return None
        try:
            return load_calibrator(path)
        except FileNotFoundError:
            raise SettingsError(f"config key 'calibrator': file not found: {path}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise SettingsError(f"config key 'calibrator': {path} is not a calibrator file ({exc})") from None

    # ------------------------------------------------------------------------------------------- the steps

    def prepare(self, frame: pd.DataFrame, now: pd.Timestamp, data_asof: pd.Timestamp | None = None) -> Context:
        """The live data preparation at ``now``: closed bars of the last sessions, gaps filled, the horizon
        plan and the event check; Skipped with the reason when there is nothing to forecast.
        ``data_asof`` is where the data ends when earlier than now (SIP delayed 15 minutes)."""
        cfg = self.cfg
        bars, info = prepare_bars(frame, data_asof if data_asof is not None else now, days=cfg.days, rth=cfg.rth,
                                  max_recent_filled=cfg.max_recent_filled, recent_window=cfg.recent_window,
                                  rules=BarRules(cfg.bad_bar_move, cfg.bad_bar_volume), bad_bars=cfg.bad_bars)
        if info.skip_reason:
            raise Skipped(info.skip_reason, info.skip_code or "data")
        if len(bars) < cfg.lookback:
            raise Skipped(f"only {len(bars)} bars in the last {cfg.days} session(s), the lookback needs "
                          f"{cfg.lookback}: raise days or lower lookback", "data")
        plan = plan_horizon(bars.index[-1], cfg.horizon, cfg.rth, cfg.near_close, cfg.min_horizon)
        events = events_in_window(now, plan.times, cfg.events, cfg.event_before, cfg.event_after)
        if events and cfg.event_action == "skip":
            raise Skipped(f"inside the quiet window of event(s) {', '.join(events)} (event_action: skip)", "event")
        extended = latest_extended(frame, bars, data_asof if data_asof is not None else now, cfg.rth)
        return Context(now=now, bars=bars, info=info, plan=plan, events=tuple(events), extended=extended)

    def sample(self, contexts: Sequence[Context], n_paths: int | None = None,
               seed: int | None = ..., check: bool = True,  # type: ignore[assignment]
               on_origins: Callable[[int], None] | None = None) -> list[np.ndarray]:
        """Raw Kronos paths [N, H, 6] for each context: one engine call per (lookback, horizon) shape, each
        origin seeded by ``origin_seed``. With ``check``, non-finite or non-positive prices are a ModelError
        (a backtest checks per origin instead, so one bad forecast does not stop the run). ``on_origins(k)``
        is told as the engine's decode steps complete another k origins' worth of work (a backtest's bar moves
        within an engine call); the k add up to len(contexts)."""
        cfg = self.cfg
        n = cfg.n_samples if n_paths is None else n_paths
        seed = cfg.seed if seed is ... else seed
        out: list[np.ndarray | None] = [None] * len(contexts)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, ctx in enumerate(contexts):
            groups.setdefault((min(cfg.lookback, len(ctx.bars)), len(ctx.times)), []).append(i)
        for idx in groups.values():
            arrays = [engine_inputs(contexts[i].bars.iloc[-cfg.lookback:], contexts[i].times, cfg.time_label)
                      for i in idx]
            hook = origin_ticker(len(idx), on_origins) if on_origins is not None else None
            if hook is not None:
                self.sampler.progress = hook
            try:
                paths = self.sampler.sample_batch(
                    np.stack([a[0] for a in arrays]), np.stack([a[1] for a in arrays]),
                    np.stack([a[2] for a in arrays]), n_paths=n, temperature=cfg.temperature, top_k=cfg.top_k,
                    top_p=cfg.top_p, seeds=[origin_seed(seed, contexts[i].first_minute) for i in idx])
            finally:
                if hook is not None:
                    self.sampler.progress = None
            if hook is not None:
                hook(1, 1)  # all of this call's origins are done (an engine that reports no steps tells it here)
            for j, i in enumerate(idx):
                out[i] = check_paths(paths[j]) if check else paths[j]
        return out  # type: ignore[return-value]

    def metrics(self, ctx: Context, repaired: np.ndarray, repair: dict[str, Any],
                percentiles: Sequence[float] | None = None) -> Metrics:
        cfg = self.cfg
        return compute_metrics(repaired, ctx.bars, ctx.now_close,
                               percentiles=cfg.percentiles if percentiles is None else percentiles,
                               mid_window=cfg.mid_window, mid_kind=cfg.mid_kind, vol_window=cfg.vol_window,
                               vwap_mode=cfg.vwap_mode, new_session=ctx.plan.next_session, repair=repair)

    def calibrate(self, metrics: Metrics, close_paths: np.ndarray, notes: list[str]) -> dict[str, Any] | None:
        """Calibrated values beside the raw ones, when a calibrator fitted for this horizon is configured."""
        cal, h = self.calibrator, metrics.horizon_min
        if cal is None:
            return None
        if cal.horizon_min != h:
            notes.append(f"calibrator fitted for {cal.horizon_min}-minute forecasts; not applied to this "
                         f"{h}-minute one")
            return None
        levels = tuple(q / 100 for q in self.cfg.percentiles)
        both = cal.side_by_side(metrics.p_up, metrics.now_close, close_paths, p_hit_vwap=metrics.p_hit_vwap,
                                levels=levels)
        calibrated = {f"p_up_{h}m": both["p_up_cal"], "method": both["p_up_method"], "calibrator": str(self.cfg.calibrator),
                      "percentiles": {key: band for key, band in zip(metrics.percentiles, both["bands_cal"])}}
        calibrated[f"p_up_{h}m_ci"] = mapped_interval(cal.apply_p_up, metrics.p_up_ci)
        if "p_hit_vwap_cal" in both:
            calibrated[f"p_hit_vwap_{h}m"] = both["p_hit_vwap_cal"]
            calibrated[f"p_hit_vwap_{h}m_ci"] = mapped_interval(cal.apply_p_hit_vwap, metrics.p_hit_vwap_ci)
        return calibrated

    def online_and_trust(self, metrics: Metrics, close_paths: np.ndarray, calibrated: dict[str, Any] | None,
                         notes: list[str]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """The online values (raw, walk-forward and online side by side) and the trust block of one forecast."""
        from forecast.online import online_values
        from forecast.trust import trust_block

        h, online = metrics.horizon_min, self.online
        keys = list(metrics.percentiles)
        if online is not None and not online.matches(h, tuple(float(k[1:]) / 100 for k in keys)):
            if online.learnt:  # a state that has learnt nothing yet is no calibration to miss
                notes.append(f"online calibration kept for {online.horizon}-minute forecasts at levels "
                             f"{list(online.levels)}; not applied to this one")
            online = None
        cal = self.calibrator if calibrated is not None else None
        values = None if online is None else online_values(online, cal, h, metrics.p_up, metrics.p_hit_vwap,
                                                           close_paths, metrics.now_close, keys, calibrated)
        trust = trust_block(calibrator=cal, online=online, recent=self.recent, p_up=metrics.p_up,
                            n_paths=int(close_paths.shape[0]), settings=_settings(self.cfg))
        return values, trust

    def forecast(self, frame: pd.DataFrame, now: pd.Timestamp, *, data_asof: pd.Timestamp | None = None,
                 provenance: dict[str, Any] | None = None, market_open: bool = True,
                 status_note: str | None = None, timings: dict[str, float] | None = None,
                 stage: Callable[[str], ContextManager[Any]] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Forecast:
        """The whole forecast at ``now`` from raw canonical bars (those not closed by then are ignored).
        ``stage(name)`` wraps each step ("prepare", "loading", "sampling": a terminal's stage lines and the time
        budget's account of them); ``progress(done, total)`` follows the engine's decode steps."""
        stage = stage or (lambda name: contextlib.nullcontext())
        timings = dict(timings or {})
        t0 = time.perf_counter()
        with stage("prepare"):
            ctx = self.prepare(frame, now, data_asof)
        timings["prepare"] = time.perf_counter() - t0
        with stage("loading"):
            timings["model_load"] = self.load()
        t1 = time.perf_counter()
        sampling = None
        with stage("sampling"):
            self.sampler.progress = progress
            try:
                if self.cfg.n_samples == "auto":
                    # the run's budget started before the data was fetched; keep a share of it for metrics and files
                    deadline = t0 - timings.get("data", 0.0) + self.cfg.time_budget * (1.0 - AUTO_RESERVE)
                    raw, sampling = self.sample_auto(ctx, deadline)
                else:
                    raw = self.sample([ctx])[0]
            finally:
                self.sampler.progress = None
        timings["sample"] = time.perf_counter() - t1
        return self.finish(ctx, raw, provenance=provenance, market_open=market_open, status_note=status_note,
                           timings=timings, started=t0, sampling=sampling)

    def sample_auto(self, ctx: Context, deadline: float) -> tuple[np.ndarray, dict[str, Any]]:
        """n_samples: auto. Raw paths drawn in chunks until P(up) is precise enough (forecast/auto_samples.py),
        and the summary's ``sampling`` block; ``deadline`` on time.perf_counter. The paths equal those of a
        fixed run of the same N with the same seed."""
        cfg = self.cfg
        values, x_stamp, y_stamp = engine_inputs(ctx.bars.iloc[-cfg.lookback:], ctx.times, cfg.time_label)
        with self.sampler.open_stream(values, x_stamp, y_stamp, temperature=cfg.temperature, top_k=cfg.top_k,
                                      top_p=cfg.top_p, seed=origin_seed(cfg.seed, ctx.first_minute)) as stream:
            result = sample_until_precise(lambda n: check_paths(stream.draw(n)), ctx.now_close,
                                          cfg.p_up_precision, cfg.max_samples, deadline)
        return result.paths, result.block(cfg.p_up_precision, cfg.max_samples)

    def finish(self, ctx: Context, raw_paths: np.ndarray, *, provenance: dict[str, Any] | None = None,
               market_open: bool = True, status_note: str | None = None, timings: dict[str, float] | None = None,
               started: float | None = None, sampling: dict[str, Any] | None = None) -> Forecast:
        """Repair the paths once, then metrics, calibrated values and the summary document."""
        repaired, repair = repair_paths(raw_paths)
        metrics = self.metrics(ctx, repaired, repair)
        notes = list(ctx.plan.notes)
        if status_note and not market_open and not ctx.plan.next_session:
            notes.insert(0, f"{status_note}: forecast from the last close")
        provenance = {**(provenance or {}), **ctx.info.to_dict()}
        if provenance.get("note"):
            notes.append(provenance["note"])
        notes += ctx.info.notes()
        if ctx.extended is not None:
            notes.insert(0, ctx.extended.note())
        calibrated = self.calibrate(metrics, repaired[:, :, 3], notes)
        timings = dict(timings or {})
        if started is not None:
            timings["total"] = timings.get("data", 0.0) + time.perf_counter() - started
        vs_ext = None if ctx.extended is None else relative_to(ctx.extended, repaired[:, -1, 3], len(ctx.times))
        summary = build_summary(cfg=self.cfg, ctx=ctx, metrics=metrics, calibrated=calibrated, notes=notes,
                                engine=self.engine_info(), provenance=provenance, timings=timings,
                                market_open=market_open, sampling=sampling, vs_ext=vs_ext)
        summary["online"], summary["trust"] = self.online_and_trust(metrics, repaired[:, :, 3], calibrated, notes)
        return Forecast(ctx, repaired, metrics, calibrated, summary, timings)


def _settings(cfg: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(vars(cfg))


def mapped_interval(fn: Any, ci: list[float] | None) -> list[float] | None:
    """The Monte Carlo interval of a calibrated probability: the raw interval's endpoints mapped through the
    calibration map. Platt and isotonic maps are monotone, so the image of [lo, hi] is the interval between the
    mapped endpoints (sorted: a Platt slope below 0 turns the map around)."""
    return None if ci is None else list(map_interval(ci, [fn]))


def origin_ticker(n_origins: int, tell: Callable[[int], None]) -> Callable[[int, int], None]:
    """An engine progress hook (decode steps done of total) that tells ``tell`` how many more of ``n_origins``
    origins' worth of work are done; the counts told add up to n_origins when the last step is reported."""
    shown = [0]

    def hook(done: int, total: int) -> None:
        k = n_origins * done // total
        if k > shown[0]:
            tell(k - shown[0])
            shown[0] = k

    return hook


def check_paths(paths: np.ndarray) -> np.ndarray:
    """Paths a market allows, or a ModelError: every value finite, every price positive."""
    bad = ~np.isfinite(paths)
    if bad.any():
        raise ModelError(f"the model produced {int(bad.sum())} non-finite values; the checkpoint or the dtype "
                         "may be broken")
    low = float(paths[..., PRICE_FIELDS].min())
    if low <= 0:
        raise ModelError(f"the model produced a price of {low:.6g} (prices must be positive); the context or "
                         "the checkpoint is unusable")
    return paths


def load_sampler(cfg: Config) -> PathSampler:
    """The Kronos engine for the config; any failure to find or fit the weights is a ModelError."""
    import torch

    from kronos import CheckpointError, KronosPathSampler

    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise SettingsError(f"config key 'device' is {cfg.device}, but this PyTorch ({torch.__version__}) "
                                     "sees no CUDA GPU: use device auto or cpu, or run setup_venv.sh on the GPU "
                                     "machine")
    if cfg.device == "mps" and not torch.backends.mps.is_available():
        raise SettingsError("config key 'device' is mps, but this machine has no Apple GPU: use auto or cpu")
    try:
        return KronosPathSampler.from_pretrained(
            model=cfg.model, tokenizer=cfg.tokenizer, device=None if cfg.device == "auto" else cfg.device,
            max_context=cfg.max_context, model_revision=cfg.model_revision,
            tokenizer_revision=cfg.tokenizer_revision, dtype=cfg.dtype)
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
