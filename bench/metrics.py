#!/usr/bin/env python
"""Cost of the Prometheus metrics: the per-request update on the request path, and a scrape. One process per mode,
no server, no database.

    .venv/bin/python bench/metrics.py [--calls 200000] [--models 10]

Times `routing.metrics.observe(row)`, what `routing.request_log.record` adds to every request, on a realistic mix
of rows (--models models with two instances each, mostly successful, a third of them streamed with a TTFT, tokens,
cost, a retry now and then), in both of prometheus_client's modes, each in a process of its own (the mode is chosen
when prometheus_client is imported): values in this process only, and multiprocess mode (PROMETHEUS_MULTIPROC_DIR,
values in memory-mapped files, what several workers need). Every label combination is seen once before timing, as
in a worker that has served a while. Target: <= 0.05 ms per request. Also times what is off the request path: a
worker publishing its own figures (every second) and a whole scrape (every 15 s or so, on the answering worker).
Times are wall-clock (perf_counter_ns), garbage collector on, as in the gateway; percentiles are nearest-rank. "CPU"
is the mean process CPU time of the same calls made again without timing each, which other processes' preemption of
this one (a busy machine) does not inflate.
"""

import argparse
import asyncio
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_MS = 0.05


def percentile(sorted_values, p):
    """Return the nearest-rank p-th percentile of an ascending list."""
    return sorted_values[max(1, math.ceil(p / 100 * len(sorted_values))) - 1]


def rows(count, models):
    """Return `count` RequestLog rows as the gateway makes them, cycling through a realistic mix."""
    made = []
    outcomes = [("ok", 200)] * 17 + [("upstream_error", 502), ("rate_limited", 429), ("client_error", 400)]
    for n in range(count):
        model = f"bench-{n % models}"
        stream = n % 3 == 0
        outcome, status = outcomes[n % len(outcomes)]
        ok = outcome == "ok"
        made.append({
            "request_id": uuid.uuid4(), "endpoint": "chat.completions", "served_model": model,
            "instance_id": f"{model}-{n % 2}", "stream": stream, "outcome": outcome, "status_code": status,
            "prompt_tokens": 120 if ok else None, "completion_tokens": 40 if ok else None,
            "cost_usd": Decimal("0.00012300") if ok else None, "latency_ms": 180.0 + n % 900,
            "ttft_ms": 90.0 + n % 300 if stream and ok else None, "attempts": 2 if n % 50 == 0 else 1,
        })  # fmt: skip
    return made


def measure(calls, models):
    """Time observe, publish and a scrape in this process's mode; return the figures."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatvault_site.settings")
    os.environ.setdefault("SECRET_KEY", "bench-only-secret-key")
    os.environ.setdefault("DEBUG", "false")
    os.environ.setdefault("CHATVAULT_ENCRYPTION_KEYS", "YmVuY2gtb25seS1rZXktbm90LWEtc2VjcmV0LTAwMDA=")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from routing import metrics

    if metrics._directory():
        metrics.prepare_directory(metrics._directory())
    batch = rows(calls, models)
    for row in batch[: models * 2 * 20 * 3]:  # every label combination once, as in a worker that served a while
        metrics.observe(row)
    observe = metrics.observe
    perf = time.perf_counter_ns
    samples = []
    for row in batch:
        start = perf()
        observe(row)
        samples.append(perf() - start)
    samples.sort()
    # CPU time of the same calls without the per-call clock reads: what preemption by other processes does not skew.
    cpu = time.process_time_ns()
    for row in batch:
        observe(row)
    cpu_us = (time.process_time_ns() - cpu) / len(batch) / 1000
    publish = []
    for _ in range(200):
        start = perf()
        metrics.publish()
        publish.append(perf() - start)
    publish.sort()
    scrapes = []
    for _ in range(20):
        start = perf()
        text = asyncio.run(metrics.scrape())
        scrapes.append(perf() - start)
    scrapes.sort()
    return {
        "mode": "multiprocess" if metrics._directory() else "single process",
        "calls": calls,
        "observe_us": {f"p{p}": percentile(samples, p) / 1000 for p in (50, 90, 99)},
        "observe_mean_us": sum(samples) / len(samples) / 1000,
        "observe_cpu_us": cpu_us,
        "publish_us_p50": percentile(publish, 50) / 1000,
        "scrape_ms_p50": percentile(scrapes, 50) / 1e6,
        "scrape_bytes": len(text),
    }


def run_mode(multiprocess, calls, models):
    """Measure one mode in a process of its own; return its figures."""
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with tempfile.TemporaryDirectory(prefix="chatvault-bench-metrics-") as directory:
        if multiprocess:
            env["PROMETHEUS_MULTIPROC_DIR"] = directory
        command = [sys.executable, __file__, "--child", "--calls", str(calls), "--models", str(models)]
        out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    """Measure both modes and print the figures against the target."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.calls, args.models)))
        return
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
          f"{args.calls} rows, {args.models} models x 2 instances")  # fmt: skip
    worst = 0.0
    for multiprocess in (False, True):
        figures = run_mode(multiprocess, args.calls, args.models)
        observe = figures["observe_us"]
        worst = max(worst, observe["p50"] / 1000)
        print(f"{figures['mode']:>15}: observe p50 {observe['p50']:.1f} us, p90 {observe['p90']:.1f} us, "
              f"p99 {observe['p99']:.1f} us, mean {figures['observe_mean_us']:.1f} us, "
              f"CPU {figures['observe_cpu_us']:.1f} us; "
              f"publish {figures['publish_us_p50']:.0f} us; scrape {figures['scrape_ms_p50']:.1f} ms "
              f"({figures['scrape_bytes'] / 1024:.0f} KiB)")  # fmt: skip
    verdict = "meets" if worst <= TARGET_MS else "MISSES"
    print(f"per-request update: {worst * 1000:.1f} us at p50 in the slower mode, {verdict} the {TARGET_MS} ms target")


if __name__ == "__main__":
    main()
