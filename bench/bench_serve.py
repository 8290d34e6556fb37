"""The live service under a replayed session: latency from a bar's arrival to its JSON on every output (the
latest file, a Redis subscriber, an SSE client of the web app over HTTP) against the sampling time, the time per
forecast against the 60 s a minute allows, and RSS over the session. Prints Markdown tables for the README.

    .venv/bin/python bench/bench_serve.py [--forecasts 390] [--n-samples 100] [--shape small] [--bars FILE]

The session is played closed-loop: each bar is handed to the book as soon as the previous one's forecast has
reached every output, so 390 forecasts take 390 forecast times instead of 6.5 hours; keeping up at speed 1 means
every forecast's arrival-to-last-output time is under 60 s. The forecasting loop, outputs, hub, web app (uvicorn
on 127.0.0.1) and Redis (Debian's redis-server on a free port, when installed) are the service's own.
Needs the test environment (`bash setup_venv.sh --test`): the random-weight checkpoint is written with the
reference package.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_bars(path: Path | None, session: str, count: int = 1):
    """Bars of ``count`` sessions from ``session`` on to replay, and the bars before them (history)."""
    import pandas as pd

    from marketdata import calendar as mcal
    from marketdata.files import read_bars_file

    if path is None:
        from support.live_support import canonical_bars

        frame = canonical_bars(("2025-06-02", "2025-06-03", "2025-06-04", "2025-06-05"))
        session = "2025-06-05"
    else:
        frame = read_bars_file(path)
    labels = mcal.xnys().sessions_in_range(session, pd.Timestamp(session) + pd.Timedelta(days=3 * count + 7))[:count]
    windows = [mcal.session_window(label) for label in labels]
    inside = sum(((frame.index >= a) & (frame.index < b)) for a, b in windows).astype(bool)
    return frame[frame.index < windows[0][0]], frame[inside], session


def start_redis(tmp: Path):
    server = shutil.which("redis-server")
    if server is None:
        return None, None
    import redis

    port = free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(500):
        try:
            client.ping()
            return proc, f"redis://127.0.0.1:{port}/0"
        except redis.ConnectionError:
            time.sleep(0.02)
    proc.kill()
    return None, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forecasts", type=int, default=390, help="bars of each session to play (390: all)")
    parser.add_argument("--n-samples", type=int, default=100)
    parser.add_argument("--shape", default="small", help="checkpoint shape: small (Kronos-small) or tiny")
    parser.add_argument("--bars", type=Path, default=None, help="bars file (default: synthetic sessions)")
    parser.add_argument("--session", default="2025-06-02", help="session of --bars to replay")
    parser.add_argument("--lookback", type=int, default=480)
    parser.add_argument("--sessions", type=int, default=1, help="consecutive sessions to replay")
    parser.add_argument("--skip", type=int, default=0,
                        help="first bars of the (first) session to hand in as context, not forecast (e.g. 350: "
                             "only the session's last 40 minutes)")
    parser.add_argument("--outputs", default="file,sse,redis", help="outputs to wait for and measure")
    args = parser.parse_args()
    from live.memory import bound_kernel_caches

    bound_kernel_caches()  # as serve.py does, before torch runs a kernel

    import httpx
    import pandas as pd
    import torch

    from app.config import build_config
    from support.kronos_checkpoints import write_checkpoint_pair
    from live import outputs as outputs_mod
    from live.service import listen_socket
    from web.server import start_web
    from support.live_support import ManualClock, make_loop

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        model, tokenizer = write_checkpoint_pair(tmp / "ckpt", shape=args.shape, seed=0)
        history, minutes, session = session_bars(args.bars, args.session, args.sessions)
        minutes = minutes.iloc[:args.forecasts * args.sessions]
        history, minutes = pd.concat([history, minutes.iloc[:args.skip]]), minutes.iloc[args.skip:]
        wanted = args.outputs.split(",")
        redis_proc, redis_url = start_redis(tmp) if "redis" in wanted else (None, None)
        cfg = build_config({"model": str(model), "tokenizer": str(tokenizer), "device": "cpu",
                            "n_samples": args.n_samples, "seed": 0, "live_out": str(tmp / "live"),
                            "lookback": args.lookback,
                            "redis_url": redis_url, "time_budget": 600.0}, {}, script="serve")
        clock = ManualClock(minutes.index[0])
        loop, hub, book, _, _ = make_loop(cfg, clock=clock)
        loop.outputs.redis and setattr(loop.outputs.redis, "max_backoff_s", 30.0)

        received: dict[str, dict[str, float]] = {}
        lock = threading.Lock()

        def mark(asof: str, output: str) -> None:
            with lock:
                received.setdefault(asof, {})[output] = time.monotonic()

        real_publish = outputs_mod.publish

        def timed_publish(out_dir, symbol, fc, **kwargs):
            result = real_publish(out_dir, symbol, fc, **kwargs)
            mark(fc.summary["asof"], "file")
            return result

        outputs_mod.publish = timed_publish

        threads: list[threading.Thread] = []
        sock = listen_socket("127.0.0.1", 0)
        port = sock.getsockname()[1]
        server = start_web(hub, None, sock, threads)

        def sse_client() -> None:
            with httpx.Client(timeout=None) as client, client.stream("GET", f"http://127.0.0.1:{port}/stream") as r:
                event = None
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "forecast":
                        mark(json.loads(line[6:])["summary"]["asof"], "sse")

        def redis_client() -> None:
            import redis

            sub = redis.Redis.from_url(redis_url).pubsub()
            sub.subscribe("kronos:QQQ")
            try:
                for message in sub.listen():
                    if message["type"] == "message":
                        mark(json.loads(message["data"])["asof"], "redis")
            except redis.ConnectionError:  # the bench stopped the server
                pass

        for target in ((sse_client,) if "sse" in wanted else ()) + ((redis_client,) if redis_url else ()):
            threading.Thread(target=target, daemon=True).start()
        while "sse" in wanted and hub.health()["subscribers"] < 1:
            time.sleep(0.01)
        time.sleep(0.3)  # the Redis subscription

        outputs = ("file",) + (("sse",) if "sse" in wanted else ()) + (("redis",) if redis_url else ())
        book.upsert("QQQ", history)
        loop.done["QQQ"] = history.index[-1]  # history is context, not a bar to forecast
        runner = threading.Thread(target=loop.run, daemon=True)
        runner.start()
        rows, rss = [], [rss_mb()]
        t_session = time.monotonic()
        for minute in minutes.index:
            asof = (minute + pd.Timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
            skips_before = len(loop.skips)
            clock.t = minute + pd.Timedelta(minutes=1, seconds=2)
            book.upsert("QQQ", minutes.loc[[minute]])
            arrived = book.arrival("QQQ", minute)
            while True:
                with lock:
                    got = dict(received.get(asof, {}))
                published = (hub.latest("QQQ") or {}).get("asof") == asof
                if (published and all(o in got for o in outputs)) or len(loop.skips) > skips_before:
                    break
                time.sleep(0.001)
            if len(loop.skips) > skips_before:
                rows.append({"asof": asof, "skipped": loop.skips[-1][2]})
            else:
                sample = hub.latest("QQQ")["timings_s"]["sample"]
                rows.append({"asof": asof, "sample": sample, **{o: got[o] - arrived for o in outputs}})
            rss.append(rss_mb())
        session_s = time.monotonic() - t_session
        loop.stop.set()
        book.poke()
        server.should_exit = True
        if loop.outputs.redis is not None:
            loop.outputs.redis.close(1)
        if redis_proc is not None:
            redis_proc.terminate()

    done = [r for r in rows if "sample" in r]
    skipped = [r for r in rows if "skipped" in r]
    load = os.getloadavg()[0]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {load:.1f} at the end "
          f"| torch {torch.__version__}, {torch.get_num_threads()} threads | device cpu | N = {args.n_samples}, "
          f"lookback {cfg.lookback}, horizon {cfg.horizon}, Kronos-{args.shape} shapes (random weights) | "
          f"session {session}, {len(rows)} bars: {len(done)} forecasts, {len(skipped)} skipped\n")

    def q(values, p):
        return sorted(values)[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]

    print("| measure (s) | median | p90 | p99 | max |")
    print("|---|---|---|---|---|")
    series = {"sampling (engine call)": [r["sample"] for r in done]}
    for o in outputs:
        series[f"bar arrival -> JSON in {o}"] = [r[o] for r in done]
        series[f"  minus sampling ({o})"] = [r[o] - r["sample"] for r in done]
    last = [max(r[o] for o in outputs) for r in done]
    series["bar arrival -> last output"] = last
    for name, values in series.items():
        print(f"| {name} | {statistics.median(values):.3f} | {q(values, 90):.3f} | {q(values, 99):.3f} | "
              f"{max(values):.3f} |")
    warm = rss[min(10, len(rss) - 1)]
    print(f"\nkeeps up at speed 1: {'yes' if max(last) < 60 else 'NO'} (slowest forecast {max(last):.1f} s of the "
          f"60 s a minute allows; the whole session took {session_s / 60:.1f} min of wall time)")
    print(f"RSS: {rss[0]:.0f} MB before the first bar, {warm:.0f} MB after 10 forecasts, {rss[-1]:.0f} MB after "
          f"{len(rows)}: growth {rss[-1] - warm:+.1f} MB after warm-up ({rss[-1] - rss[0]:+.1f} MB in all)")
    marks = [i for i in (10, 100, 200, 300, 350, 370, 390, 500, 600, 700, 740, 760) if i < len(rss) - 1]
    marks.append(len(rss) - 1)
    print("RSS (MB) after n bars: " + ", ".join(f"{i}: {rss[i]:.0f}" for i in marks))
    if skipped:
        codes = Counter(r["skipped"].split(":")[0] for r in skipped)  # loop.skips reads "<code>: <detail>"
        why = {"session_end": "the session's last minutes are fewer than min_horizon or near_close: skip",
               "overrun": "a forecast was ready later than time_budget after its bar arrived",
               "superseded": "a newer bar arrived before the forecast could start"}
        print(f"skipped: {len(skipped)} ({', '.join(f'{c} {n}' for c, n in sorted(codes.items()))})")
        for code in sorted(codes):
            example = next(r["skipped"] for r in skipped if r["skipped"].startswith(code + ":"))
            print(f"  {code}: {why.get(code, example)}")


if __name__ == "__main__":
    main()
