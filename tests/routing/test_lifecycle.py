"""Worker lifecycle: configuration refresh without restart, and no lost request-log rows on SIGTERM."""

import os
import subprocess
import sys
import time
import uuid

import openai
import pytest

from routing.models import Model, Outcome, RequestLog
from tests.factories import make_key, make_model, wait_for_model
from tests.fakes import REPO_ROOT
from tests.gateway import Gateway, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "hi"}]


def test_sigterm_writes_every_queued_row_before_exit(database_url, fake):
    make_model("vault-flush", [fake])
    raw = make_key()
    # Rows would sit in memory for a minute: only the shutdown flush can write them in time.
    with Gateway.start(database_url, chatvault_log_flush_seconds=60, chatvault_log_batch_size=100000) as gw:
        wait_for_model(gw, raw, "vault-flush")
        client = openai.OpenAI(base_url=gw.url, api_key=raw, max_retries=0)
        for i in range(25):
            if i % 2:
                list(client.chat.completions.create(model="vault-flush", messages=MESSAGES, stream=True))
            else:
                client.chat.completions.create(model="vault-flush", messages=MESSAGES)
        assert RequestLog.objects.filter(endpoint="chat.completions").count() == 0
        # uvicorn re-raises SIGTERM after its graceful shutdown, so the exit status is the signal's.
        assert gw.terminate() in (0, -15)
        assert "ChatVault worker stopped" in gw.log()
    assert RequestLog.objects.filter(endpoint="chat.completions", outcome=Outcome.OK).count() == 25


def test_admin_changes_reach_a_worker_within_two_seconds_at_default_polling(database_url, fake):
    make_model("vault-live", [fake])
    raw = make_key()
    with Gateway.start(database_url, chatvault_config_poll_seconds=1.0) as gw:
        wait_for_model(gw, raw, "vault-live")
        model = Model.objects.get(name="vault-live")
        model.enabled = False
        changed = time.monotonic()
        model.save()  # what admin does: save() bumps the configuration revision
        wait_for_model(gw, raw, "vault-live", present=False, timeout=2)
        assert time.monotonic() - changed < 2
        model.enabled = True
        model.save()
        wait_for_model(gw, raw, "vault-live", timeout=2)


def test_healthz_is_ready_only_once_the_snapshot_is_loaded(database_url):
    with Gateway.start(database_url) as gw:
        status, _, body = gw.request("GET", "/healthz")
        assert status == 200 and b'"status": "ok"' in body


def test_a_gateway_whose_database_is_unreachable_reports_not_ready():
    url = "postgres://postgres@127.0.0.1:1/nowhere"
    with pytest.raises(AssertionError, match="did not start|exited"):
        with Gateway.start(url):
            pass


def test_a_database_outage_keeps_serving_the_last_snapshot(database_url, fake):
    """Refresh failures are logged and the worker keeps answering from the snapshot it has."""
    make_model("vault-keep", [fake])
    raw = make_key()
    with Gateway.start(database_url) as gw:
        wait_for_model(gw, raw, "vault-keep")
        # Point the refresher at a missing table by renaming it briefly: every poll fails meanwhile.
        from django.db import connection

        with connection.cursor() as cur:
            cur.execute("ALTER TABLE routing_configrevision RENAME TO routing_configrevision_away")
        try:
            time.sleep(0.5)
            client = openai.OpenAI(base_url=gw.url, api_key=raw, max_retries=0)
            assert client.chat.completions.create(model="vault-keep", messages=MESSAGES).choices
        finally:
            with connection.cursor() as cur:
                cur.execute("ALTER TABLE routing_configrevision_away RENAME TO routing_configrevision")
        wait_until(lambda: "refresh failed" in gw.log(), message="refresh failure logged")


def _litellm_imported_after_reload(database_url):
    """Return whether loading the routing snapshot in a fresh gateway process imported litellm."""
    code = (
        "import sys, django; django.setup(); from routing import snapshot; snapshot.reload(); "
        "print('litellm' in sys.modules)"
    )
    env = dict(os.environ, DATABASE_URL=database_url, DJANGO_SETTINGS_MODULE="chatvault_site.settings")
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1] == "True"


def test_litellm_is_imported_only_when_an_instance_needs_it(database_url, fake):
    make_model("vault-fast", [fake], adapter="passthrough")
    assert not _litellm_imported_after_reload(database_url), "pass-through only: litellm stays out"
    make_model("vault-other-provider", [fake], adapter="litellm")
    assert _litellm_imported_after_reload(database_url)


def test_an_unmigrated_database_is_refused_with_the_fix_in_the_message(database_url):
    from django.db import connection

    name = f"chatvault_test_empty_{uuid.uuid4().hex}"  # unique: test runs side by side must not share it
    with connection.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        empty = database_url.rsplit("/", 1)[0] + f"/{name}"
        with pytest.raises(AssertionError, match="run `python manage.py migrate` first"):
            Gateway.start(empty)
    finally:
        with connection.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
