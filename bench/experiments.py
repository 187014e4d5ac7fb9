#!/usr/bin/env python
"""Experiment rollups, results and exports at 10 million RequestLog rows: times, and the export's memory.

Run it by hand (it is not part of `make bench` or the tests; about 10 minutes on 2 cores), with the test
environment::

    DEBUG=false DATABASE_URL=postgres://postgres@127.0.0.1:5432/chatvault SECRET_KEY=test \
    CHATVAULT_ENCRYPTION_KEYS=dGVzdC1vbmx5LWtleS1ub3Qtc2VjcmV0LTAwMDAwMDA= \
    .venv/bin/python bench/experiments.py [--rows 10000000] [--share 10] [--units 100000] [--calls 20] [--keep]

What it does, all on 127.0.0.1:

1. Recreates the Postgres database ``chatvault_bench_experiments`` and migrates it, configures bench/rollups.py's
   four models and an admin API key, and a running experiment ``bench-exp`` comparing bench-model-0 (control)
   with bench-model-1.
2. Loads --rows RequestLog rows over the 7 days before now (bench/rollups.py's shape), one in --share of them in
   the experiment, from --units units (each unit's rows in one variant; bench-model-1 10 % faster), and feedback
   on a fifth of the experiment's requests; then VACUUM ANALYZE.
3. Times a full `rollup_experiments()` (nothing rolled up yet) and three beat-style runs (15 minutes of lookback),
   and checks the unit rollups count every experiment row once.
4. Times `experiment_results` in-process, then starts one uvicorn gateway worker and times
   ``GET /v1/admin/experiments/bench-exp/results`` (JSON and CSV; --calls each after a warm-up). Target: < 500 ms.
5. Exports the experiment's requests (``GET .../requests``, CSV) through the worker, reading the stream as it
   comes, and samples the worker's RSS before, during and after: the export streams in pages, so its RSS should
   not grow with the number of rows. Checks one line per row.
6. Prints every figure with PASS/FAIL against the targets; exits 1 on a failure. The gateway is stopped by PID on
   exit; the database is dropped unless --keep.
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
import threading
import time
from pathlib import Path

import psycopg

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # `python bench/experiments.py` puts bench/ on the path, not the repository

from rollups import BATCH_ROWS, HOST, SETUP_CODE, get, log, manage, summary  # noqa: E402  (bench/rollups.py)
from run import Children, database_urls, drop_database, recreate_database, start_gateway  # noqa: E402

from routing.analysis import CONTEXT_TYPES  # noqa: E402  (no Django import)
from routing.stats import percentile  # noqa: E402  (no Django import)

BENCH_DB = "chatvault_bench_experiments"
EXPERIMENT = "bench-exp"
TARGET_MS = 500
# bench/rollups.py's rows, plus: row i is in the experiment when i % share = 0, from unit (i / share) % units, in
# variant bench-model-0 for even units and bench-model-1 (10 % faster) for odd ones; units are hashed like the
# gateway's (16 hex characters).
INSERT_ROWS = """
INSERT INTO routing_requestlog (
    request_id, created_at, endpoint, "user", requested_model, served_model, stream, outcome, status_code, error_type,
    error_message, prompt_tokens, completion_tokens, cost_usd, latency_ms, ttft_ms, attempts, decision, context_type,
    instance_id, api_key_id, experiment, variant, experiment_unit
)
SELECT
    gen_random_uuid(),
    %(start)s::timestamptz + make_interval(secs => i * 604800.0 / %(total)s),
    'chat.completions', '', 'auto', model, i %% 3 = 0,
    CASE WHEN i %% 100 < 5 THEN 'upstream_error' ELSE 'ok' END,
    CASE WHEN i %% 100 < 5 THEN 502 ELSE 200 END,
    '', '', 100 + i %% 900, 20 + i %% 400, ((100 + i %% 900) * 0.000001)::numeric(14, 8),
    lat, CASE WHEN i %% 3 = 0 THEN lat * random() ELSE NULL END, 1, '{}'::jsonb,
    CASE WHEN i %% 10 < 7 THEN (%(types)s::text[])[1 + (i / 10) %% 9] ELSE '' END,
    model || '-' || ((i / 4) %% 2), NULL,
    CASE WHEN in_exp THEN %(experiment)s ELSE '' END,
    CASE WHEN in_exp THEN model ELSE '' END,
    CASE WHEN in_exp THEN substr(md5('unit-' || unit), 1, 16) ELSE '' END
FROM (
    SELECT i, in_exp, unit,
           CASE WHEN in_exp THEN 'bench-model-' || (unit %% 2) ELSE 'bench-model-' || (i %% 4) END AS model,
           exp(3 + 5 * random()) * CASE WHEN in_exp AND unit %% 2 = 1 THEN 0.9 ELSE 1 END AS lat
    FROM (
        SELECT i, i %% %(share)s = 0 AS in_exp, (i / %(share)s) %% %(units)s AS unit
        FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i
    ) AS numbered
) AS g
"""
# Feedback on every fifth experiment request, two minutes after it: thumbs, up 60 % of the time.
INSERT_FEEDBACK = """
INSERT INTO experiments_feedback (
    request_id, metric, score, comment, api_key_id, experiment, variant, experiment_unit, served_model, context_type,
    request_created_at, created_at, updated_at
)
SELECT request_id, 'feedback', CASE WHEN random() < 0.6 THEN 1 ELSE 0 END, '', NULL, experiment, variant,
       experiment_unit, served_model, context_type, created_at, created_at + interval '2 minutes',
       created_at + interval '2 minutes'
FROM routing_requestlog WHERE experiment = %(experiment)s AND abs(hashtext(request_id::text)) %% 5 = 0
"""
EXPERIMENT_CODE = f"""
from django.utils import timezone
from experiments.models import Experiment, Variant
from routing.models import Model
experiment = Experiment.objects.create(id="{EXPERIMENT}", name="Bench", status="running",
    traffic_percentage=100.0, primary_metric="latency_ms", guardrail_metrics=["success_rate"],
    minimum_detectable_effect=0.02)
for position in range(2):
    Variant.objects.create(experiment=experiment, model=Model.objects.get(name=f"bench-model-{{position}}"),
                           is_control=position == 0, position=position)
Experiment.objects.filter(pk=experiment.pk).update(started_at=timezone.now() - timezone.timedelta(days=7))
"""


def load(bench_url, total, share, units):
    """Insert the rows and the feedback; return (seconds, experiment rows, feedback rows)."""
    started = time.perf_counter()
    with psycopg.connect(bench_url, autocommit=True) as conn:
        start = conn.execute("SELECT now() - interval '7 days'").fetchone()[0]
        for first in range(0, total, BATCH_ROWS):
            last = min(first + BATCH_ROWS, total) - 1
            params = {
                "start": start,
                "total": total,
                "first": first,
                "last": last,
                "types": list(CONTEXT_TYPES),
                "share": share,
                "units": units,
                "experiment": EXPERIMENT,
            }
            conn.execute(INSERT_ROWS, params)
            log(f"  {last + 1:,} rows ({time.perf_counter() - started:.0f} s)")
        feedback = conn.execute(INSERT_FEEDBACK, {"experiment": EXPERIMENT}).rowcount
        conn.execute("VACUUM ANALYZE routing_requestlog")
        conn.execute("VACUUM ANALYZE experiments_feedback")
        in_experiment = conn.execute(
            "SELECT count(*) FROM routing_requestlog WHERE experiment = %s", [EXPERIMENT]
        ).fetchone()[0]
    return time.perf_counter() - started, in_experiment, feedback


def rss_mib(pid):
    """Return a process's resident set size in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def timed_get(port, path, key):
    """GET a path; return (status, body bytes, milliseconds)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        started = time.perf_counter()
        conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, body, (time.perf_counter() - started) * 1000
    finally:
        conn.close()


def export(port, key, pid):
    """Stream the requests export; return (status, lines, bytes, seconds, RSS samples in MiB during it)."""
    samples, done = [], threading.Event()

    def sample():
        while not done.wait(0.25):
            samples.append(rss_mib(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    conn = http.client.HTTPConnection(HOST, port, timeout=600)
    lines = size = 0
    started = time.perf_counter()
    sampler.start()
    try:
        conn.request(
            "GET", f"/v1/admin/experiments/{EXPERIMENT}/requests?format=csv", headers={"Authorization": f"Bearer {key}"}
        )
        resp = conn.getresponse()
        while chunk := resp.read(1 << 16):
            size += len(chunk)
            lines += chunk.count(b"\n")  # not CRLF: a chunk may end between its two bytes
        status = resp.status
    finally:
        done.set()
        sampler.join()
        conn.close()
    return status, lines, size, time.perf_counter() - started, samples


def main():
    """Run the bench; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="RequestLog rows to load (default 10 million)")
    parser.add_argument("--share", type=int, default=10, help="one row in SHARE is in the experiment (default 10)")
    parser.add_argument("--units", type=int, default=100_000, help="units in the experiment (default 100,000)")
    parser.add_argument("--calls", type=int, default=20, help="timed calls of each results read (default 20)")
    parser.add_argument("--keep", action="store_true", help="leave the bench database in place")
    args = parser.parse_args()
    admin_url, bench_url = database_urls(BENCH_DB)
    failures = []

    log(f"preparing database {BENCH_DB} (drop, create, migrate, configure)")
    recreate_database(admin_url, BENCH_DB)
    manage(bench_url, "migrate", "--no-input", "-v", "0")
    key = next(line[10:] for line in manage(bench_url, "shell", "-c", SETUP_CODE).splitlines() if "BENCH_KEY=" in line)
    manage(bench_url, "shell", "-c", EXPERIMENT_CODE)

    log(f"loading {args.rows:,} RequestLog rows over 7 days, one in {args.share} in {EXPERIMENT}, and feedback")
    load_seconds, in_experiment, feedback_rows = load(bench_url, args.rows, args.share, args.units)

    os.environ["DATABASE_URL"] = bench_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatvault_site.settings")
    import django

    django.setup()
    from datetime import timedelta

    from django.db.models import Sum

    from experiments.models import Experiment, UnitRollup, VariantRollup
    from experiments.results import experiment_results
    from experiments.rollups import rollup_experiments

    log("full experiment rollup (nothing rolled up yet)")
    started = time.perf_counter()
    run = rollup_experiments()
    full_seconds = time.perf_counter() - started
    rolled = UnitRollup.objects.filter(experiment=EXPERIMENT).aggregate(n=Sum("requests"))["n"]
    if rolled != in_experiment or run.requests != in_experiment:
        failures.append(f"the rollups count {rolled:,} / {run.requests:,} requests, the log {in_experiment:,}")
    beat_seconds = []
    for _ in range(3):
        started = time.perf_counter()
        rollup_experiments(lookback=timedelta(minutes=15))
        beat_seconds.append(time.perf_counter() - started)
    unit_rows = UnitRollup.objects.count()
    hour_rows = VariantRollup.objects.count()

    experiment = Experiment.objects.get(pk=EXPERIMENT)
    in_process = []
    for _ in range(args.calls):
        t0 = time.perf_counter()
        results = experiment_results(experiment)
        in_process.append((time.perf_counter() - t0) * 1000)
    primary = [(r["variant"], r["verdict"]) for r in results["metrics"] if r["metric"] == "latency_ms"]

    log("starting a gateway worker on the bench database")
    endpoint_ms = {}
    children = Children()  # bench/run.py's: started processes are stopped by PID, the gateway's log kept aside
    try:
        proc, port, _, _ = start_gateway(children, bench_url)
        for fmt in ("json", "csv"):
            path = f"/v1/admin/experiments/{EXPERIMENT}/results?format={fmt}"
            status, body, _ = timed_get(port, path, key)  # warm-up: the first query of a connection plans it
            if status != 200:
                raise RuntimeError(f"{path} answered {status}: {body[:300]!r}")
            endpoint_ms[fmt] = [timed_get(port, path, key)[2] for _ in range(args.calls)]
        status, stats, selector_ms = get(port, "/v1/admin/model-selector/stats?window=24h", key)
        if status != 200 or [e["id"] for e in stats["experiments"]] != [EXPERIMENT]:
            failures.append(f"model-selector stats: {status}, experiments {stats.get('experiments')!r}")
        rss_before = rss_mib(proc.pid)
        log(f"exporting {in_experiment:,} requests as CSV (worker RSS {rss_before:.1f} MiB)")
        status, lines, size, export_seconds, samples = export(port, key, proc.pid)
        rss_after = rss_mib(proc.pid)
        if status != 200 or lines != in_experiment + 1:
            failures.append(f"export answered {status} with {lines:,} lines for {in_experiment:,} rows")
    finally:
        children.stop_all()
    children.remove_logs()
    rss_peak = max(samples, default=rss_after)
    if rss_peak - rss_before > 100:
        failures.append(f"export RSS grew {rss_peak - rss_before:.1f} MiB (> 100 MiB)")

    print()
    print(f"RequestLog rows loaded          {args.rows:>12,}   in {load_seconds:.0f} s (with feedback, VACUUM ANALYZE)")
    print(
        f"  in {EXPERIMENT}                 {in_experiment:>12,}   from {args.units:,} units; "
        f"{feedback_rows:,} feedback rows"
    )
    print(
        f"full experiment rollup          {full_seconds:>12.1f} s  ({hour_rows:,} variant-hour rows, "
        f"{unit_rows:,} unit rows)"
    )
    print(f"beat-style run (15 min back)    {summary([s * 1000 for s in beat_seconds])}")
    print(f"experiment_results in-process   {summary(in_process)}   primary verdicts {primary}")
    for fmt, samples_ms in endpoint_ms.items():
        print(f"GET results?format={fmt:<5}       {summary(samples_ms)}")
        p95 = percentile(sorted(samples_ms), 95)
        if p95 > TARGET_MS:
            failures.append(f"results?format={fmt}: p95 {p95:.1f} ms > {TARGET_MS} ms")
    print(f"GET model-selector/stats 24h    {selector_ms:.1f} ms (one call, with the experiments list)")
    print(
        f"export {in_experiment:,} requests (CSV)   {export_seconds:.1f} s, {size / 1e6:.1f} MB, "
        f"{in_experiment / export_seconds:,.0f} rows/s"
    )
    print(
        f"  worker RSS before / peak during / after   {rss_before:.1f} / {rss_peak:.1f} / {rss_after:.1f} MiB "
        f"({len(samples)} samples)"
    )
    print()
    print(f"target: results endpoint p95 <= {TARGET_MS} ms; export RSS flat: {'FAIL' if failures else 'PASS'}")
    for failure in failures:
        print(f"  FAIL {failure}")
    if not args.keep:
        drop_database(admin_url, BENCH_DB)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
