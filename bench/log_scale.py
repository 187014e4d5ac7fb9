#!/usr/bin/env python
"""The request log at 10 million rows: every request-log admin page, the stats endpoints, and log writing at
5,000 rows/s while an admin browses.

Run it by hand (it is not part of `make bench` or the tests; the load takes a few minutes on 2 cores), with the test
environment::

    DEBUG=false DATABASE_URL=postgres://postgres@127.0.0.1:5432/chatvault SECRET_KEY=test \
    CHATVAULT_ENCRYPTION_KEYS=dGVzdC1vbmx5LWtleS1ub3Qtc2VjcmV0LTAwMDAwMDA= \
    .venv/bin/python bench/log_scale.py [--rows 10000000] [--calls 10] [--write-seconds 30] [--keep]

What it does, all on 127.0.0.1:

1. Recreates the Postgres database ``chatvault_bench_logscale`` on DATABASE_URL's server and migrates it (the request
   log partitioned by day, the retention window of 30 days and a week ahead), then configures four models of two
   instances each, twenty API keys and a staff user.
2. Loads --rows RequestLog rows spread evenly over the 30 days before now with ``INSERT ... SELECT
   generate_series(...)`` in batches of a million (routed to their day partitions): keys, users, outcomes (95 % ok,
   the rest spread over five error kinds), a third streams, 70 % with a context type, a routing decision of ~300
   bytes; then VACUUM ANALYZE, and the rollups (`rollup_request_logs()`), which the stats endpoints read.
3. Starts one uvicorn gateway worker on the database and times, over HTTP with the staff user's session (--calls
   each after one warm-up): the request-log list (first page; filtered by each filter: outcome common and rare,
   model, instance, key, stream, last hour, last 7 days, a day two weeks ago; time ascending; a keyset page in the
   middle; the last page; search by request id, by its first 8 characters and by text), the detail page, the
   selections list and detail; `GET /v1/admin/load-balancer/stats`, `GET /v1/admin/model-selector/stats` for each
   window, and `POST /v1/feedback` on an old request (the one API call that looks a request up in the log).
4. Writes rows through a real RequestLogWriter (the gateway's batch size and flush interval) at --write-rate rows/s
   for --write-seconds while a thread keeps loading admin pages, sampling the writer's queue every 100 ms; then
   waits for the queue to drain.
5. Prints every figure and PASS/FAIL against the targets (each page and endpoint: p95 < 300 ms; the writer: no row
   dropped, the queue never holding more than one second of rows, drained within 2 s of the last submit). Exits 1
   on a failed target. The gateway is stopped by PID on exit; the database is dropped unless --keep.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # `python bench/log_scale.py` puts bench/ on the path, not the repository

from run import Children, database_urls, drop_database, recreate_database, start_gateway  # noqa: E402

from routing.analysis import CONTEXT_TYPES  # noqa: E402  (no Django import)
from routing.stats import percentile  # noqa: E402  (no Django import)

HOST = "127.0.0.1"
BENCH_DB = "chatvault_bench_logscale"
BATCH_ROWS = 1_000_000
DAYS = 30
MODELS = 4
INSTANCES_PER_MODEL = 2
KEYS = 20
TARGET_MS = 300

# Row i of n: created at an even spacing over the DAYS before the load started; model i % 4, instance (i / 4) % 2,
# key i % 20; outcome by i % 1000 (950 ok, then upstream errors, client errors, rate limits, timeouts, disconnects);
# a third streams; 70 % with a context type (and "auto" requested); latency exp(3 + 5 r) ms (20 ms to 3 s).
INSERT_ROWS = """
INSERT INTO routing_requestlog (
    request_id, created_at, endpoint, "user", requested_model, served_model, stream, outcome, status_code, error_type,
    error_message, prompt_tokens, completion_tokens, cost_usd, latency_ms, ttft_ms, attempts, decision, context_type,
    experiment, variant, experiment_unit, instance_id, api_key_id
)
SELECT
    gen_random_uuid(),
    %(start)s::timestamptz + make_interval(secs => i * %(span)s / %(total)s),
    'chat.completions', 'user-' || (i %% 5000),
    CASE WHEN i %% 10 < 7 THEN 'auto' ELSE 'bench-model-' || (i %% 4) END,
    'bench-model-' || (i %% 4), i %% 3 = 0,
    CASE WHEN o < 950 THEN 'ok' WHEN o < 980 THEN 'upstream_error' WHEN o < 990 THEN 'client_error'
         WHEN o < 995 THEN 'rate_limited' WHEN o < 998 THEN 'upstream_timeout' ELSE 'client_disconnected' END,
    CASE WHEN o < 950 THEN 200 WHEN o < 980 THEN 502 WHEN o < 990 THEN 400 WHEN o < 995 THEN 429
         WHEN o < 998 THEN 504 ELSE 499 END,
    '', '', 100 + i %% 900, 20 + i %% 400, ((100 + i %% 900) * 0.000001)::numeric(14, 8),
    lat, CASE WHEN i %% 3 = 0 THEN lat * random() ELSE NULL END, 1,
    jsonb_build_object(
        'model', jsonb_build_object('requested', 'auto', 'served', 'bench-model-' || (i %% 4)),
        'strategy', 'round-robin',
        'candidates', jsonb_build_array('bench-model-' || (i %% 4) || '-0', 'bench-model-' || (i %% 4) || '-1'),
        'skipped', '[]'::jsonb,
        'attempts', jsonb_build_array(jsonb_build_object(
            'instance', 'bench-model-' || (i %% 4) || '-' || ((i / 4) %% 2), 'status', 200, 'ms', round(lat))),
        'selection', jsonb_build_object('winner', 'bench-model-' || (i %% 4), 'reason', 'best capability fit')
    ),
    CASE WHEN i %% 10 < 7 THEN (%(types)s::text[])[1 + (i / 10) %% 9] ELSE '' END,
    '', '', '',
    'bench-model-' || (i %% 4) || '-' || ((i / 4) %% 2),
    (%(keys)s::bigint[])[1 + i %% %(key_count)s]
FROM (
    SELECT i, (i * 7919) %% 1000 AS o, exp(3 + 5 * random()) AS lat
    FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i
) AS g
"""


def log(message):
    """Print a progress line."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def summary(samples):
    """Return 'p50 / p95 / max' of milliseconds."""
    ordered = sorted(samples)
    return f"{percentile(ordered, 50):7.1f} {percentile(ordered, 95):7.1f} {ordered[-1]:7.1f}"


def configure():
    """Create the models, instances, keys and staff user; return (key ids, {key id: raw key}, session cookie)."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client

    from routing.auth import api_key_create
    from routing.models import Model, Provider, ProviderInstance

    provider = Provider.objects.create(name="bench-fake", kind="openai", openai_compatible=True,
                                       api_base="http://127.0.0.1:9/v1")  # fmt: skip
    for m in range(MODELS):
        model = Model.objects.create(name=f"bench-model-{m}")
        for i in range(INSTANCES_PER_MODEL):
            inst = ProviderInstance(id=f"bench-model-{m}-{i}", model=model, provider=provider,
                                    litellm_model="openai/gpt-4o-mini")  # fmt: skip
            inst.set_api_key("sk-bench-upstream-0000")
            inst.save()
    raw_keys = {}
    for k in range(KEYS):
        key, raw = api_key_create(name=f"bench-key-{k}", is_admin=k == 0)
        raw_keys[key.pk] = raw
    user = get_user_model().objects.create_superuser("bench-admin", "bench@example.invalid", uuid.uuid4().hex)
    client = Client()
    client.force_login(user)
    return sorted(raw_keys), raw_keys, client.cookies[settings.SESSION_COOKIE_NAME].value


def reconfigure(bench_url):
    """For --reuse: return (key ids, {key id: raw key} of two fresh keys, a fresh session cookie, the oldest row's
    time)."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client

    from routing.auth import api_key_create
    from routing.models import ApiKey

    raw_keys = {}
    for name, is_admin in (("bench-admin-again", True), ("bench-feedback-again", False)):
        key, raw = api_key_create(name=name, is_admin=is_admin)
        raw_keys[key.pk] = raw
    client = Client()
    client.force_login(get_user_model().objects.get(username="bench-admin"))
    with psycopg.connect(bench_url) as conn:
        start = conn.execute("SELECT min(created_at) FROM routing_requestlog").fetchone()[0]
    key_ids = sorted(ApiKey.objects.filter(name__startswith="bench-key-").values_list("pk", flat=True))
    return key_ids, raw_keys, client.cookies[settings.SESSION_COOKIE_NAME].value, start


def load_rows(bench_url, total, key_ids):
    """Insert `total` RequestLog rows over the DAYS before now; return (seconds, the time of row 0)."""
    started = time.perf_counter()
    with psycopg.connect(bench_url, autocommit=True) as conn:
        start = conn.execute("SELECT now() - make_interval(days => %s)", [DAYS]).fetchone()[0]
        for first in range(0, total, BATCH_ROWS):
            last = min(first + BATCH_ROWS, total) - 1
            params = {
                "start": start,
                "span": DAYS * 86400.0,
                "total": total,
                "first": first,
                "last": last,
                "types": list(CONTEXT_TYPES),
                "keys": key_ids,
                "key_count": len(key_ids),
            }
            conn.execute(INSERT_ROWS, params)
            log(f"  {last + 1:,} rows ({time.perf_counter() - started:.0f} s)")
        conn.execute("VACUUM ANALYZE routing_requestlog")
    return time.perf_counter() - started, start


def request(port, method, path, headers, body=None, timeout=30.0):
    """Send one request; return (status, body bytes, milliseconds)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        started = time.perf_counter()
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, data, (time.perf_counter() - started) * 1000
    finally:
        conn.close()


def cursor_key(created_at, pk):
    """Return the admin's page key of a row (routing.admin.keyset.cursor_key, without Django)."""
    delta = created_at - datetime(1970, 1, 1, tzinfo=UTC)
    return f"{(delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds}_{pk}"


def pick_rows(bench_url, start):
    """Return facts of rows the pages look for: one in the middle, one two weeks ago, one of key 0."""
    with psycopg.connect(bench_url) as conn:
        middle = conn.execute(
            "SELECT id, created_at, request_id FROM routing_requestlog WHERE created_at >= %s "
            "ORDER BY created_at, id LIMIT 1",
            [start + timedelta(days=DAYS / 2)],
        ).fetchone()
        user = conn.execute('SELECT "user" FROM routing_requestlog WHERE id = %s', [middle[0]]).fetchone()[0]
    return {"middle": middle, "user": user}


def pages(rows, key_ids, start):
    """Return [(name, path)] of the request-log admin pages to time."""
    changelist = "/admin/routing/requestlog/"
    middle_id, middle_at, middle_request = rows["middle"]
    day = (start + timedelta(days=DAYS / 2)).replace(hour=0, minute=0, second=0, microsecond=0)
    span = f"since={day:%Y-%m-%dT%H:%M:%S}&until={day + timedelta(days=1):%Y-%m-%dT%H:%M:%S}"
    return [
        ("list: first page", changelist),
        ("list: outcome = ok", f"{changelist}?outcome__exact=ok"),
        ("list: outcome = rate_limited (0.5 %)", f"{changelist}?outcome__exact=rate_limited"),
        ("list: served model", f"{changelist}?served_model=bench-model-2"),
        ("list: instance", f"{changelist}?instance__id__exact=bench-model-1-0"),
        ("list: API key", f"{changelist}?api_key__id__exact={key_ids[3]}"),
        ("list: streams", f"{changelist}?stream__exact=1"),
        ("list: last hour", f"{changelist}?period=1h"),
        ("list: last 7 days", f"{changelist}?period=7d"),
        ("list: one day, 2 weeks ago", f"{changelist}?{span}"),
        (
            "list: model + outcome + stream",
            f"{changelist}?served_model=bench-model-1&outcome__exact=upstream_error&stream__exact=1",
        ),  # fmt: skip
        ("list: sorted oldest first", f"{changelist}?o=1"),
        ("list: keyset page mid-log", f"{changelist}?after={cursor_key(middle_at, middle_id)}"),
        ("list: last page", f"{changelist}?end=1"),
        ("list: search request id", f"{changelist}?q={middle_request}"),
        ("list: search short id", f"{changelist}?q={str(middle_request)[:8]}"),
        ("list: search text (newest 100,000)", f"{changelist}?q={rows['user']}"),
        ("detail page", f"{changelist}{middle_id}/change/"),
        ("selections: first page", "/admin/routing/selection/"),
        ("selections: context type", "/admin/routing/selection/?context_type=math"),
        ("selections: detail", f"/admin/routing/selection/{middle_id}/change/"),
    ]


def time_pages(port, cookie, page_list, calls):
    """Time each admin page; return {name: [ms]} (raise on a non-200)."""
    headers = {"Cookie": f"sessionid={cookie}"}
    timings = {}
    for name, path in page_list:
        status, body, _ = request(port, "GET", path, headers)  # warm-up: the first query of a connection plans it
        if status != 200:
            raise RuntimeError(f"{path} answered {status}: {body[:300]!r}")
        timings[name] = [request(port, "GET", path, headers)[2] for _ in range(calls)]
    return timings


def time_endpoints(port, raw_keys, rows, calls):
    """Time the stats endpoints and a feedback lookup; return {name: [ms]}."""
    admin = {"Authorization": f"Bearer {raw_keys[min(raw_keys)]}"}
    timings = {}
    paths = [("GET /v1/admin/load-balancer/stats", "/v1/admin/load-balancer/stats")] + [
        (f"GET /v1/admin/model-selector/stats {w}", f"/v1/admin/model-selector/stats?window={w}")
        for w in ("1h", "24h", "7d")
    ]
    for name, path in paths:
        status, body, _ = request(port, "GET", path, admin)
        if status != 200:
            raise RuntimeError(f"{path} answered {status}: {body[:300]!r}")
        timings[name] = [request(port, "GET", path, admin)[2] for _ in range(calls)]
    # Feedback on a request made weeks ago: the worker does not remember it, so it is looked up in the log.
    middle_request = rows["middle"][2]
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        key_id = conn.execute(
            "SELECT api_key_id FROM routing_requestlog WHERE request_id = %s", [middle_request]
        ).fetchone()[0]
    headers = {"Authorization": f"Bearer {raw_keys[key_id]}", "Content-Type": "application/json"}
    samples = []
    for score in [1] + [0, 1] * calls:
        body = json.dumps({"request_id": str(middle_request), "score": score})
        status, answer, ms = request(port, "POST", "/v1/feedback", headers, body)
        if status != 200:
            raise RuntimeError(f"POST /v1/feedback answered {status}: {answer[:300]!r}")
        samples.append(ms)
    timings["POST /v1/feedback (old request)"] = samples[1 : calls + 1]
    return timings


def write_while_browsing(port, cookie, page_list, rate, seconds):
    """Submit rate rows/s to a RequestLogWriter for seconds while a thread loads admin pages; return the figures."""
    from routing.request_log import RequestLogWriter

    writer = RequestLogWriter()
    writer.start()
    template = {
        "endpoint": "chat.completions",
        "user": "writer",
        "requested_model": "auto",
        "served_model": "bench-model-0",
        "instance_id": "bench-model-0-0",
        "stream": False,
        "outcome": "ok",
        "status_code": 200,
        "prompt_tokens": 120,
        "completion_tokens": 40,
        "latency_ms": 150.0,
        "attempts": 1,
        "decision": {"model": {"requested": "auto", "served": "bench-model-0"}, "strategy": "round-robin"},
    }
    stop = threading.Event()
    browse_ms = []

    def browse():
        headers = {"Cookie": f"sessionid={cookie}"}
        while not stop.is_set():
            for _, path in page_list:
                if stop.is_set():
                    break
                browse_ms.append(request(port, "GET", path, headers)[2])

    browser = threading.Thread(target=browse, daemon=True)
    browser.start()
    pending_max, submitted, tick = 0, 0, 0.01
    started = time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate) - submitted
            now = datetime.now(UTC)
            for _ in range(due):
                writer.submit({**template, "request_id": uuid.uuid4(), "created_at": now})
            submitted += due
            pending_max = max(pending_max, writer.pending())
            time.sleep(tick)
        submit_end = time.monotonic()
        while writer.pending() and time.monotonic() - submit_end < 60:
            time.sleep(0.01)
        drain_s = time.monotonic() - submit_end
    finally:
        stop.set()
        browser.join(30)
        writer.stop()
    return {
        "submitted": submitted,
        "written": writer.written,
        "dropped": writer.dropped,
        "pending_max": pending_max,
        "drain_s": drain_s,
        "rate": writer.written / (submit_end - started + drain_s),
        "browse_ms": browse_ms,
    }


def main():
    """Run the bench; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="RequestLog rows to load (default 10 million)")
    parser.add_argument("--calls", type=int, default=10, help="timed calls per page or endpoint (default 10)")
    parser.add_argument("--write-rate", type=int, default=5000, help="rows/s written while browsing (default 5000)")
    parser.add_argument("--write-seconds", type=float, default=30, help="how long to write (default 30)")
    parser.add_argument("--keep", action="store_true", help="leave the bench database in place")
    parser.add_argument("--reuse", action="store_true", help="time the database a --keep run left (no reload)")
    args = parser.parse_args()
    admin_url, bench_url = database_urls(BENCH_DB)
    failures = []

    if not args.reuse:
        log(f"preparing database {BENCH_DB} (drop, create, migrate, configure)")
        recreate_database(admin_url, BENCH_DB)
    os.environ["DATABASE_URL"] = bench_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatvault_site.settings")
    # Plain http on 127.0.0.1: no redirect to https, cookies sent over http.
    os.environ.update(SECURE_SSL_REDIRECT="false", SESSION_COOKIE_SECURE="false", CSRF_COOKIE_SECURE="false")
    import django

    django.setup()
    from django.core.management import call_command

    from routing import partitions, rollups
    from routing.models import RequestLog

    if args.reuse:
        key_ids, raw_keys, cookie, start = reconfigure(bench_url)
        load_seconds = rollup_seconds = 0.0
        args.rows = RequestLog.objects.count()
    else:
        call_command("migrate", "--no-input", verbosity=0)
        key_ids, raw_keys, cookie = configure()
        log(f"loading {args.rows:,} RequestLog rows over {DAYS} days")
        load_seconds, start = load_rows(bench_url, args.rows, key_ids)
        log("rolling the log up (the stats endpoints read the rollups)")
        started = time.perf_counter()
        rollups.rollup_request_logs()
        rollup_seconds = time.perf_counter() - started
    partition_count = len(partitions.day_partitions())
    rows = pick_rows(bench_url, start)
    if args.reuse:
        # The raw keys of a kept database are gone (only hashes are stored): the feedback call uses a fresh one.
        RequestLog.objects.filter(pk=rows["middle"][0]).update(api_key_id=max(raw_keys))
    page_list = pages(rows, key_ids, start)

    log("starting a gateway worker on the bench database")
    children = Children()  # bench/run.py's: started processes are stopped by PID, the gateway's log kept aside
    try:
        _, port, _, _ = start_gateway(children, bench_url)
        log("timing the admin pages")
        page_ms = time_pages(port, cookie, page_list, args.calls)
        log("timing the stats endpoints")
        endpoint_ms = time_endpoints(port, raw_keys, rows, args.calls)
        log(f"writing {args.write_rate:,} rows/s for {args.write_seconds:.0f} s while an admin browses")
        writing = write_while_browsing(port, cookie, page_list[:14], args.write_rate, args.write_seconds)
    finally:
        children.stop_all()
    children.remove_logs()

    print()
    print(f"RequestLog rows loaded   {args.rows:>12,}  over {DAYS} days in {partition_count} day partitions, "
          f"{load_seconds:.0f} s (with VACUUM ANALYZE)")  # fmt: skip
    print(f"full rollup              {rollup_seconds:>12.1f} s")
    print()
    print(f"{'page or endpoint':<44}{'p50':>8}{'p95':>8}{'max':>8}   (ms, {args.calls} calls after a warm-up)")
    for name, samples in [*page_ms.items(), *endpoint_ms.items()]:
        p95 = percentile(sorted(samples), 95)
        flag = "" if p95 < TARGET_MS else "  FAIL"
        print(f"{name:<44}{summary(samples)}{flag}")
        if p95 >= TARGET_MS:
            failures.append(f"{name}: p95 {p95:.1f} ms >= {TARGET_MS} ms")
    print()
    w = writing
    print(f"writer: {w['submitted']:,} rows submitted at {args.write_rate:,}/s for {args.write_seconds:.0f} s, "
          f"{w['written']:,} written, {w['dropped']} dropped; queue at most {w['pending_max']:,} rows; drained "
          f"{w['drain_s']:.2f} s after the last submit; {w['rate']:,.0f} rows/s overall")  # fmt: skip
    print(f"admin pages meanwhile ({len(w['browse_ms'])} loads): p50 / p95 / max {summary(w['browse_ms'])} ms")
    if w["dropped"] or w["written"] != w["submitted"]:
        failures.append(f"writer wrote {w['written']:,} of {w['submitted']:,} rows ({w['dropped']} dropped)")
    if w["pending_max"] > args.write_rate:
        failures.append(f"writer queue reached {w['pending_max']:,} rows (more than one second of rows)")
    if w["drain_s"] > 2:
        failures.append(f"writer queue drained {w['drain_s']:.2f} s after the last submit (> 2 s)")
    print()
    print(f"targets: every page and endpoint p95 < {TARGET_MS} ms; the writer keeps up: "
          f"{'FAIL' if failures else 'PASS'}")  # fmt: skip
    for failure in failures:
        print(f"  FAIL {failure}")
    if not args.keep:
        from django.db import connections

        connections.close_all()
        drop_database(admin_url, BENCH_DB)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
