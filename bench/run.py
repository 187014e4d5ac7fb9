#!/usr/bin/env python
"""ChatVault gateway benchmark: one command, one run, every figure.

Run it with ``make bench`` (which sets the test environment: DEBUG=false, DATABASE_URL, SECRET_KEY,
CHATVAULT_ENCRYPTION_KEYS), or by hand::

    DEBUG=false DATABASE_URL=postgres://postgres@127.0.0.1:5432/chatvault SECRET_KEY=test \
    CHATVAULT_ENCRYPTION_KEYS=dGVzdC1vbmx5LWtleS1ub3Qtc2VjcmV0LTAwMDAwMDA= \
    .venv/bin/python bench/run.py [--duration 10] [--json bench.json]

What it does, all on 127.0.0.1:

1. Recreates the Postgres database ``chatvault_bench`` on DATABASE_URL's server, migrates it, and creates a
   pass-through (OpenAI-compatible) provider, models ``bench-model`` and ``bench-stream`` (one instance each, each
   pointing at its own fake provider) and an API key.
2. Starts two fake providers (``routing.fake_provider``; the second with 20 chunks 20 ms apart) and ONE gateway
   worker (uvicorn, uvloop + httptools, no access log, request logging on). Measures start-up time (spawn to the
   first 200 on /healthz, polled every 10 ms), idle RSS and the largest RSS seen under load.
3. Runs each load phase DIRECT against the fake provider and THROUGH the gateway, with an asyncio + uvloop + aiohttp
   client (one session, keep-alive, connection limit = concurrency): a warm-up, then a fixed measured window.
   a. non-streaming, c=1        b. non-streaming, c=32        c. streaming, 32 streams (20 chunks x 20 ms)
   d. streaming, c=1 (TTFT)     e. streaming, 256 streams (errors must be zero)
   For every phase it reads the CPU time (utime+stime from /proc/PID/stat) of the gateway, the fakes and the client
   itself at the window's edges, and the machine-wide CPU use, so CPU per request and outside interference show.
   Then the TAIL phases, with wrk (a separate, closed-loop load generator that records every request's latency):
   non-streaming at c=1 and c=32, direct and through the gateway, ``--tail-duration`` seconds each (30 by default,
   long enough for a p99.9), so the added p99 and p99.9 come from a client that is not ours.
4. Waits for the gateway's request-log queue to drain and checks that RequestLog holds one row per gateway request.
5. Prints every figure, the targets (PASS/FAIL) and the LiteLLM proxy reference figures; ``--json PATH`` writes
   them all. Exits 1 when a gateway request failed or RequestLog does not match (a missed performance target only
   prints FAIL). Every child process is stopped by PID on exit, error or Ctrl-C; the bench database is left in place.

The load client, the gateway and the fake providers share the machine's cores (2 on the reference machine), so every
figure includes that contention; the client's own CPU per request is printed so it can be accounted for.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import psycopg

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a requirement, but the bench still runs without it
    uvloop = None

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # `python bench/run.py` puts bench/ on the path, not the repository

from routing.stats import percentile  # noqa: E402  (the gateway's own percentile; the module imports no Django)

HOST = "127.0.0.1"
BENCH_DB = "chatvault_bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_LISTENING = re.compile(r"fake provider listening on http://127\.0\.0\.1:(\d+)")
MODEL = "bench-model"
STREAM_MODEL = "bench-stream"
AUTO = "auto"  # automatic selection: the gateway picks bench-model (the two tie, and ties break by name)
# A running experiment claims this model at 100 % traffic (variants bench-x-a and bench-x-b, both on the plain fake),
# so every request of phase g is enrolled; the key's selection pool leaves both out, so phase f is unchanged.
EXPERIMENT_MODEL = "bench-x-a"
STREAM_CHUNKS = 20
STREAM_CHUNK_DELAY_MS = 20
REQUEST_TIMEOUT_S = 60  # per request; every phase is also bounded as a whole
MIB = 1024 * 1024

# Targets for the gateway (name, figure key, comparison, threshold, unit).
TARGETS = [
    ("throughput, non-streaming c=32", "gw_rps_c32", ">=", 550, "req/s"),
    ("throughput, non-streaming c=1", "gw_rps_c1", ">=", 450, "req/s"),
    ("added latency p50, c=1", "added_p50_ms", "<=", 2.5, "ms"),
    ("added latency p99, c=1", "added_p99_ms", "<=", 6, "ms"),
    ("gateway CPU per request (c=32)", "gw_cpu_ms_per_req_c32", "<=", 2, "ms"),
    ("streaming throughput at 32, % of direct", "stream32_pct_of_direct", ">=", 95, "%"),
    ("added TTFT p50, c=1", "added_ttft_p50_ms", "<=", 3, "ms"),
    ("idle RSS", "idle_rss_mib", "<=", 165, "MiB"),
    ("start-up time", "startup_s", "<=", 2, "s"),
    ("errors in 256-stream phase", "stream256_errors", "<=", 0, ""),
    ("RequestLog rows != gateway requests sent", "requestlog_mismatch", "<=", 0, ""),
    ("added latency p99, c=1 (wrk, 30 s)", "tail_added_p99_ms_c1", "<=", 2, "ms"),
    ("added latency p99.9, c=1 (wrk, 30 s)", "tail_added_p999_ms_c1", "<=", 5, "ms"),
    ("selection adds, p50 (model=auto vs named)", "selection_added_p50_ms", "<=", 0.3, "ms"),
    ("experiment assignment adds, p50", "experiment_added_p50_ms", "<=", 0.05, "ms"),
]

# LiteLLM proxy, measured on this machine type (name, LiteLLM figure, our key, unit, higher is better).
LITELLM = [
    ("req/s, non-streaming c=1", 82, "gw_rps_c1", "req/s", True),
    ("added median latency, c=1", 11.4, "added_p50_ms", "ms", False),
    ("CPU per request", (12, 15), "gw_cpu_ms_per_req_c32", "ms", False),
    ("streams/s at 32 concurrent streams (direct 83/s)", 25, "gw_streams_c32", "streams/s", True),
    ("idle RSS", 331, "idle_rss_mib", "MiB", False),
    ("start-up time", 6.6, "startup_s", "s", False),
]


# --- small helpers ------------------------------------------------------------------------------------------------


def log(msg):
    """Print a progress line (to stderr, so stdout holds only the report)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu_ticks(pid):
    """Return utime+stime of a process (all its threads) in clock ticks, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5), counted after "pid (comm) "


def rss_bytes(pid):
    """Return VmRSS of a process in bytes, or None."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def system_ticks():
    """Return (busy, total) clock ticks of all CPUs from /proc/stat."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - idle, total


def free_port():
    """Return a TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def http_get_json(port, path, timeout=2.0):
    """GET http://127.0.0.1:port/path; return (status, decoded JSON or None). Raises OSError if unreachable."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        try:
            return resp.status, json.loads(body)
        except ValueError:
            return resp.status, None
    finally:
        conn.close()


def machine_info():
    """Describe the machine and the software under test."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            mem_total = int(fh.readline().split()[1]) * 1024
    except OSError:
        mem_total = None
    versions = {}
    for dist in ("django", "uvicorn", "uvloop", "httptools", "aiohttp", "psycopg", "litellm"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = [line[3:] for line in git("status", "--porcelain").splitlines()]
    return {
        "git_commit": git("log", "-1", "--format=%h %s").strip()[:70],
        "git_changed_files": changed,
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "mem_total_mib": round(mem_total / MIB) if mem_total else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "versions": versions,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


# --- child processes ----------------------------------------------------------------------------------------------


class Children:
    """Child processes we started; stopped by PID, always."""

    def __init__(self):
        self.procs = []  # (name, Popen)
        self.keep_logs = True  # cleared once a run ends without a problem in the gateway log
        self.logdir = Path(tempfile.mkdtemp(prefix="chatvault-bench-"))

    def spawn(self, name, command, env):
        """Start a process with stdout/stderr to a log file; return (Popen, log path)."""
        log_path = self.logdir / f"{name}.log"
        fh = open(log_path, "wb")
        try:
            proc = subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT
            )
        finally:
            fh.close()
        self.procs.append((name, proc))
        return proc, log_path

    def remove_logs(self):
        """Delete the log directory."""
        for path in self.logdir.iterdir():
            path.unlink()
        self.logdir.rmdir()

    def stop_all(self):
        """SIGTERM every live child (gateway first, so it can flush), then SIGKILL whatever lingers."""
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    continue
                try:
                    proc.wait(timeout=25 if name == "gateway" else 5)
                except subprocess.TimeoutExpired:
                    log(f"{name} (pid {proc.pid}) ignored SIGTERM; killing it")
                    proc.kill()
                    proc.wait(timeout=5)
        self.procs.clear()


def tail(path, lines=30):
    """Return the last lines of a log file."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def log_problems(path, keep=5):
    """Return (count, first few) of the ERROR / Traceback lines of a log file."""
    count, first = 0, []
    try:
        with open(path, errors="replace") as fh:
            for line in fh:
                if " ERROR " in line or line.startswith("Traceback"):
                    count += 1
                    if len(first) < keep:
                        first.append(line.rstrip())
    except OSError:
        pass
    return count, first


def start_fake(children, name, *args):
    """Start a fake provider on a free port; return (Popen, port)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc, log_path = children.spawn(
        name, [sys.executable, "-m", "routing.fake_provider", "--port", "0", "--host", HOST, *args], env
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        match = PAGE_LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            return proc, int(match.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    raise RuntimeError(f"{name} did not start:\n{tail(log_path)}")


# --- database -----------------------------------------------------------------------------------------------------


def database_urls(name=BENCH_DB):
    """Return (admin URL on the `postgres` db, URL of the bench database `name`) built from DATABASE_URL."""
    url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/chatvault")
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql", "pgsql"):
        raise SystemExit(f"bench needs a Postgres DATABASE_URL, got scheme {parts.scheme!r}")
    admin = urlunsplit(("postgresql", parts.netloc, "/postgres", parts.query, ""))
    bench = urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))
    return admin, bench


def drop_database(admin_url, name=BENCH_DB):
    """Drop a bench database if it exists."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def recreate_database(admin_url, name=BENCH_DB):
    """Drop and create a bench database."""
    drop_database(admin_url, name)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


SETUP_CODE = """
import json, os
from routing.auth import api_key_create
from routing.models import Model, Provider, ProviderInstance
provider = Provider.objects.create(name="bench-fake", kind="openai", openai_compatible=True)
for name, api_base in json.loads(os.environ["BENCH_MODELS"]).items():
    model = Model.objects.create(name=name)
    inst = ProviderInstance(id=name + "-0", model=model, provider=provider, litellm_model="openai/gpt-4o-mini",
                            api_base=api_base)
    inst.set_api_key("sk-bench-upstream-0000")
    inst.save()
key, raw = api_key_create(name="bench")
key.auto_models.set([m for m in Model.objects.all() if not m.name.startswith("bench-x-")])
if Model.objects.filter(name="bench-x-a").exists():
    from experiments.models import Experiment, Variant
    experiment = Experiment.objects.create(id="bench-exp", name="bench", status="running", traffic_percentage=100.0)
    for position, name in enumerate(["bench-x-a", "bench-x-b"]):
        Variant.objects.create(experiment=experiment, model=Model.objects.get(name=name), is_control=position == 0,
                               position=position)
print("BENCH_KEY=" + raw)
"""


def prepare_database(admin_url, bench_url, models):
    """Recreate, migrate and configure the bench database; return the raw API key."""
    recreate_database(admin_url)
    env = dict(os.environ, DATABASE_URL=bench_url)
    manage = [sys.executable, "manage.py"]
    run = subprocess.run(
        [*manage, "migrate", "--no-input", "-v", "0"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if run.returncode:
        raise RuntimeError(f"migrate failed:\n{run.stdout}\n{run.stderr}")
    env["BENCH_MODELS"] = json.dumps(models)
    run = subprocess.run(
        [*manage, "shell", "-c", SETUP_CODE], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    match = re.search(r"^BENCH_KEY=(\S+)$", run.stdout, re.M)
    if run.returncode or not match:
        raise RuntimeError(f"bench configuration failed:\n{run.stdout}\n{run.stderr}")
    return match.group(1)


def requestlog_counts(bench_url):
    """Return (row count, {outcome: count}) of RequestLog in the bench database."""
    with psycopg.connect(bench_url) as conn:
        rows = conn.execute("SELECT outcome, count(*) FROM routing_requestlog GROUP BY outcome").fetchall()
    by_outcome = {outcome: count for outcome, count in rows}
    return sum(by_outcome.values()), by_outcome


# --- gateway ------------------------------------------------------------------------------------------------------


def start_gateway(children, bench_url):
    """Spawn one uvicorn worker; return (Popen, port, start-up seconds, log path)."""
    port = free_port()
    env = dict(os.environ, DATABASE_URL=bench_url, PYTHONUNBUFFERED="1")
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "chatvault_site.asgi:application",
        "--host",
        HOST,
        "--port",
        str(port),
        "--no-access-log",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--timeout-graceful-shutdown",
        "20",
    ]
    t0 = time.perf_counter()
    proc, log_path = children.spawn("gateway", command, env)
    deadline = t0 + 60
    while True:
        try:
            status, _ = http_get_json(port, "/healthz", timeout=1.0)
            if status == 200:
                return proc, port, time.perf_counter() - t0, log_path
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{tail(log_path)}")
        if time.perf_counter() > deadline:
            raise RuntimeError(f"gateway not healthy after 60 s:\n{tail(log_path)}")
        time.sleep(0.01)


def wait_log_drained(port, timeout=120):
    """Wait until the gateway's request-log queue is empty; return the last request_log stats."""
    deadline = time.monotonic() + timeout
    stats = None
    while time.monotonic() < deadline:
        try:
            status, body = http_get_json(port, "/healthz")
            if status == 200 and body:
                stats = body.get("request_log") or {}
                if stats.get("pending") == 0:
                    return stats, True
        except OSError:
            pass
        time.sleep(0.1)
    return stats, False


# --- tail phases: wrk -------------------------------------------------------------------------------------------

# wrk's own summary, printed as one JSON line; latencies in microseconds from its HdrHistogram (every request).
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = os.getenv("CHATVAULT_WRK_BODY")
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("CHATVAULT_WRK_AUTH")
if auth and auth ~= "" then wrk.headers["Authorization"] = auth end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests": %d, "duration_us": %d, "socket_errors": %d, "non_2xx": %d, '
    .. '"p50": %d, "p90": %d, "p99": %d, "p999": %d, "max": %d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""
TAIL_CONCURRENCIES = (1, 32)


def run_wrk(target, pids, *, concurrency, duration):
    """Run wrk (closed loop, one thread, `concurrency` keep-alive connections) for duration s; return its figures.

    wrk records every request's latency in its own histogram, independently of our aiohttp client, so the two
    clients' tails can be compared; CPU is read at the window's edges as for the other phases.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    env = dict(os.environ, CHATVAULT_WRK_BODY=make_body(MODEL, False).decode(),
               CHATVAULT_WRK_AUTH=target.headers.get("Authorization", ""))  # fmt: skip
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration:g}s", "--timeout", "10s", "-s", script.name, target.url]
    ticks0 = {name: cpu_ticks(pid) for name, pid in pids.items()}
    began = time.perf_counter()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=duration + 60)
    finally:
        os.unlink(script.name)
    elapsed = time.perf_counter() - began
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}")
    summary = json.loads(line[4:])
    requests = summary["requests"]
    cpu = {}
    for name, pid in pids.items():
        used_ms = (cpu_ticks(pid) - ticks0[name]) * 1000 / CLK_TCK
        cpu[name] = {"ms_per_req": used_ms / requests if requests else None, "pct_of_core": used_ms / elapsed / 10}
    return {
        "client": "wrk",
        "target": target.name,
        "concurrency": concurrency,
        "requests": requests,
        "rate_per_s": requests / (summary["duration_us"] / 1e6),
        "errors": summary["socket_errors"] + summary["non_2xx"],
        "latency_ms": {p: summary[p] / 1000 for p in ("p50", "p90", "p99", "p999", "max")},
        "cpu": cpu,
    }


def run_tail(args, direct, gateway, fake_pid):
    """Run the wrk phases, direct then through the gateway, at each of TAIL_CONCURRENCIES; return their figures."""
    phases = {}
    for concurrency in TAIL_CONCURRENCIES:
        for target in (direct, gateway):
            log(f"tail phase c={concurrency} {target.name}: wrk, {args.tail_duration:g} s")
            pids = dict(target.pids, fake=fake_pid)
            result = run_wrk(target, pids, concurrency=concurrency, duration=args.tail_duration)
            if target is gateway:
                # wrk counts completed requests; those cut off at the window's end are logged as disconnected.
                target.sent += result["requests"]
                target.slack += concurrency
            phases[f"t{concurrency}_{target.name}"] = result
            time.sleep(0.5)
    return phases


# --- load client --------------------------------------------------------------------------------------------------


class Target:
    """Where a phase sends requests: the fake directly, or the gateway."""

    def __init__(self, name, port, headers, pids):
        self.name = name
        self.url = f"http://{HOST}:{port}/v1/chat/completions"
        self.headers = headers
        self.pids = pids  # {"gateway": pid} or {}: CPU is read for each (plus the fake serving the phase)
        self.sent = 0  # requests that left the client (for the RequestLog check)
        self.slack = 0  # requests wrk may have cut off at a window's end: logged, but not counted as sent


def make_body(model, stream):
    """Return the pre-encoded request body."""
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


class RssWatch:
    """Largest RSS of the gateway seen while load runs."""

    def __init__(self, pid):
        self.pid = pid
        self.max = 0

    def sample(self):
        value = rss_bytes(self.pid)
        if value and value > self.max:
            self.max = value


async def run_phase(target, *, pids, model, stream, concurrency, warmup, duration, rss_watch):
    """Run one load phase and return its figures."""
    body = make_body(model, stream)
    headers = dict(target.headers, **{"Content-Type": "application/json"})
    url = target.url
    perf = time.perf_counter
    done = []  # (start, end, ttft or None) of successful requests
    errors = []  # short descriptions
    state = {"stop_at": math.inf}
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S, sock_connect=10)
    session = aiohttp.ClientSession(connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",))

    async def one_request():
        start = perf()
        target.sent += 1
        ttft = None
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                if stream:
                    tail_bytes = b""
                    async for chunk in resp.content.iter_any():
                        if ttft is None:
                            seen = tail_bytes + chunk
                            if b"data:" in seen:
                                ttft = perf() - start
                        tail_bytes = (tail_bytes + chunk)[-64:]
                    if resp.status != 200:
                        errors.append(f"HTTP {resp.status}: {tail_bytes[-60:]!r}")
                        return
                    if not tail_bytes.rstrip().endswith(b"data: [DONE]"):
                        errors.append(f"stream did not end with data: [DONE] (ended {tail_bytes[-40:]!r})")
                        return
                else:
                    data = await resp.read()
                    if resp.status != 200:
                        errors.append(f"HTTP {resp.status}: {data[:120]!r}")
                        return
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:160])
            return
        done.append((start, perf(), ttft))

    async def worker():
        while perf() < state["stop_at"]:
            await one_request()

    t_begin = perf()
    measure_start = t_begin + warmup
    measure_end = measure_start + duration
    state["stop_at"] = measure_end
    marks = {}

    async def controller():
        # Sample RSS every 0.25 s; snapshot CPU counters at both edges of the measured window.
        while perf() < measure_start:
            rss_watch.sample()
            await asyncio.sleep(min(0.25, max(0.0, measure_start - perf())))
        marks["start"] = (perf(), {n: cpu_ticks(p) for n, p in pids.items()}, time.process_time(), system_ticks())
        while perf() < measure_end:
            rss_watch.sample()
            await asyncio.sleep(min(0.25, max(0.0, measure_end - perf())))
        marks["end"] = (perf(), {n: cpu_ticks(p) for n, p in pids.items()}, time.process_time(), system_ticks())
        rss_watch.sample()

    workers = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    ctl = asyncio.ensure_future(controller())
    bound = warmup + duration + REQUEST_TIMEOUT_S + 15
    try:
        _, pending = await asyncio.wait([ctl, *workers], timeout=bound)
        if pending:
            errors.append(f"{len(pending)} tasks still running after {bound:.0f} s; cancelled")
    finally:  # also on Ctrl-C: stop every task of this phase before its session goes
        for task in (ctl, *workers):
            task.cancel()
        await asyncio.gather(ctl, *workers, return_exceptions=True)
        await session.close()

    for edge in ("start", "end"):  # missing only if the phase had to be cut short
        marks.setdefault(
            edge, (perf(), {n: cpu_ticks(p) for n, p in pids.items()}, time.process_time(), system_ticks())
        )
    w0, cpu0, client0, sys0 = marks["start"]
    w1, cpu1, client1, sys1 = marks["end"]
    window = w1 - w0
    measured = [(s, e, t) for s, e, t in done if w0 <= e < w1]
    n = len(measured)
    latencies = sorted((e - s) * 1000 for s, e, _ in measured)
    result = {
        "target": target.name,
        "model": model,
        "stream": stream,
        "concurrency": concurrency,
        "window_s": round(window, 3),
        "completed": n,
        "completed_total": len(done),
        "rate_per_s": n / window if window > 0 else 0.0,
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "latency_ms": {p: percentile(latencies, q) for p, q in (("p50", 50), ("p90", 90), ("p99", 99))},
        "latency_ms_max": latencies[-1] if latencies else None,
    }
    if stream:
        ttfts = sorted(t * 1000 for _, _, t in measured if t is not None)
        result["ttft_ms"] = {p: percentile(ttfts, q) for p, q in (("p50", 50), ("p90", 90), ("p99", 99))}
    tick_ms = 1000 / CLK_TCK
    cpu = {}
    for name in pids:
        if cpu0.get(name) is not None and cpu1.get(name) is not None:
            used_ms = (cpu1[name] - cpu0[name]) * tick_ms
            cpu[name] = {
                "ms": used_ms,
                "ms_per_req": used_ms / n if n else None,
                "pct_of_core": used_ms / (window * 10) if window > 0 else None,
            }
    client_ms = (client1 - client0) * 1000
    cpu["client"] = {
        "ms": client_ms,
        "ms_per_req": client_ms / n if n else None,
        "pct_of_core": client_ms / (window * 10) if window > 0 else None,
    }
    busy_ms = (sys1[0] - sys0[0]) * tick_ms
    total_ms = (sys1[1] - sys0[1]) * tick_ms
    ours_ms = sum(v["ms"] for v in cpu.values())
    result["cpu"] = cpu
    result["machine_cpu_busy_pct"] = 100 * busy_ms / total_ms if total_ms else None
    # Everything else that ran meanwhile: Postgres (request log), the kernel's softirq work, other users' jobs.
    result["other_cpu_pct_of_core"] = max(0.0, busy_ms - ours_ms) / (window * 10) if window > 0 else None
    return result


# --- the run ------------------------------------------------------------------------------------------------------


PHASES = [
    # key, title, model, stream, concurrency, short
    ("a", "non-streaming, c=1", MODEL, False, 1, False),
    # Right after a, on the same warm process, so the difference between the two is selection alone.
    ("f", "model=auto, c=1", AUTO, False, 1, False),
    # Likewise right after a: the difference is experiment assignment (and the row's experiment columns) alone.
    ("g", "experiment, c=1", EXPERIMENT_MODEL, False, 1, False),
    ("b", "non-streaming, c=32", MODEL, False, 32, False),
    ("c", "streaming, 32 streams", STREAM_MODEL, True, 32, False),
    ("d", "streaming, c=1", STREAM_MODEL, True, 1, False),
    ("e", "streaming, 256 streams", STREAM_MODEL, True, 256, True),
]


async def warm_gateway(gateway):
    """Send a few requests through the gateway (counted for the RequestLog check) before idle RSS is read."""
    headers = dict(gateway.headers, **{"Content-Type": "application/json"})
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as session:
        for model, stream, count in ((MODEL, False, 20), (STREAM_MODEL, True, 5)):
            for _ in range(count):
                gateway.sent += 1
                async with session.post(gateway.url, data=make_body(model, stream), headers=headers) as resp:
                    data = await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"warm-up request to {model} got {resp.status}: {data[:300]!r}")


async def run_load(args, direct_targets, gateway, fake_pids, rss_watch):
    """Warm the gateway, read idle RSS, then run every phase direct and through the gateway."""
    await warm_gateway(gateway)
    await asyncio.sleep(0.5)
    # Idle: no requests for 2 s; the CPU used meanwhile is the background threads' (config poller, log writer).
    gw_pid = gateway.pids["gateway"]
    t0, ticks0 = time.perf_counter(), cpu_ticks(gw_pid)
    await asyncio.sleep(2.0)
    idle_cpu_pct = (cpu_ticks(gw_pid) - ticks0) * 1000 / CLK_TCK / ((time.perf_counter() - t0) * 10)
    idle_rss = rss_bytes(gw_pid)
    phases = {}
    for key, title, model, stream, concurrency, short in PHASES:
        duration = args.burst_duration if short else args.duration
        concurrency = args.burst_concurrency if short else concurrency
        for target in (direct_targets[model], gateway):
            log(f"phase {key} ({title}) {target.name}: {args.warmup:g} s warm-up + {duration:g} s")
            # CPU is read for the processes on the request path: the fake serving the model, and the gateway.
            pids = dict(target.pids, fake=fake_pids[model])
            result = await run_phase(
                target,
                pids=pids,
                model=model,
                stream=stream,
                concurrency=concurrency,
                warmup=args.warmup,
                duration=duration,
                rss_watch=rss_watch,
            )
            result["title"] = title
            phases[f"{key}_{target.name}"] = result
            if result["errors"]:
                log(f"  {result['errors']} errors, e.g. {result['error_samples'][:2]}")
            await asyncio.sleep(0.5)  # let sockets settle between phases
    return idle_rss, idle_cpu_pct, phases


def derive(figures):
    """Compute the headline figures from the phase results."""
    ph = figures["phases"]

    def lat(key, p, field="latency_ms"):
        return ph[key][field][p]

    def diff(a, b):
        return None if a is None or b is None else a - b

    tail = figures["tail_phases"]

    def tail_added(concurrency, p):
        gw, direct = tail.get(f"t{concurrency}_gateway"), tail.get(f"t{concurrency}_direct")
        return None if gw is None or direct is None else gw["latency_ms"][p] - direct["latency_ms"][p]

    d = {
        **{f"tail_added_{p}_ms_c{c}": tail_added(c, p) for c in TAIL_CONCURRENCIES for p in ("p50", "p99", "p999")},
        "startup_s": figures["startup_s"],
        "idle_rss_mib": figures["idle_rss_mib"],
        "loaded_rss_mib": figures["loaded_rss_mib"],
        "gw_rps_c1": ph["a_gateway"]["rate_per_s"],
        "direct_rps_c1": ph["a_direct"]["rate_per_s"],
        "gw_rps_c32": ph["b_gateway"]["rate_per_s"],
        "direct_rps_c32": ph["b_direct"]["rate_per_s"],
        "added_p50_ms": diff(lat("a_gateway", "p50"), lat("a_direct", "p50")),
        "added_p90_ms": diff(lat("a_gateway", "p90"), lat("a_direct", "p90")),
        "added_p99_ms": diff(lat("a_gateway", "p99"), lat("a_direct", "p99")),
        "added_p50_ms_c32": diff(lat("b_gateway", "p50"), lat("b_direct", "p50")),
        "added_p99_ms_c32": diff(lat("b_gateway", "p99"), lat("b_direct", "p99")),
        "gw_cpu_ms_per_req_c1": ph["a_gateway"]["cpu"]["gateway"]["ms_per_req"],
        "gw_cpu_ms_per_req_c32": ph["b_gateway"]["cpu"]["gateway"]["ms_per_req"],
        "gw_streams_c32": ph["c_gateway"]["rate_per_s"],
        "direct_streams_c32": ph["c_direct"]["rate_per_s"],
        "stream32_pct_of_direct": (
            100 * ph["c_gateway"]["rate_per_s"] / ph["c_direct"]["rate_per_s"] if ph["c_direct"]["rate_per_s"] else None
        ),
        "added_ttft_p50_ms": diff(lat("d_gateway", "p50", "ttft_ms"), lat("d_direct", "p50", "ttft_ms")),
        "added_ttft_p99_ms": diff(lat("d_gateway", "p99", "ttft_ms"), lat("d_direct", "p99", "ttft_ms")),
        "added_ttft_p50_ms_c32": diff(lat("c_gateway", "p50", "ttft_ms"), lat("c_direct", "p50", "ttft_ms")),
        "gw_streams_c256": ph["e_gateway"]["rate_per_s"],
        "direct_streams_c256": ph["e_direct"]["rate_per_s"],
        "stream256_errors": ph["e_gateway"]["errors"],
        "stream256_direct_errors": ph["e_direct"]["errors"],
        "gateway_errors_total": sum(r["errors"] for k, r in [*ph.items(), *tail.items()] if k.endswith("_gateway")),
        "direct_errors_total": sum(r["errors"] for k, r in ph.items() if k.endswith("_direct")),
        "requestlog_mismatch": figures["request_log"]["mismatch"],
        # What selection adds: the same request with model=auto against the model named, both through the gateway.
        "selection_added_p50_ms": diff(lat("f_gateway", "p50"), lat("a_gateway", "p50")),
        "selection_added_p99_ms": diff(lat("f_gateway", "p99"), lat("a_gateway", "p99")),
        "selection_cpu_ms_per_req": diff(
            ph["f_gateway"]["cpu"]["gateway"]["ms_per_req"], ph["a_gateway"]["cpu"]["gateway"]["ms_per_req"]
        ),
        # What experiment assignment adds: an enrolled request against the same request outside any experiment.
        "experiment_added_p50_ms": diff(lat("g_gateway", "p50"), lat("a_gateway", "p50")),
        "experiment_added_p99_ms": diff(lat("g_gateway", "p99"), lat("a_gateway", "p99")),
        "experiment_cpu_ms_per_req": diff(
            ph["g_gateway"]["cpu"]["gateway"]["ms_per_req"], ph["a_gateway"]["cpu"]["gateway"]["ms_per_req"]
        ),
    }
    return d


# --- report -------------------------------------------------------------------------------------------------------


def fmt(value, digits=1):
    """Format a number or '-'."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def report(figures):
    """Return the printed report."""
    m = figures["machine"]
    d = figures["derived"]
    ph = figures["phases"]
    out = []
    w = out.append
    w("=" * 118)
    w("ChatVault benchmark")
    w("=" * 118)
    w(f"machine   : {m['nproc']} CPUs usable ({m['cpu_model']}), {m['mem_total_mib']} MiB RAM, Linux {m['kernel']}")
    w(f"software  : Python {m['python']}, " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v))
    w(f"command   : {' '.join([os.path.relpath(sys.executable, REPO_ROOT), *sys.argv])} (cwd {REPO_ROOT})")
    w(
        f"code      : commit {m['git_commit']}"
        + (
            f"; uncommitted changes in {len(m['git_changed_files'])} paths: {' '.join(m['git_changed_files'][:6])}"
            if m["git_changed_files"]
            else "; no uncommitted changes"
        )
    )
    w(
        f"load avg  : {' '.join(map(str, m['loadavg_at_start']))} at start, "
        f"{' '.join(map(str, figures['loadavg_at_end']))} at end"
    )
    w(
        f"setup     : 1 gateway worker (uvicorn --loop uvloop --http httptools --no-access-log), request logging on "
        f"(Postgres db {BENCH_DB}); fake providers: '{MODEL}' (20 words, no delay), '{STREAM_MODEL}' "
        f"({STREAM_CHUNKS} chunks {STREAM_CHUNK_DELAY_MS} ms apart)"
    )
    w(
        f"client    : asyncio + {'uvloop' if uvloop else 'asyncio loop'} + aiohttp {m['versions']['aiohttp']}, "
        f"one keep-alive session per phase, limit = concurrency; {figures['args']['warmup']:g} s warm-up, "
        f"{figures['args']['duration']:g} s window ({figures['args']['burst_duration']:g} s for phase e)"
    )
    w(
        f"NOTE      : the load client, the gateway and the fake providers all share these {m['nproc']} cores; "
        "every figure includes that contention."
    )
    w("")
    w(f"start-up (spawn -> first /healthz 200, 10 ms polling) : {fmt(figures['startup_s'], 3)} s")
    w(f"RSS right after start-up                              : {fmt(figures['startup_rss_mib'])} MiB")
    w(f"idle RSS (after 25 warm-up requests)                  : {fmt(figures['idle_rss_mib'])} MiB")
    w(f"loaded RSS (max sampled during all load phases)       : {fmt(figures['loaded_rss_mib'])} MiB")
    w(f"idle CPU (2 s without requests: background threads)   : {fmt(figures['idle_cpu_pct_of_core'])} % of a core")
    w("")
    head = (
        f"{'phase':<27}{'target':<8}{'rate/s':>8}{'lat p50':>9}{'p90':>8}{'p99':>8}{'TTFT p50':>9}{'p99':>8}"
        f"{'errors':>7}{'gw CPU':>8}{'gw %':>6}{'fake CPU':>9}{'cli CPU':>8}{'other':>7}{'busy':>6}"
    )
    w("Load phases: latency and TTFT in ms; rate = req/s or streams/s; CPU columns in ms per completed request")
    w("(gw, fake, cli = load client); 'gw %' = gateway CPU in % of one core (100 = its single worker is saturated);")
    w("'other' = CPU of everything else (Postgres, kernel, other users' jobs) in % of one core;")
    w("'busy' = machine-wide busy %.")
    w(head)
    w("-" * len(head))
    for key, result in ph.items():
        cpu = result["cpu"]
        fake_cpu = cpu.get("fake", {}).get("ms_per_req")
        gw_cpu = cpu.get("gateway", {})
        ttft = result.get("ttft_ms") or {}
        title = f"{key[0]}. {result['title']}" if key.endswith("_direct") else ""
        w(
            f"{title:<27}{result['target']:<8}{fmt(result['rate_per_s']):>8}{fmt(result['latency_ms']['p50'], 2):>9}"
            f"{fmt(result['latency_ms']['p90'], 2):>8}{fmt(result['latency_ms']['p99'], 2):>8}"
            f"{fmt(ttft.get('p50'), 2):>9}{fmt(ttft.get('p99'), 2):>8}{result['errors']:>7}"
            f"{fmt(gw_cpu.get('ms_per_req'), 2):>8}{fmt(gw_cpu.get('pct_of_core'), 0):>6}"
            f"{fmt(fake_cpu, 2):>9}"
            f"{fmt(cpu['client']['ms_per_req'], 2):>8}{fmt(result['other_cpu_pct_of_core'], 0):>7}"
            f"{fmt(result['machine_cpu_busy_pct'], 0):>6}"
        )
    if figures["tail_phases"]:
        w("")
        w("Tail phases: wrk 4 (closed loop, 1 thread, keep-alive), non-streaming, every request's latency in ms;")
        w("CPU in ms per completed request.")
        head = f"{'concurrency':<14}{'target':<9}{'rate/s':>8}{'p50':>8}{'p90':>8}{'p99':>8}{'p99.9':>8}{'max':>8}"
        head += f"{'errors':>7}{'gw CPU':>8}{'fake CPU':>9}"
        w(head)
        w("-" * len(head))
        for result in figures["tail_phases"].values():
            lat = result["latency_ms"]
            w(
                f"{'c=' + str(result['concurrency']):<14}{result['target']:<9}{fmt(result['rate_per_s']):>8}"
                + "".join(f"{fmt(lat[p], 2):>8}" for p in ("p50", "p90", "p99", "p999", "max"))
                + f"{result['errors']:>7}{fmt(result['cpu'].get('gateway', {}).get('ms_per_req'), 2):>8}"
                f"{fmt(result['cpu']['fake']['ms_per_req'], 2):>9}"
            )
    loop = figures.get("event_loop")
    if loop:
        w(
            f"event loop (whole run, /healthz): {loop['ticks']} ticks of {loop['tick_ms']:g} ms, mean lag "
            f"{fmt(loop['mean_lag_ms'], 3)} ms, max {fmt(loop['max_lag_ms'], 2)} ms, ticks late over "
            + ", ".join(f"{t} ms: {n}" for t, n in loop["ticks_late_over_ms"].items())
        )
    w("")
    w("Derived")
    w(
        f"  added latency c=1        : p50 {fmt(d['added_p50_ms'], 2)} ms, p90 {fmt(d['added_p90_ms'], 2)} ms, "
        f"p99 {fmt(d['added_p99_ms'], 2)} ms"
    )
    w(f"  added latency c=32       : p50 {fmt(d['added_p50_ms_c32'], 2)} ms, p99 {fmt(d['added_p99_ms_c32'], 2)} ms")
    for c in TAIL_CONCURRENCIES:
        w(
            f"  added latency c={c:<2} (wrk) : p50 {fmt(d[f'tail_added_p50_ms_c{c}'], 2)} ms, "
            f"p99 {fmt(d[f'tail_added_p99_ms_c{c}'], 2)} ms, p99.9 {fmt(d[f'tail_added_p999_ms_c{c}'], 2)} ms"
        )
    w(
        f"  gateway CPU per request  : {fmt(d['gw_cpu_ms_per_req_c1'], 2)} ms at c=1, "
        f"{fmt(d['gw_cpu_ms_per_req_c32'], 2)} ms at c=32"
    )
    w(
        f"  streaming at 32          : {fmt(d['gw_streams_c32'])} vs {fmt(d['direct_streams_c32'])} streams/s direct "
        f"= {fmt(d['stream32_pct_of_direct'])} %; added TTFT p50 {fmt(d['added_ttft_p50_ms_c32'], 2)} ms"
    )
    w(f"  added TTFT c=1           : p50 {fmt(d['added_ttft_p50_ms'], 2)} ms, p99 {fmt(d['added_ttft_p99_ms'], 2)} ms")
    w(
        f"  selection (auto vs named): p50 {fmt(d['selection_added_p50_ms'], 3)} ms, "
        f"p99 {fmt(d['selection_added_p99_ms'], 3)} ms, CPU {fmt(d['selection_cpu_ms_per_req'], 3)} ms per request"
    )
    w(
        f"  experiment (enrolled)    : p50 {fmt(d['experiment_added_p50_ms'], 3)} ms, "
        f"p99 {fmt(d['experiment_added_p99_ms'], 3)} ms, CPU {fmt(d['experiment_cpu_ms_per_req'], 3)} ms per request"
    )
    w(
        f"  streaming at 256         : {fmt(d['gw_streams_c256'])} vs {fmt(d['direct_streams_c256'])} streams/s "
        f"direct; errors {d['stream256_errors']} gateway, {d['stream256_direct_errors']} direct"
    )
    w(f"  errors, all phases       : {d['gateway_errors_total']} gateway, {d['direct_errors_total']} direct")
    for key, result in ph.items():
        for sample in result["error_samples"]:
            w(f"    {key}: {sample}")
    rl = figures["request_log"]
    line = (
        f"  RequestLog               : {rl['rows']} rows for {rl['gateway_requests_sent']} gateway requests sent "
        f"(by outcome {rl['by_outcome']}; writer {rl['writer_stats']})"
    )
    w(line)
    if rl["mismatch"]:
        w(
            f"  !!! RequestLog MISMATCH: {rl['rows']} rows != {rl['gateway_requests_sent']} requests sent "
            f"(drained: {rl['drained']}) !!!"
        )
    count, problems = figures["gateway_log_problems"]
    kept = "kept" if count else "removed at exit"
    w(f"  gateway log              : {count} ERROR/Traceback lines ({figures['gateway_log']}, {kept})")
    for line in problems:
        w(f"    {line[:150]}")
    w("")
    w("Targets")
    for name, key, op, threshold, unit in TARGETS:
        value = d.get(key)
        ok = value is not None and (value >= threshold if op == ">=" else value <= threshold)
        w(f"  {'PASS' if ok else 'FAIL'}  {name:<42} {fmt(value, 2):>9} {unit:<9} (target {op} {threshold} {unit})")
    w("")
    w("Against the LiteLLM proxy (measured on this machine type)")
    for name, ref, key, unit, higher_better in LITELLM:
        value = d.get(key)
        ref_text = f"{ref[0]}-{ref[1]}" if isinstance(ref, tuple) else f"{ref:g}"
        ref_mid = sum(ref) / 2 if isinstance(ref, tuple) else ref
        if value is None or value <= 0:
            factor = "-"
        else:
            ratio = value / ref_mid if higher_better else ref_mid / value
            factor = f"{ratio:.1f}x {'better' if ratio >= 1 else 'worse'}"
        w(f"  {name:<50} LiteLLM {ref_text:>7} {unit:<9} ChatVault {fmt(value, 2):>8} {unit:<9} {factor}")
    w("=" * 118)
    return "\n".join(out)


# --- main ---------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Benchmark the ChatVault gateway against a local fake provider.")
    parser.add_argument("--duration", type=float, default=10.0, help="Measured seconds per phase (default 10).")
    parser.add_argument("--warmup", type=float, default=1.5, help="Warm-up seconds before each phase (default 1.5).")
    parser.add_argument(
        "--burst-duration",
        type=float,
        default=None,
        help="Measured seconds of the 256-stream phase (default: half of --duration, at least 3).",
    )
    parser.add_argument("--burst-concurrency", type=int, default=256, help="Streams in phase e (default 256).")
    parser.add_argument(
        "--tail-duration",
        type=float,
        default=30.0,
        help="Seconds of each wrk tail phase (c=1 and c=32, direct and gateway; default 30; 0 skips them).",
    )
    parser.add_argument("--json", metavar="PATH", help="Also write every figure to this JSON file.")
    args = parser.parse_args(argv)
    if args.burst_duration is None:
        args.burst_duration = max(3.0, args.duration / 2)
    for name in ("duration", "warmup", "burst_duration"):
        if not 0 < getattr(args, name) <= 600:
            parser.error(f"--{name.replace('_', '-')} must be in (0, 600]")
    if not 0 <= args.tail_duration <= 600:
        parser.error("--tail-duration must be in [0, 600]")
    if not 1 <= args.burst_concurrency <= 1024:
        parser.error("--burst-concurrency must be in [1, 1024]")
    return args


def _sigterm(signum, frame):
    """Treat SIGTERM like Ctrl-C (asyncio.Runner turns SIGINT into a clean cancellation of the load)."""
    signal.raise_signal(signal.SIGINT)


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    signal.signal(signal.SIGTERM, _sigterm)
    machine = machine_info()
    admin_url, bench_url = database_urls()
    children = Children()
    try:
        log("starting fake providers")
        fake_a, port_a = start_fake(children, "fake", "--chunks", "20")
        fake_b, port_b = start_fake(
            children, "fake-stream", "--chunks", str(STREAM_CHUNKS), "--chunk-delay-ms", str(STREAM_CHUNK_DELAY_MS)
        )
        log(f"preparing database {BENCH_DB} (drop, create, migrate, configure)")
        raw_key = prepare_database(
            admin_url,
            bench_url,
            {
                MODEL: f"http://{HOST}:{port_a}/v1",
                STREAM_MODEL: f"http://{HOST}:{port_b}/v1",
                EXPERIMENT_MODEL: f"http://{HOST}:{port_a}/v1",
                "bench-x-b": f"http://{HOST}:{port_a}/v1",
            },
        )
        log("starting the gateway")
        gw_proc, gw_port, startup_s, gw_log = start_gateway(children, bench_url)
        startup_rss = rss_bytes(gw_proc.pid)
        log(f"gateway healthy after {startup_s:.3f} s (pid {gw_proc.pid}, log {gw_log})")

        gateway = Target("gateway", gw_port, {"Authorization": f"Bearer {raw_key}"}, {"gateway": gw_proc.pid})
        direct = {
            MODEL: Target("direct", port_a, {}, {}),
            STREAM_MODEL: Target("direct", port_b, {}, {}),
            AUTO: Target("direct", port_a, {}, {}),
            EXPERIMENT_MODEL: Target("direct", port_a, {}, {}),
        }
        rss_watch = RssWatch(gw_proc.pid)

        fake_pids = {MODEL: fake_a.pid, STREAM_MODEL: fake_b.pid, AUTO: fake_a.pid, EXPERIMENT_MODEL: fake_a.pid}
        loop_factory = uvloop.new_event_loop if uvloop is not None else None
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            idle_rss, idle_cpu_pct, phases = runner.run(run_load(args, direct, gateway, fake_pids, rss_watch))
        tail_phases = {}
        if args.tail_duration > 0 and shutil.which("wrk") is None:
            log("wrk not found (Debian: apt-get install wrk): the tail phases are skipped")
        elif args.tail_duration > 0:
            tail_phases = run_tail(args, direct[MODEL], gateway, fake_a.pid)
        loop_stats = (http_get_json(gw_port, "/healthz")[1] or {}).get("event_loop")

        log("waiting for the request log to drain")
        writer_stats, drained = wait_log_drained(gw_port)
        rows, by_outcome = requestlog_counts(bench_url)
        if gw_proc.poll() is not None:
            log(f"gateway exited early with {gw_proc.returncode}:\n{tail(gw_log)}")
        figures = {
            "machine": machine,
            "args": vars(args),
            "startup_s": startup_s,
            "startup_rss_mib": startup_rss / MIB if startup_rss else None,
            "idle_rss_mib": idle_rss / MIB if idle_rss else None,
            "idle_cpu_pct_of_core": idle_cpu_pct,
            "loaded_rss_mib": rss_watch.max / MIB if rss_watch.max else None,
            "phases": phases,
            "tail_phases": tail_phases,
            "event_loop": loop_stats,
            "request_log": {
                "rows": rows,
                "by_outcome": by_outcome,
                "gateway_requests_sent": gateway.sent,
                "missing": gateway.sent - rows,
                # Rows beyond those sent are fine up to the requests wrk cut off; any row missing is not.
                "mismatch": 0 if 0 <= rows - gateway.sent <= gateway.slack else abs(rows - gateway.sent),
                "drained": drained,
                "writer_stats": writer_stats,
            },
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
            "gateway_log": str(gw_log),
            "gateway_log_problems": log_problems(gw_log),
        }
        figures["derived"] = derive(figures)
        print(report(figures), flush=True)
        mismatch = figures["request_log"]["mismatch"]
        if mismatch:
            log(f"ERROR: RequestLog has {rows} rows but {gateway.sent} gateway requests were sent")
        # Performance misses only print FAIL; broken correctness (errors, lost log rows) also fails the command.
        failed = mismatch > 0 or figures["derived"]["gateway_errors_total"] > 0
        if not figures["gateway_log_problems"][0]:
            children.keep_logs = False
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2, default=str) + "\n")
            log(f"figures written to {args.json}")
        return 1 if failed else 0
    except KeyboardInterrupt:
        log("interrupted; stopping child processes")
        return 130
    finally:
        children.stop_all()
        if not children.keep_logs:
            children.remove_logs()


if __name__ == "__main__":
    sys.exit(main())
