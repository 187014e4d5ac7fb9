"""The HTTPS settings of `chatvault_site/settings.py`: what `manage.py check --deploy` asks for, on by default without
DEBUG, each set through the environment under Django's own name; and what they do to a real gateway behind a proxy.

`check --deploy` runs in a subprocess with the README's production settings (read from the README itself, so the two
cannot drift apart). The gateway tests run uvicorn the way production does: only the admin and the docs are sent to
https, never the API or /healthz; a proxy's X-Forwarded-Proto counts from a trusted address only.
"""

import http.client
import json
import os
import re
import secrets
import subprocess
import sys

import pytest
from cryptography.fernet import Fernet

from tests.factories import make_key
from tests.fakes import REPO_ROOT
from tests.gateway import Gateway, wait_until

# The HTTPS settings and the warning `check --deploy` gives when each is off.
HTTPS_WARNINGS = {
    "SECURE_SSL_REDIRECT": ("false", "security.W008"),
    "SESSION_COOKIE_SECURE": ("false", "security.W012"),
    "CSRF_COOKIE_SECURE": ("false", "security.W016"),
    "SECURE_HSTS_SECONDS": ("0", "security.W004"),
}
# Warned about only while HSTS is on.
HSTS_WARNINGS = {
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": ("false", "security.W005"),
    "SECURE_HSTS_PRELOAD": ("false", "security.W021"),
}
# What the README's placeholders (`<...>`) stand for.
PLACEHOLDERS = {
    "SECRET_KEY": lambda: secrets.token_urlsafe(50),
    "CHATVAULT_ENCRYPTION_KEYS": lambda: Fernet.generate_key().decode(),
}


def readme_production_settings():
    """Return {name: value} of the README's "Production settings" block, its placeholders filled in."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("\n## Production settings\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    found = {}
    for line in block.splitlines():
        if not line or line.startswith("#"):
            continue
        name, value = line.split("=", 1)
        if name in PLACEHOLDERS:
            value = PLACEHOLDERS[name]()
        found[name] = re.sub(r"<[^>]*>", "x", value)
    return found


def manage(*args, env):
    """Run `manage.py ARGS` in a process of its own with env as its whole environment; return (exit code, output)."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    return done.returncode, done.stdout + done.stderr


def check_deploy(settings):
    """Return (exit code, output) of `manage.py check --deploy --fail-level WARNING` with only these settings."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **settings}
    return manage("check", "--deploy", "--fail-level", "WARNING", env=env)


def test_the_readme_production_settings_pass_the_deploy_check():
    settings = readme_production_settings()
    assert settings["DEBUG"] == "false"
    assert set(HTTPS_WARNINGS) | set(HSTS_WARNINGS) <= set(settings)

    code, output = check_deploy(settings)

    assert code == 0, output
    assert "System check identified no issues" in output


def test_the_https_settings_are_on_by_default_without_debug():
    https = set(HTTPS_WARNINGS) | set(HSTS_WARNINGS)
    settings = {name: value for name, value in readme_production_settings().items() if name not in https}

    code, output = check_deploy(settings)

    assert code == 0, output


@pytest.mark.parametrize("warnings", [HTTPS_WARNINGS, HSTS_WARNINGS], ids=["https", "hsts-directives"])
def test_each_https_setting_is_read_from_the_environment_under_its_own_name(warnings):
    settings = readme_production_settings() | {name: off for name, (off, _) in warnings.items()}

    code, output = check_deploy(settings)

    assert code != 0
    assert sorted(re.findall(r"\(security\.W\d+\)", output)) == sorted(f"({w})" for _, w in warnings.values())


def test_a_proxy_ssl_header_that_is_not_a_pair_is_refused():
    settings = readme_production_settings() | {"SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO"}

    code, output = check_deploy(settings)

    assert code != 0
    assert "SECURE_PROXY_SSL_HEADER must be a header and a value" in output


# --- a real gateway with the production defaults --------------------------------------------------------------------

PRODUCTION_HTTPS = {"SECURE_SSL_REDIRECT": "true", "SESSION_COOKIE_SECURE": "true", "CSRF_COOKIE_SECURE": "true"}
# An address no request here comes from (TEST-NET-1): a gateway trusting only it ignores X-Forwarded-Proto from us.
ELSEWHERE = "192.0.2.1"
FROM_THE_PROXY = {"X-Forwarded-Proto": "https"}


@pytest.fixture(scope="module")
def _https_gateway(database_url):
    with Gateway.start(database_url, **PRODUCTION_HTTPS) as gw:
        yield gw


@pytest.fixture
def https_gateway(_https_gateway):
    """Return a gateway with the production HTTPS settings, trusting X-Forwarded-Proto from 127.0.0.1 (uvicorn's
    default: a proxy on the same machine); after the test, wait until it has written the test's log rows."""
    yield _https_gateway
    _https_gateway.wait_log_drained()


def get(gateway, path, headers=None):
    """Return (status, headers, body) of a GET, a redirect not followed."""
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def location(gateway, path, headers=None):
    """Return (status, Location header) of a GET, a redirect not followed."""
    status, headers, _ = get(gateway, path, headers)
    return status, headers.get("Location")


@pytest.mark.django_db(transaction=True)
def test_the_admin_and_docs_are_redirected_to_https(https_gateway):
    base = https_gateway.root_url.replace("http://", "https://")

    assert location(https_gateway, "/admin/login/?next=/admin/") == (301, f"{base}/admin/login/?next=/admin/")
    assert location(https_gateway, "/docs/") == (301, f"{base}/docs/")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "path",
    ["/healthz", "/v1/models", "/models", "/v1/admin/load-balancer/stats", "/v1/openapi.json", "/v1/nope", "/metrics",
     "/administrator"],
)  # fmt: skip
def test_the_api_and_health_checks_answer_plain_http(https_gateway, path):
    key = make_key("ops", is_admin=True)
    auth = {"Authorization": f"Bearer {key}"}
    wait_until(lambda: get(https_gateway, "/v1/models", auth)[0] == 200, message="the key in the gateway's snapshot")

    status, _, body = get(https_gateway, path, headers=auth)

    assert status != 301, body
    if path.startswith("/v1/") and path != "/v1/nope":
        assert status == 200, body
        json.loads(body)


@pytest.mark.django_db(transaction=True)
def test_behind_a_trusted_proxy_the_admin_is_served_with_hsts_and_secure_cookies(https_gateway):
    status, headers, body = get(https_gateway, "/admin/login/", headers=FROM_THE_PROXY)

    assert status == 200, body
    assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    csrf_cookie = next(c for c in headers.get_all("Set-Cookie") if c.startswith("csrftoken="))
    assert "; Secure" in csrf_cookie


@pytest.mark.django_db(transaction=True)
def test_a_forwarded_proto_from_an_untrusted_address_is_ignored(database_url):
    with Gateway.start(database_url, forwarded_allow_ips=ELSEWHERE, **PRODUCTION_HTTPS) as gateway:
        status, _ = location(gateway, "/admin/login/", headers=FROM_THE_PROXY)

    assert status == 301


@pytest.mark.django_db(transaction=True)
def test_secure_proxy_ssl_header_makes_django_trust_the_header_itself(database_url):
    header = {"secure_proxy_ssl_header": "HTTP_X_FORWARDED_PROTO,https"}
    with Gateway.start(database_url, forwarded_allow_ips=ELSEWHERE, **header, **PRODUCTION_HTTPS) as gateway:
        status, headers, body = get(gateway, "/admin/login/", headers=FROM_THE_PROXY)

    assert status == 200, body
    assert "Strict-Transport-Security" in headers
