#!/usr/bin/env python
"""Screenshots of the admin for the README (docs/screenshots/*.png), made from a throwaway demo so they stay current.

Run it by hand after changing an admin page (it is not part of `make test` or `make bench`; about a minute)::

    .venv/bin/python bench/screenshots.py [--out docs/screenshots]

It needs selenium (requirements-dev.txt) and Debian's chromium and chromium-driver (`.ci/run` installs them), and
nothing else: no Postgres, no Redis. Everything runs on 127.0.0.1 in a temporary directory that is removed at the end:

1. A SQLite database, migrated; the demo configuration (config/demo.yaml) on a fake provider, plus three instances
   that are not serving — one pointing at a closed port (its breaker opens), one drained, one whose provider has no
   API key — an admin user and three API keys.
2. 24 hours of made-up history (RequestLog rows, seeded random numbers: a slow hour, an error burst) so the charts
   and sparklines have a shape, then a gateway (uvicorn) serving real traffic through the openai SDK: named models,
   `auto`, streams, and the requests that fail over from the broken instance until its breaker opens.
3. A rollup run and a probe round (`probe_instances --all`), as beat would do them.
4. Chromium signs in and photographs, 1,366 px wide: the dashboard, the instance list, the request log and the
   decision of a request that failed over.

Every process it starts is stopped at the end (by PID, through tests/fakes.py and tests/gateway.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import socket
import sys
import tempfile
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # `python bench/screenshots.py` puts bench/ on the path, not the repository

WIDTH = 1366
# (file, page, the tallest picture): the request log's first rows tell what it looks like.
PAGES = (
    ("dashboard.png", "/admin/", 2600),
    ("instances.png", "/admin/routing/providerinstance/", 1200),
    ("request-log.png", "/admin/routing/requestlog/", 1100),
)
KEYS = ("web-app", "batch-jobs", "support-bot")
HISTORY_STEP = timedelta(minutes=4)


def configure_environment(workdir):
    """Point Django at a fresh SQLite database with throwaway secrets, plain http, and no Redis or broker."""
    from cryptography.fernet import Fernet

    os.environ.update(
        DJANGO_SETTINGS_MODULE="chatvault_site.settings",
        DATABASE_URL=f"sqlite:///{workdir / 'screenshots.sqlite3'}",
        DEBUG="false",
        SECRET_KEY=uuid.uuid4().hex * 2,
        CHATVAULT_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
        SECURE_SSL_REDIRECT="false",
        SESSION_COOKIE_SECURE="false",
        CSRF_COOKIE_SECURE="false",
        REDIS_URL="",
        CELERY_BROKER_URL="",
        CHATVAULT_CONFIG_POLL_SECONDS="0.2",
    )


def closed_port():
    """Return a port nothing listens on (the broken instance's upstream)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def configure(fake_url):
    """Import the demo configuration on the fake, add the instances that do not serve; return {key name: raw key}."""
    from routing.auth import api_key_create
    from routing.config_io import load_config_file, routing_config_import
    from routing.management.commands.run_demo import DEMO_CONFIG
    from routing.models import Provider, ProviderInstance, RoutingSettings

    data = load_config_file(DEMO_CONFIG)
    for entry in data["model_list"]:
        entry["litellm_params"]["api_base"] = fake_url
    routing_config_import(data=data)
    settings = RoutingSettings.load()
    settings.breaker_cooldown_seconds = 600  # the broken instance stays open while the pictures are taken
    settings.save()
    demo = ProviderInstance.objects.get(pk="demo-mini-a")
    broken = ProviderInstance(
        id="demo-mini-eu", model=demo.model, provider=demo.provider, litellm_model="openai/gpt-4o-mini",
        api_base=f"http://127.0.0.1:{closed_port()}/v1",
    )  # fmt: skip
    broken.set_api_key("fake-key-eu")
    broken.save()
    large = ProviderInstance.objects.get(pk="demo-4o")
    drained = ProviderInstance(
        id="demo-4o-backup", model=large.model, provider=large.provider, litellm_model="openai/gpt-4o",
        api_base=fake_url, drained=True,
    )  # fmt: skip
    drained.set_api_key("fake-key-backup")
    drained.save()
    keyless_provider = Provider.objects.create(name="groq", kind="groq", openai_compatible=True)
    ProviderInstance.objects.create(
        id="demo-4o-groq", model=large.model, provider=keyless_provider, litellm_model="groq/llama-3.3-70b",
        api_base=fake_url,
    )  # fmt: skip
    return {name: api_key_create(name=name)[1] for name in KEYS}


def seed_history(now):
    """Write 24 hours of made-up RequestLog rows for the serving instances (the charts' and sparklines' shape)."""
    from routing.models import ApiKey, Outcome, RequestLog

    rng = random.Random(11)
    keys = list(ApiKey.objects.order_by("name"))
    serving = (("vault-gpt-4o-mini", "demo-mini-a"), ("vault-gpt-4o-mini", "demo-mini-b"), ("vault-gpt-4o", "demo-4o"))
    rows = []
    moment = now - timedelta(hours=24)
    while moment < now - timedelta(minutes=30):
        hour = (now - moment) // timedelta(hours=1)
        busy = 1 + (2 if 8 <= (moment.hour + 1) % 24 <= 18 else 0)  # more traffic in the working day
        for model, instance in serving:
            for _ in range(rng.randint(0, busy)):
                failing = instance == "demo-mini-b" and hour == 6 and rng.random() < 0.6  # an error burst
                slow = instance == "demo-4o" and hour == 15  # a slow hour
                latency = rng.lognormvariate(6.2 if slow else 5.4, 0.45)
                stream = rng.random() < 0.4
                tokens = (rng.randint(40, 900), rng.randint(20, 600))
                rows.append(
                    RequestLog(
                        request_id=uuid.uuid4(),
                        created_at=moment + timedelta(seconds=rng.uniform(0, HISTORY_STEP.total_seconds())),
                        api_key=rng.choices(keys, weights=(1, 4, 2))[0],
                        requested_model=model,
                        served_model=model,
                        instance_id=instance,
                        stream=stream,
                        outcome=Outcome.UPSTREAM_ERROR if failing else Outcome.OK,
                        status_code=502 if failing else 200,
                        prompt_tokens=None if failing else tokens[0],
                        completion_tokens=None if failing else tokens[1],
                        cost_usd=None if failing else Decimal(sum(tokens)) * Decimal("0.0000025"),
                        latency_ms=latency,
                        ttft_ms=latency * rng.uniform(0.1, 0.3) if stream and not failing else None,
                        attempts=1,
                        decision=history_decision(model, instance, failing, latency),
                    )
                )
        moment += HISTORY_STEP
    RequestLog.objects.bulk_create(rows, batch_size=500)
    return len(rows)


def history_decision(model, instance, failing, latency):
    """Return the decision a made-up request of the history records: a named model, one attempt."""
    attempt = {"instance": instance, "outcome": "status" if failing else "ok", "ms": round(latency, 2)}
    attempt["status"] = 502 if failing else 200
    return {
        "model": {"requested": model, "served": model, "reason": "requested by the client"},
        "strategy": "round-robin",
        "candidates": [instance],
        "instance": instance,
        "attempts": [attempt],
    }


def send_traffic(gateway, raw_keys):
    """Send chat requests through the gateway with the openai SDK: named models, auto, streams; return how many."""
    import openai

    messages = {
        "vault-gpt-4o-mini": "Summarise the release notes in two sentences.",
        "vault-gpt-4o": "Write a Python function that merges two sorted lists.",
        "auto": "What is the capital of Australia?",
    }
    sent = 0
    for round_number in range(8):
        for name, raw in raw_keys.items():
            client = openai.OpenAI(base_url=gateway.url, api_key=raw, max_retries=0)
            for model, prompt in messages.items():
                body = {"model": model, "messages": [{"role": "user", "content": prompt}], "user": f"{name}-user"}
                if model == "auto" and round_number % 3 == 1:  # a model that does not exist: logged too
                    try:
                        client.chat.completions.create(**{**body, "model": "vault-gpt-5"})
                    except openai.NotFoundError:
                        pass
                elif (round_number + sent) % 3 == 0:
                    for _ in client.chat.completions.create(stream=True, **body):
                        pass
                else:
                    client.chat.completions.create(**body)
                sent += 1
    return sent


def photograph(browser, root_url, out):
    """Take each page's picture, and the decision of a request that failed over; return the files written."""
    from selenium.webdriver.common.by import By

    from routing.models import RequestLog

    failed_over = RequestLog.objects.filter(attempts__gte=2).order_by("-created_at").first()
    pages = [*PAGES]
    if failed_over is not None:
        pages.append(("request-decision.png", f"/admin/routing/requestlog/{failed_over.pk}/change/", 1100))
    written = []
    browser.get(root_url + PAGES[1][1])
    browser.find_element(By.ID, "toggle-nav-sidebar").click()  # the lists get the page's width (kept by the browser)
    for name, path, tallest in pages:
        browser.set_window_size(WIDTH, 900)
        browser.get(root_url + path)
        browser.find_element(By.ID, "content")
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(WIDTH, min(height + 40, tallest))
        browser.save_screenshot(str(out / name))
        written.append(out / name)
    return written


def main(argv=None):
    """Build the demo, take the pictures, stop everything."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "screenshots", help="Where the PNGs go.")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="chatvault-screenshots-") as tmp:
        configure_environment(Path(tmp))
        import django

        django.setup()
        logging.getLogger().setLevel(logging.WARNING)  # this script says what it does; the HTTP clients need not
        from django.contrib.auth import get_user_model
        from django.core.management import call_command
        from django.utils import timezone

        from routing.rollups import rollup_request_logs
        from tests import browser as chromium
        from tests.fakes import FakeProvider
        from tests.gateway import Gateway, wait_until

        if reason := chromium.missing():
            sys.exit(f"Cannot take screenshots: {reason}.")
        call_command("migrate", verbosity=0)
        password = uuid.uuid4().hex
        get_user_model().objects.create_superuser(username="admin", email="admin@example.com", password=password)
        with FakeProvider.start(chunks=12, latency_ms=40, chunk_delay_ms=15) as fake:
            raw_keys = configure(fake.url)
            print(f"seeded {seed_history(timezone.now())} history rows")
            with Gateway.start(os.environ["DATABASE_URL"]) as gateway:
                print(f"sent {send_traffic(gateway, raw_keys)} requests through the gateway")
                wait_until(lambda: gateway.health()["request_log"]["pending"] == 0, message="request log written")
                run = rollup_request_logs()
                print(f"rolled up {run.requests} requests")
                call_command("probe_instances", "--all")
                browser = chromium.start_chromium(width=WIDTH, height=900)
                try:
                    chromium.sign_in(browser, gateway.root_url, "admin", password)
                    for path in photograph(browser, gateway.root_url, args.out):
                        print(f"wrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}")
                finally:
                    browser.quit()


if __name__ == "__main__":
    main()
