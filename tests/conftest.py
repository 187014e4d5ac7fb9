"""Shared fixtures. Tests run against a real Postgres (DATABASE_URL), real fake-provider processes and a real
ChatVault process — no mocks of our own code."""

import os

import pytest
from django.conf import settings

from tests import browser as chromium
from tests.fakes import FakeProvider
from tests.gateway import Gateway

# Tests speak plain http to 127.0.0.1 (the test client, gateway processes, the browser), so the HTTPS redirect and
# secure cookies, on whenever DEBUG is off, are turned off unless the environment says otherwise: in this process,
# whose settings are loaded already, and in every process a test starts.
for name in ("SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE"):
    if name not in os.environ:
        os.environ[name] = "false"
        setattr(settings, name, False)


@pytest.fixture(scope="session")
def database_url(django_db_setup):
    """Return a URL for the test database that other processes can use."""
    db = settings.DATABASES["default"]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture(scope="session")
def _gateway_process(database_url):
    with Gateway.start(database_url) as gw:
        yield gw


@pytest.fixture
def gateway(_gateway_process):
    """Return a ChatVault process serving the test database (one process shared by the session's tests).

    After the test, wait until the gateway has written the test's rows, so they cannot land in the next test.
    """
    yield _gateway_process
    _gateway_process.wait_log_drained()


@pytest.fixture(scope="session")
def _fake_a():
    with FakeProvider.start() as fake:
        yield fake


@pytest.fixture(scope="session")
def _fake_b():
    with FakeProvider.start() as fake:
        yield fake


@pytest.fixture
def fake(_fake_a):
    """Return a running fake provider with default behaviour and no recorded requests."""
    _fake_a.reset_config()
    _fake_a.clear_requests()
    return _fake_a


@pytest.fixture
def fake_b(_fake_b):
    """Return a second running fake provider, reset like `fake`."""
    _fake_b.reset_config()
    _fake_b.clear_requests()
    return _fake_b


@pytest.fixture
def browser():
    """Return a headless chromium driven by selenium (skipped outside CI when chromium is not installed)."""
    if reason := chromium.skip_reason():
        pytest.skip(reason)
    driver = chromium.start_chromium()
    yield driver
    driver.quit()


@pytest.fixture
def redis_url():
    """Return the URL of an emptied Redis database for this test (TEST_REDIS_URL, default db 15 on localhost)."""
    import os

    import redis

    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()
