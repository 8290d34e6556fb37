"""The walk-forward on a Ray cluster: shards (symbol x session x forecaster group) run by Kronos actors that
each keep a warm model, and by plain tasks for the baselines; this process collects them into the store.

Only this process writes: each finished shard becomes one part file of its symbol's ResultStore (written whole,
atomically), minus any record the store already holds, so every origin is stored exactly once. Faults:
an actor that dies is restarted by Ray and its shard retried (``max_restarts`` / ``max_task_retries``); a shard
whose actor is gone for good is handed to another one; a baseline task whose worker dies is retried by Ray.
A finished shard is in the store and never submitted again; an interrupted run resumes at the first
unfinished shard. Ray is imported here only, so the one-process backtest never needs it.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import pandas as pd

from evaluation.universe import SymbolJob
from evaluation.shards import BASELINES, FAULT_ENV, KRONOS, Shard, plan_shards, shard_done, shard_frame
from evaluation.store import RESULTS, ResultStore, record_shards
from marketdata.frame import DataSourceError, first_line

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3  # driver-side resubmissions of a shard whose actor died beyond Ray's own restarts
TIMINGS_EVERY_S = 10.0  # shard timings go to run.json at most this often (and when the run ends or stops)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        from forecast.errors import ConfigError

        raise ConfigError("--ray needs Ray: pip install -r requirements-ray.txt (or bash setup_venv.sh --ray)") \
            from None
    return ray


JOIN_TIMEOUT_S = 20.0  # joining a cluster takes seconds; Ray itself would retry an unreachable one for minutes


class _JoinTimeout(BaseException):
    """Raised by the alarm inside ray.init; a BaseException, so Ray's own retry loop (except Exception) lets
    it through."""


def connect(address: str | None, timeout_s: float = JOIN_TIMEOUT_S) -> bool:
    """Join the cluster at ``address`` (auto or host:port), or start a local Ray; True when this call
    started or joined it (and so should end it). An already initialised Ray (tests) is used as it is. A cluster
    that cannot be reached is a DataSourceError (exit 4) within about ``timeout_s`` (and one attempt of Ray's)."""
    if address not in (None, "auto"):
        _probe(address, timeout_s)
    ray = import_ray()
    if ray.is_initialized():
        return False
    if address is None:  # a local Ray for this run: starting it may take a while on a busy machine
        ray.init(include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING)
        return True
    try:
        with _alarm(timeout_s):
            ray.init(address=address, include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING)
    except (_JoinTimeout, ConnectionError) as exc:
        if ray.is_initialized():
            ray.shutdown()
        reason = f"no answer within {timeout_s:g} s" if isinstance(exc, _JoinTimeout) else first_line(exc)
        raise DataSourceError(f"--ray-address {address}: cannot join a Ray cluster there ({reason}); check the "
                              "address, or start one with `ray start --head`") from None
    return True


def _probe(address: str, timeout_s: float) -> None:
    """A TCP connection to host:port, so that a refused or unroutable address fails at once, in one line."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=min(timeout_s, 10.0)).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DataSourceError(f"--ray-address {address}: no Ray cluster answers there ({reason}); check the "
                              "address, or start one with `ray start --head`") from None


@contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Raise _JoinTimeout in the main thread after ``seconds`` (nothing elsewhere, or where SIGALRM is
    missing). It lands once Ray's blocking call returns to Python: Ray's attempts are bounded, so soon after."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise _JoinTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def worker_layout(cfg: Any, n_kronos_shards: int) -> tuple[int, float, float]:
    """(Kronos workers, CPUs each, GPUs each) from the settings and the cluster's resources: by default one
    worker per GPU, or, without GPUs, one per CPU slot but one (left to the baseline tasks)."""
    ray = import_ray()
    res = ray.cluster_resources()
    gpus, cpus = float(res.get("GPU", 0)), float(res.get("CPU", 1))
    per_gpu = cfg.ray_worker_gpus if cfg.ray_worker_gpus is not None else (1.0 if gpus >= 1 else 0.0)
    per_cpu = float(cfg.ray_worker_cpus)
    if cfg.ray_workers:
        n = cfg.ray_workers
    elif per_gpu > 0:
        n = max(1, int(gpus // per_gpu))
    else:
        n = max(1, int(cpus // per_cpu) - 1)
    return min(n, max(n_kronos_shards, 0)), per_cpu, per_gpu


def _remote_kinds(ray: Any) -> tuple[Any, Any]:
    """The actor class and the baseline task, made remote here so importing this module needs no Ray."""

    class KronosWorker:
        """Holds the Kronos forecasters (one engine per checkpoint) warm across shards."""

        def __init__(self, cfg: Any, specs: list[dict[str, Any]], threads: int, fault: str | None) -> None:
            import torch

            from evaluation.forecasters import build_forecasters

            torch.set_num_threads(max(1, threads))
            self.cfg, self.fault = cfg, fault
            self.forecasters = build_forecasters(cfg, [], specs)

        def run(self, shard: Shard, frame: pd.DataFrame) -> dict[str, Any]:
            from evaluation.shards import maybe_die, run_shard

            maybe_die(shard, self.fault)
            return run_shard(shard, frame, self.cfg, self.forecasters)

    def baseline_shard(shard: Shard, frame: pd.DataFrame, cfg: Any, fault: str | None) -> dict[str, Any]:
        from evaluation.forecasters import build_forecasters
        from evaluation.shards import maybe_die, run_shard

        maybe_die(shard, fault)
        return run_shard(shard, frame, cfg, build_forecasters(cfg, list(shard.forecasters), []))

    return ray.remote(KronosWorker), ray.remote(baseline_shard)


class _Collector:
    """Turns finished shards into part files, the run record and the progress bar."""

    def __init__(self, jobs: Sequence[SymbolJob], total: int, progress: bool) -> None:
        from tqdm import tqdm

        self.stores = {j.symbol: ResultStore(j.out_dir / RESULTS) for j in jobs}
        self.dirs = {j.symbol: j.out_dir for j in jobs}
        self.done = {s: set(store.load()) for s, store in self.stores.items()}
        self.bar = tqdm(total=total, desc="shards", unit="shard", file=sys.stderr,
                        disable=not progress, smoothing=0.1)
        self.origins = 0
        self.timings: dict[str, dict[str, Any]] = {}
        self.flushed = time.monotonic()

    def finish(self, shard: Shard, result: dict[str, Any], attempts: int) -> None:
        done = self.done[shard.symbol]
        new = [r for r in result["records"] if (r["forecaster"], r["origin"]) not in done]
        self.stores[shard.symbol].write_part(shard.part, new)
        done |= {(r["forecaster"], r["origin"]) for r in new}
        self.timings.setdefault(shard.symbol, {})[shard.part] = {**result["timing"], "attempts": attempts}
        self.origins += len(shard.origins)
        self.bar.update(1)
        if time.monotonic() - self.flushed > TIMINGS_EVERY_S:
            self.flush()

    def flush(self) -> None:
        """Timings into run.json in batches: rewriting it per shard would cost O(shards^2) on a long run."""
        for symbol, timings in self.timings.items():
            record_shards(self.dirs[symbol], timings)
        self.timings, self.flushed = {}, time.monotonic()

    def close(self) -> None:
        self.flush()
        self.bar.close()


def run_on_ray(jobs: Sequence[SymbolJob], baselines: Sequence[str], kronos_specs: Sequence[dict[str, Any]],
               kronos_names: Sequence[str], progress: bool = True) -> dict[str, Any]:
    """Run every unfinished shard of every symbol (at least one) on the connected cluster; returns what the run
    did. Each job's run.json must already pin its settings (store.check_run_file)."""
    ray = import_ray()
    base_cfg = jobs[0].cfg  # the workers' settings (a shard sets its symbol) and the worker layout's
    groups = {BASELINES: list(baselines), KRONOS: list(kronos_names)}
    frames = {j.symbol: j.frame for j in jobs}
    cfgs = {j.symbol: j.cfg for j in jobs}
    shards = [s for j in jobs for s in plan_shards(j.symbol, j.frame, j.cfg, groups)]
    collector = _Collector(jobs, total=len(shards), progress=progress)
    todo = [s for s in shards if not shard_done(s, collector.done[s.symbol])]
    collector.bar.update(len(shards) - len(todo))  # finished earlier
    kronos_todo = deque(s for s in todo if s.group == KRONOS)
    base_todo = deque(s for s in todo if s.group == BASELINES)
    fault = os.environ.get(FAULT_ENV) or None
    Worker, baseline_task = _remote_kinds(ray)
    n_workers, per_cpu, per_gpu = worker_layout(base_cfg, len(kronos_todo))
    t0 = time.perf_counter()
    pending: dict[Any, tuple[Shard, Any, int]] = {}  # ref -> (shard, actor or None, attempt)
    actors: list[Any] = []
    idle: deque = deque()
    max_tasks = max(4, 2 * int(ray.cluster_resources().get("CPU", 1)))  # baseline tasks in flight at once
    try:
        if kronos_todo:  # the actors first, so that the baseline tasks take the CPU slots left over
            for _ in range(n_workers):
                actor = Worker.options(num_cpus=per_cpu, num_gpus=per_gpu, max_restarts=MAX_ATTEMPTS,
                                       max_task_retries=MAX_ATTEMPTS).remote(base_cfg, list(kronos_specs),
                                                                              int(per_cpu), fault)
                actors.append(actor)
                idle.extend([actor, actor])  # two shards in flight per actor: it never waits for this process
        attempts: dict[str, int] = {}

        def feed() -> None:
            while kronos_todo and idle:
                s, actor = kronos_todo.popleft(), idle.popleft()
                attempts[s.id] = attempts.get(s.id, 0) + 1
                ref = actor.run.remote(s, shard_frame(frames[s.symbol], s, cfgs[s.symbol]))
                pending[ref] = (s, actor, attempts[s.id])
            tasks = sum(1 for _, a, _ in pending.values() if a is None)
            while base_todo and tasks < max_tasks:  # a bounded window: few objects and a short wait list
                s = base_todo.popleft()
                ref = baseline_task.options(num_cpus=1, max_retries=MAX_ATTEMPTS).remote(
                    s, shard_frame(frames[s.symbol], s, cfgs[s.symbol]), cfgs[s.symbol], fault)
                pending[ref] = (s, None, 1)
                tasks += 1

        feed()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            shard, actor, attempt = pending.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as exc:  # the actor is gone beyond its restarts
                log.warning("shard %s: worker lost (%s); handing it to another worker", shard.id,
                            str(exc).splitlines()[0][:200])
                actors[:] = [a for a in actors if a is not actor]
                idle = deque(a for a in idle if a is not actor)
                if attempt >= MAX_ATTEMPTS or not actors:
                    raise RuntimeError(f"shard {shard.id} failed {attempt} times; rerun to resume") from None
                kronos_todo.appendleft(shard)
                feed()
                continue
            collector.finish(shard, result, attempt)
            if actor is not None:
                idle.append(actor)
            feed()
            if actor is not None and not kronos_todo and not any(a is actor for _, a, _ in pending.values()):
                ray.kill(actor)  # its slot goes to the baseline tasks still waiting
                actors[:] = [a for a in actors if a is not actor]
                idle = deque(a for a in idle if a is not actor)
                feed()
    finally:
        collector.close()
        for actor in actors:
            ray.kill(actor)
    seconds = time.perf_counter() - t0
    return {"shards": len(shards), "shards_run": len(todo), "origins_run": collector.origins,
            "workers": n_workers, "worker_cpus": per_cpu, "worker_gpus": per_gpu, "seconds": round(seconds, 3)}
