"""How many request-log rows a SIGKILL loses under load, next to a SIGTERM, measured on a real gateway.

Rows are queued in memory and written every CHATVAULT_LOG_FLUSH_SECONDS (or every CHATVAULT_LOG_BATCH_SIZE rows),
so a SIGKILL can lose at most what was answered since the last write; a SIGTERM must lose nothing. This script
loads one gateway worker (logging on, production defaults) with concurrent clients, kills it mid-load, and counts
the answered requests (200 with an x-request-id) that have no row.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/chatvault ... .venv/bin/python bench/kill_window.py
    (or: make bench-kill)

Everything runs on 127.0.0.1, in the bench database that bench/run.py uses.
"""

import argparse
import asyncio
import importlib.util
import signal
import time
from pathlib import Path

import aiohttp
import psycopg

_spec = importlib.util.spec_from_file_location("bench_run", Path(__file__).with_name("run.py"))
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)


async def load(port, key, concurrency, seconds, kill_at, process, sig):
    """Send requests until `seconds` pass, sending `sig` to the gateway at `kill_at`; return the answered ids."""
    answered = []
    url = f"http://{harness.HOST}:{port}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    body = harness.make_body("bench-model", stream=False)
    deadline = time.monotonic() + seconds
    killed_at = []

    async def worker(session):
        while time.monotonic() < deadline:
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status == 200:
                        answered.append((time.monotonic(), resp.headers["x-request-id"]))
            except (aiohttp.ClientError, OSError):
                if killed_at:
                    return
                await asyncio.sleep(0.01)

    async def killer():
        await asyncio.sleep(kill_at)
        killed_at.append(time.monotonic())
        process.send_signal(sig)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(killer(), *(worker(session) for _ in range(concurrency)))
    return answered, killed_at[0]


def run_once(args, sig):
    """Run one kill under load; return its figures."""
    admin_url, bench_url = harness.database_urls()
    children = harness.Children()
    try:
        _, fake_port = harness.start_fake(children, "fake")
        key = harness.prepare_database(
            admin_url, bench_url, {"bench-model": f"http://{harness.HOST}:{fake_port}/v1"}
        )
        process, port, _, _ = harness.start_gateway(children, bench_url)
        answered, killed_at = asyncio.run(
            load(port, key, args.concurrency, args.duration, args.kill_after, process, sig)
        )
        process.wait(timeout=60)
        with psycopg.connect(bench_url) as conn:
            stored = {str(r[0]) for r in conn.execute("SELECT request_id FROM routing_requestlog")}
    finally:
        children.stop_all()
    lost = [at for at, request_id in answered if request_id not in stored]
    before_kill = [at for at, _ in answered if at <= killed_at]
    rate = len(before_kill) / args.kill_after if args.kill_after else 0
    return {
        "signal": signal.Signals(sig).name,
        "answered": len(answered),
        "rate": rate,
        "lost": len(lost),
        "lost_ms": 1000 * len(lost) / rate if rate else 0.0,
        "oldest_lost_s": killed_at - min(lost) if lost else 0.0,
    }


def main():
    """Measure SIGKILL and SIGTERM under load and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of load")
    parser.add_argument("--kill-after", type=float, default=4.0, help="seconds of load before the signal")
    parser.add_argument("--runs", type=int, default=3, help="SIGKILL runs (one SIGTERM run follows)")
    args = parser.parse_args()
    results = [run_once(args, signal.SIGKILL) for _ in range(args.runs)] + [run_once(args, signal.SIGTERM)]
    print("| signal | answered | req/s before | rows lost | lost as traffic time | oldest lost row answered |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['signal']} | {r['answered']:,} | {r['rate']:,.0f} | {r['lost']} | {r['lost_ms']:.0f} ms | "
              f"{r['oldest_lost_s'] * 1000:.0f} ms before the signal |")  # fmt: skip


if __name__ == "__main__":
    main()
