#!/usr/bin/env python
"""Cost of experiment assignment on the request path: one process, no server, no database.

    .venv/bin/python bench/assignment.py [--calls 20000] [--experiments 20]

Times `ChatRequest.resolve_model` (validation, model choice, and enrolment) for the same request body against two
in-memory snapshots that differ only in their running experiments: none, and one claiming the requested model at
100 % traffic (so every call is enrolled: two keyed hashes, the variant lookup and the decision record), among
--experiments others claiming other models. Calls alternate between the two snapshots so that the machine's
drift hits both alike; the difference of the medians is what assignment adds. Target: <= 0.05 ms at p50.
Also reports the pure `experiments.assignment.assign` call alone. Times are wall-clock (perf_counter_ns), garbage
collector on, as in the gateway; percentiles are nearest-rank.
"""

import argparse
import math
import os
import platform
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatvault_site.settings")
os.environ.setdefault("SECRET_KEY", "bench-only-secret-key")
os.environ.setdefault("DEBUG", "false")
# Nothing is encrypted here; settings only insist that a key is set.
os.environ.setdefault("CHATVAULT_ENCRYPTION_KEYS", "YmVuY2gtb25seS1rZXktbm90LWEtc2VjcmV0LTAwMDA=")

import django  # noqa: E402

django.setup()

from experiments.assignment import LiveVariant, assign, live_experiment  # noqa: E402
from routing.services import ChatRequest  # noqa: E402
from routing.snapshot import InstanceConfig, KeyConfig, ModelConfig, Snapshot  # noqa: E402

TARGET_MS = 0.05
BODY = {"model": "bench-a", "messages": [{"role": "user", "content": "hello"}], "user": "user-42"}


def percentile(sorted_values, p):
    """Return the nearest-rank p-th percentile of an ascending list."""
    return sorted_values[max(1, math.ceil(p / 100 * len(sorted_values))) - 1]


def model(name):
    """Return a model with one instance."""
    instance = InstanceConfig(id=f"{name}-0", model=name, provider_kind="openai", litellm_model="openai/x",
                              api_base="http://127.0.0.1:9", api_key="sk-x", openai_compatible=True, weight=1.0,
                              rpm=None, tpm=None, timeout=60, stream_timeout=60, input_cost_per_token=None,
                              output_cost_per_token=None)  # fmt: skip
    return ModelConfig(name=name, description="", strategy="round-robin", capabilities=(), context_window=None,
                       created=0, instances=(instance,))  # fmt: skip


def snapshots(others):
    """Return (snapshot without experiments, the same with one claiming bench-a among `others` more)."""
    names = ["bench-a", "bench-b"] + [f"other-{i}" for i in range(2 * others)]
    models = {name: model(name) for name in names}
    key = KeyConfig(pk=1, name="bench", prefix="cv-x", is_admin=False, allowed_models=None, expires_at=None,
                    revoked=False, auto_select=False)  # fmt: skip
    plain = Snapshot(token=None, models=models, keys_by_hash={}, default_strategy="round-robin", auto_select=False,
                     loaded_at=0.0)  # fmt: skip
    by_model = {}
    experiments = [("exp-bench", "bench-a", "bench-b")] + [
        (f"exp-{i}", f"other-{2 * i}", f"other-{2 * i + 1}") for i in range(others)
    ]
    for exp_id, a, b in experiments:
        live = live_experiment(id=exp_id, salt=exp_id, traffic_percentage=100.0,
                               variants=[LiveVariant(a, a, 1.0, True), LiveVariant(b, b, 1.0, False)])  # fmt: skip
        for name in (a, b):
            by_model.setdefault(name, []).append(live)
    with_experiments = Snapshot(token=None, models=models, keys_by_hash={}, default_strategy="round-robin",
                                auto_select=False, loaded_at=0.0,
                                experiments_by_model={k: tuple(v) for k, v in by_model.items()})  # fmt: skip
    return key, plain, with_experiments, by_model["bench-a"][0]


def time_resolve(key, snap):
    """Return the ns one resolve_model call takes."""
    chat = ChatRequest(request_id=uuid.uuid4(), key=key, snapshot=snap)
    started = time.perf_counter_ns()
    chat.resolve_model(dict(BODY))
    elapsed = time.perf_counter_ns() - started
    return elapsed, chat


def main(argv=None):
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000, help="Calls per snapshot (default 20,000).")
    parser.add_argument("--experiments", type=int, default=20, help="Other running experiments (default 20).")
    args = parser.parse_args(argv)
    key, plain, with_experiments, live = snapshots(args.experiments)

    _, chat = time_resolve(key, with_experiments)
    assert chat.assignment is not None, "the bench request must be enrolled"
    for _ in range(2000):  # warm-up
        time_resolve(key, plain)
        time_resolve(key, with_experiments)
    without, with_ = [], []
    for _ in range(args.calls):
        without.append(time_resolve(key, plain)[0])
        with_.append(time_resolve(key, with_experiments)[0])
    without.sort()
    with_.sort()
    pure = []
    for index in range(args.calls):
        started = time.perf_counter_ns()
        assign(live, f"user:{index}")
        pure.append(time.perf_counter_ns() - started)
    pure.sort()

    def ms(ns):
        return ns / 1e6

    added = ms(percentile(with_, 50) - percentile(without, 50))
    print(f"experiment assignment bench — {platform.python_implementation()} {platform.python_version()}, "
          f"{args.calls:,} calls per snapshot, {args.experiments + 1} running experiments")  # fmt: skip
    print(f"resolve_model without experiments : p50 {ms(percentile(without, 50)):.4f} ms, "
          f"p99 {ms(percentile(without, 99)):.4f} ms")  # fmt: skip
    print(f"resolve_model, enrolled           : p50 {ms(percentile(with_, 50)):.4f} ms, "
          f"p99 {ms(percentile(with_, 99)):.4f} ms")  # fmt: skip
    print(f"assign() alone                    : p50 {ms(percentile(pure, 50)):.4f} ms, "
          f"p99 {ms(percentile(pure, 99)):.4f} ms")  # fmt: skip
    verdict = "PASS" if added <= TARGET_MS else "FAIL"
    print(f"assignment adds, p50              : {added:.4f} ms (target <= {TARGET_MS} ms) {verdict}")
    return 0 if added <= TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
