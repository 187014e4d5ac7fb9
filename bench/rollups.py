#!/usr/bin/env python
"""Rollups and selector stats at 10 million RequestLog rows: how long a full rollup takes, and the stats endpoint.

Run it by hand (it is not part of `make bench` or the tests; about 5-10 minutes on 2 cores), with the test
environment::

    DEBUG=false DATABASE_URL=postgres://postgres@127.0.0.1:5432/chatvault SECRET_KEY=test \
    CHATVAULT_ENCRYPTION_KEYS=dGVzdC1vbmx5LWtleS1ub3Qtc2VjcmV0LTAwMDAwMDA= \
    .venv/bin/python bench/rollups.py [--rows 10000000] [--calls 30] [--keep]

What it does, all on 127.0.0.1:

1. Recreates the Postgres database ``chatvault_bench_rollups`` on DATABASE_URL's server and migrates it (in a
   subprocess, as bench/run.py does), then configures four models of two instances each and an admin API key.
2. Loads --rows RequestLog rows (chat completions) spread evenly over the 7 days before now, across the eight
   instances, with ``INSERT ... SELECT generate_series(...)`` in batches of a million: 95 % ok, 70 % with a context
   type, latencies log-uniform from 20 ms to 3 s, a third of them streams with a TTFT; then VACUUM ANALYZE.
3. Times a full rollup (`rollup_request_logs()`: nothing rolled up yet, so the whole log) and three runs like the
   beat task's (15 minutes of lookback: the current hour again), and checks the rollups count every row once.
4. Times the stats read in-process (the rollup query and the figures), then starts one uvicorn gateway worker on the
   database and times ``GET /v1/admin/model-selector/stats`` with the admin key for each window (--calls each,
   after one warm-up call), and checks each answer's request count against the log.
5. Prints every figure and PASS/FAIL against the target (endpoint p95 ≤ 200 ms for every window). Exits 1 on a
   wrong count or a failed target. The gateway is stopped by PID on exit; the database is dropped unless --keep.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import psycopg

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # `python bench/rollups.py` puts bench/ on the path, not the repository

from run import (  # noqa: E402  (bench/run.py's database and process helpers)
    Children,
    database_urls,
    drop_database,
    recreate_database,
    start_gateway,
)

from routing.analysis import CONTEXT_TYPES  # noqa: E402  (no Django import)
from routing.stats import percentile  # noqa: E402  (no Django import)

HOST = "127.0.0.1"
BENCH_DB = "chatvault_bench_rollups"
BATCH_ROWS = 1_000_000
MODELS = 4
INSTANCES_PER_MODEL = 2
TARGET_MS = 200

# Row i of n: created at an even spacing over the 7 days before the load started; model i % 4, instance (i / 4) % 2;
# outcome ok unless i % 100 < 5; context type for 70 % of rows; latency exp(3 + 5 r) ms (20 ms to 3 s), one row in
# three a stream whose first token came after a random share of that. %(start)s is the timestamp of row 0.
INSERT_ROWS = """
INSERT INTO routing_requestlog (
    request_id, created_at, endpoint, "user", requested_model, served_model, stream, outcome, status_code, error_type,
    error_message, prompt_tokens, completion_tokens, cost_usd, latency_ms, ttft_ms, attempts, decision, context_type,
    instance_id, api_key_id
)
SELECT
    gen_random_uuid(),
    %(start)s::timestamptz + make_interval(secs => i * 604800.0 / %(total)s),
    'chat.completions', '', 'auto', 'bench-model-' || (i %% 4), i %% 3 = 0,
    CASE WHEN i %% 100 < 5 THEN 'upstream_error' ELSE 'ok' END,
    CASE WHEN i %% 100 < 5 THEN 502 ELSE 200 END,
    '', '', 100 + i %% 900, 20 + i %% 400, ((100 + i %% 900) * 0.000001)::numeric(14, 8),
    lat, CASE WHEN i %% 3 = 0 THEN lat * random() ELSE NULL END, 1, '{}'::jsonb,
    CASE WHEN i %% 10 < 7 THEN (%(types)s::text[])[1 + (i / 10) %% 9] ELSE '' END,
    'bench-model-' || (i %% 4) || '-' || ((i / 4) %% 2), NULL
FROM (SELECT i, exp(3 + 5 * random()) AS lat FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i) AS g
"""

SETUP_CODE = """
import os
from routing.auth import api_key_create
from routing.models import Model, Provider, ProviderInstance
provider = Provider.objects.create(name="bench-fake", kind="openai", openai_compatible=True,
                                   api_base="http://127.0.0.1:9/v1")
for m in range(int(os.environ["BENCH_MODELS"])):
    model = Model.objects.create(name=f"bench-model-{m}")
    for i in range(int(os.environ["BENCH_INSTANCES"])):
        inst = ProviderInstance(id=f"bench-model-{m}-{i}", model=model, provider=provider,
                                litellm_model="openai/gpt-4o-mini")
        inst.set_api_key("sk-bench-upstream-0000")
        inst.save()
print("BENCH_KEY=" + api_key_create(name="bench-admin", is_admin=True)[1])
"""


def log(message):
    """Print a progress line."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def manage(bench_url, *args, timeout=300):
    """Run manage.py on the bench database; return its stdout (raise on failure)."""
    env = dict(os.environ, DATABASE_URL=bench_url, BENCH_MODELS=str(MODELS), BENCH_INSTANCES=str(INSTANCES_PER_MODEL))
    run = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if run.returncode:
        raise RuntimeError(f"manage.py {' '.join(args[:1])} failed:\n{run.stdout}\n{run.stderr}")
    return run.stdout


def load_rows(bench_url, total):
    """Insert `total` RequestLog rows over the 7 days before now; return the seconds it took."""
    started = time.perf_counter()
    with psycopg.connect(bench_url, autocommit=True) as conn:
        start = conn.execute("SELECT now() - interval '7 days'").fetchone()[0]
        for first in range(0, total, BATCH_ROWS):
            last = min(first + BATCH_ROWS, total) - 1
            params = {"start": start, "total": total, "first": first, "last": last, "types": list(CONTEXT_TYPES)}
            conn.execute(INSERT_ROWS, params)
            log(f"  {last + 1:,} rows ({time.perf_counter() - started:.0f} s)")
        conn.execute("VACUUM ANALYZE routing_requestlog")
    return time.perf_counter() - started


def log_counts(bench_url, starts):
    """Return {window: chat-completions rows created since its start} straight from the log."""
    with psycopg.connect(bench_url) as conn:
        return {
            name: conn.execute(
                "SELECT count(*) FROM routing_requestlog WHERE endpoint = 'chat.completions' AND created_at >= %s",
                [start],
            ).fetchone()[0]
            for name, start in starts.items()
        }


def get(port, path, key, timeout=10.0):
    """GET a path with the key; return (status, decoded JSON, milliseconds)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        started = time.perf_counter()
        conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})
        resp = conn.getresponse()
        body = resp.read()
        elapsed = (time.perf_counter() - started) * 1000
        return resp.status, json.loads(body), elapsed
    finally:
        conn.close()


def summary(samples):
    """Return 'p50 / p95 / max' of milliseconds."""
    ordered = sorted(samples)
    return f"p50 {percentile(ordered, 50):.1f} / p95 {percentile(ordered, 95):.1f} / max {ordered[-1]:.1f} ms"


def main():
    """Run the bench; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="RequestLog rows to load (default 10 million)")
    parser.add_argument("--calls", type=int, default=30, help="timed endpoint calls per window (default 30)")
    parser.add_argument("--keep", action="store_true", help="leave the bench database in place")
    args = parser.parse_args()
    admin_url, bench_url = database_urls(BENCH_DB)
    failures = []

    log(f"preparing database {BENCH_DB} (drop, create, migrate, configure)")
    recreate_database(admin_url, BENCH_DB)
    manage(bench_url, "migrate", "--no-input", "-v", "0")
    key = next(line[10:] for line in manage(bench_url, "shell", "-c", SETUP_CODE).splitlines() if "BENCH_KEY=" in line)

    log(f"loading {args.rows:,} RequestLog rows over 7 days")
    load_seconds = load_rows(bench_url, args.rows)

    os.environ["DATABASE_URL"] = bench_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatvault_site.settings")
    import django

    django.setup()
    from django.utils import timezone

    from routing import rollups
    from routing.models import RequestRollup

    log("full rollup (nothing rolled up yet: the whole log)")
    started = time.perf_counter()
    run = rollups.rollup_request_logs()
    full_seconds = time.perf_counter() - started
    if run.requests != args.rows:
        failures.append(f"the full rollup counted {run.requests:,} requests, not {args.rows:,}")
    beat_seconds = []
    for _ in range(3):
        started = time.perf_counter()
        rollups.rollup_request_logs(lookback=timedelta(minutes=15))
        beat_seconds.append(time.perf_counter() - started)
    minute_rows = RequestRollup.objects.filter(granularity="minute").count()
    hour_rows = RequestRollup.objects.filter(granularity="hour").count()

    now = timezone.now()
    starts = {name: rollups.window_start(now, length) for name, length in rollups.WINDOWS.items()}
    expected = log_counts(bench_url, starts)
    read_ms = {}
    for name, start in starts.items():
        samples = []
        for _ in range(args.calls):
            t0 = time.perf_counter()
            rows = rollups.rollup_rows(start, timezone.now())
            rollups.selector_stats(rows)
            samples.append((time.perf_counter() - t0) * 1000)
        read_ms[name] = (samples, len(rows))

    log("starting a gateway worker on the bench database")
    endpoint_ms = {}
    children = Children()  # bench/run.py's: started processes are stopped by PID, the gateway's log kept aside
    try:
        _, port, _, _ = start_gateway(children, bench_url)
        for name in rollups.WINDOWS:
            path = f"/v1/admin/model-selector/stats?window={name}"
            status, body, _ = get(port, path, key)  # warm-up: the first query of a connection plans it
            if status != 200:
                raise RuntimeError(f"{path} answered {status}: {body}")
            shown = sum(m["requests"] for m in body["models"])
            if shown != expected[name]:
                failures.append(f"window {name} shows {shown:,} requests, the log has {expected[name]:,}")
            endpoint_ms[name] = [get(port, path, key)[2] for _ in range(args.calls)]
    finally:
        children.stop_all()
    children.remove_logs()

    print()
    print(f"RequestLog rows loaded        {args.rows:>12,}   in {load_seconds:.0f} s (with VACUUM ANALYZE)")
    print(f"full rollup                   {full_seconds:>12.1f} s  ({run.hour_rows:,} hour rows, "
          f"{run.minute_rows:,} minute rows written; {hour_rows:,} / {minute_rows:,} kept)")
    print(f"beat-style run (15 min back)  {summary([s * 1000 for s in beat_seconds])}")
    print()
    print(f"{'window':<8}{'requests':>12}{'rollup rows':>13}  {'read + figures in-process':<40}{'GET endpoint'}")
    for name in rollups.WINDOWS:
        samples, rows = read_ms[name]
        print(f"{name:<8}{expected[name]:>12,}{rows:>13,}  {summary(samples):<40}{summary(endpoint_ms[name])}")
        p95 = percentile(sorted(endpoint_ms[name]), 95)
        if p95 > TARGET_MS:
            failures.append(f"window {name}: endpoint p95 {p95:.1f} ms > {TARGET_MS} ms")
    print()
    print(f"target: endpoint p95 <= {TARGET_MS} ms for every window: {'FAIL' if failures else 'PASS'}")
    for failure in failures:
        print(f"  FAIL {failure}")
    if not args.keep:
        drop_database(admin_url, BENCH_DB)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
