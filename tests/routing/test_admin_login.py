"""Tests for the admin sign-in lockout (django-axes, configured in settings): failures lock a username and, on their
own, an address; during the lockout even the right password is refused; the lock ends after the cool-off."""

import os
import subprocess
import sys
from datetime import timedelta

import httpx
import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.db.models import F
from django.test import Client

from tests.fakes import REPO_ROOT

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/"
PASSWORD = "right-horse-battery-staple-7"
ADDRESS = "203.0.113.7"
OTHER_ADDRESS = "198.51.100.9"
LOCKED = "Account locked: too many failed sign-in attempts."


@pytest.fixture
def staff(django_user_model):
    """Return a staff user who may sign in to the admin."""
    return django_user_model.objects.create_user(username="ops", password=PASSWORD, is_staff=True)


def sign_in(username, password, address=ADDRESS):
    """Post the admin login form from an address with a fresh client; return the response."""
    return Client().post(LOGIN, {"username": username, "password": password, "next": "/admin/"}, REMOTE_ADDR=address)


def signed_in(response):
    """Return whether the response is the admin's redirect after a successful sign-in."""
    return response.status_code == 302 and response["Location"] == "/admin/"


def locked(response):
    """Return whether the response is the lockout page."""
    return response.status_code == 429 and LOCKED in response.content.decode()


def fail(username, times, address=ADDRESS):
    """Sign in with a wrong password `times` times; return the last response."""
    for _ in range(times):
        response = sign_in(username, "wrong-password", address)
    return response


def age_failures(by):
    """Move every recorded failure back in time, as if that long had passed."""
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - by)


@pytest.mark.parametrize(("limit", "accepted"), [("10", True), ("11", False), ("0", False)])
def test_settings_accept_a_failure_limit_of_at_most_ten(limit, accepted):
    env = {**os.environ, "CHATVAULT_LOGIN_FAILURE_LIMIT": limit}
    command = [sys.executable, "-c", "import chatvault_site.settings"]
    result = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert (result.returncode == 0) is accepted
    assert ("CHATVAULT_LOGIN_FAILURE_LIMIT must be between 1 and 10" in result.stderr) is not accepted


def test_a_failure_short_of_the_limit_does_not_lock(staff):
    response = fail("ops", settings.CHATVAULT_LOGIN_FAILURE_LIMIT - 1)
    assert response.status_code == 200 and not locked(response)  # the login form again, with its error
    assert signed_in(sign_in("ops", PASSWORD))


def test_failures_for_a_username_lock_it_out_even_with_the_right_password(staff):
    assert locked(fail("ops", settings.CHATVAULT_LOGIN_FAILURE_LIMIT))
    refused = sign_in("ops", PASSWORD)
    assert locked(refused)
    assert "_auth_user_id" not in refused.wsgi_request.session
    assert locked(sign_in("ops", PASSWORD, OTHER_ADDRESS))  # the username is locked wherever it comes from


def test_failures_from_one_address_lock_that_address_whatever_the_username(staff):
    for i in range(settings.CHATVAULT_LOGIN_FAILURE_LIMIT):
        last = fail(f"guess-{i}", 1)
    assert locked(last)
    assert locked(sign_in("ops", PASSWORD))
    assert signed_in(sign_in("ops", PASSWORD, OTHER_ADDRESS))  # the username itself is not locked


def test_the_lock_ends_after_the_cool_off(staff):
    fail("ops", settings.CHATVAULT_LOGIN_FAILURE_LIMIT)
    cool_off = timedelta(minutes=settings.CHATVAULT_LOGIN_LOCKOUT_MINUTES)

    age_failures(cool_off - timedelta(seconds=30))
    assert locked(sign_in("ops", PASSWORD))  # 30 s before the end
    age_failures(timedelta(seconds=31))
    assert signed_in(sign_in("ops", PASSWORD))


@pytest.mark.django_db(transaction=True)
def test_the_live_gateway_locks_out_and_counts_failures_in_the_database(gateway, staff):
    # Django's ASGI handler runs the lockout middleware's async path, and the count lives in the database, which
    # every worker shares: the failures are made in this process (the test client) and the lock holds in the gateway.
    fail("ops", settings.CHATVAULT_LOGIN_FAILURE_LIMIT - 1, address="127.0.0.1")
    with httpx.Client(base_url=gateway.root_url, trust_env=False, timeout=10) as client:
        client.get(LOGIN)
        data = {"username": "ops", "csrfmiddlewaretoken": client.cookies["csrftoken"], "next": "/admin/"}
        headers = {"Referer": f"{gateway.root_url}{LOGIN}"}
        last_failure = client.post(LOGIN, data={**data, "password": "wrong-password"}, headers=headers)
        refused = client.post(LOGIN, data={**data, "password": PASSWORD}, headers=headers)
    assert last_failure.status_code == 429 and LOCKED in last_failure.text
    assert refused.status_code == 429 and LOCKED in refused.text
    assert "sessionid" not in refused.cookies
