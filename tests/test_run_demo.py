"""`make run` (`manage.py run_demo`): a second run, or a run whose ports are taken, stops with a clear message and a
non-zero exit before it changes anything — the running demo's admin password above all; and `.env.example` copied
to `.env` is a working demo configuration (SQLite, plain http).

The first tests run the command against the test database; the last runs `make run` itself in a copy of the
checkout, as a person would.
"""

import http.cookiejar
import os
import re
import shutil
import signal
import socket
import subprocess
import urllib.parse
import urllib.request

import openai
import pytest
from django.contrib.auth import get_user_model

from routing.models import ApiKey, Model
from tests.fakes import HOST, REPO_ROOT
from tests.gateway import free_port, wait_until
from tests.test_security_settings import manage

PASSWORD = "the-running-demos-password"
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin():
    """Return the admin user of a demo that is running, as far as the database can tell."""
    return get_user_model().objects.create_superuser(username="admin", email="", password=PASSWORD)


@pytest.fixture
def taken_port():
    """Return a port on 127.0.0.1 that something else is listening on."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        sock.listen()
        yield sock.getsockname()[1]


def run_demo(database_url, port, fake_port, **settings):
    """Run `manage.py run_demo` on the test database; return (exit code, what it printed)."""
    ports = ["--port", str(port), "--fake-port", str(fake_port)]
    return manage("run_demo", "--host", HOST, *ports, env={**os.environ, "DATABASE_URL": database_url, **settings})


def assert_nothing_changed(admin):
    """Assert the admin password still works and no demo configuration or key was made."""
    admin.refresh_from_db()
    assert admin.check_password(PASSWORD)
    assert not ApiKey.objects.exists()
    assert not Model.objects.exists()


@pytest.mark.parametrize("which", ["PORT", "FAKE_PORT"])
def test_a_taken_port_stops_it_before_anything_changes(database_url, admin, taken_port, which):
    ports = {"PORT": free_port(), "FAKE_PORT": free_port(), which: taken_port}

    code, output = run_demo(database_url, ports["PORT"], ports["FAKE_PORT"])

    assert code == 1, output
    assert f"Cannot listen on {which}={taken_port} on 127.0.0.1" in output
    assert "Nothing was changed" in output and "make run PORT=8010 FAKE_PORT=8011" in output
    assert_nothing_changed(admin)


def test_https_only_settings_stop_it_with_the_lines_to_add(database_url, admin):
    code, output = run_demo(database_url, free_port(), free_port(), SECURE_SSL_REDIRECT="true")

    assert code == 1, output
    assert "SECURE_SSL_REDIRECT is on" in output
    assert "Add these lines to .env" in output and "SESSION_COOKIE_SECURE=false" in output
    assert_nothing_changed(admin)


# --- make run, as a person runs it --------------------------------------------------------------------------------

COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", ".env", "db.sqlite3", "__pycache__", "staticfiles", ".pytest_cache", ".ruff_cache"
)
VENV = REPO_ROOT / ".venv"


def make_run(checkout, port, fake_port, output, **popen):
    """Start `make run` in checkout, printing to the file output, with nothing but .env for settings (and the
    shared .venv, never reinstalled)."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "PYTHONUNBUFFERED": "1"}
    command = ["make", "-o", f"{VENV}/.installed", "run", f"VENV={VENV}", f"PORT={port}", f"FAKE_PORT={fake_port}"]
    return subprocess.Popen(command, cwd=checkout, env=env, stdout=output, stderr=subprocess.STDOUT, **popen)


def sign_in(base, password):
    """Sign in to the admin over plain http as a browser does; return the page it lands on."""
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    with opener.open(f"{base}/admin/login/?next=/admin/", timeout=30) as page:
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.read().decode()).group(1)
    form = {"csrfmiddlewaretoken": token, "username": "admin", "password": password, "next": "/admin/"}
    with opener.open(f"{base}/admin/login/", data=urllib.parse.urlencode(form).encode(), timeout=30) as page:
        return page.url


def test_make_run_from_env_example_serves_plain_http_and_a_second_run_changes_nothing(tmp_path):
    checkout = tmp_path / "chatvault"
    shutil.copytree(REPO_ROOT, checkout, ignore=COPY_IGNORE)
    shutil.copy(checkout / ".env.example", checkout / ".env")  # as the README says one may
    port, fake_port = free_port(), free_port()
    base = f"http://{HOST}:{port}"
    printed = tmp_path / "first.out"
    with printed.open("w") as output:
        first = make_run(checkout, port, fake_port, output, start_new_session=True)
    try:

        def password_printed():
            text = printed.read_text()
            assert first.poll() is None, "make run ended:\n" + text
            found = re.search(r"user: admin\s+password: (\S+)", text)
            return found and found.group(1)

        password = wait_until(password_printed, timeout=120, interval=0.5, message="make run's welcome")
        wait_until(lambda: _status(f"{base}/healthz") == 200, timeout=60, message="the demo's /healthz")

        assert sign_in(base, password) == f"{base}/admin/"
        raw_key = re.search(r"API key:\s+(\S+)", printed.read_text()).group(1)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=raw_key, max_retries=0)
        assert client.chat.completions.create(model="vault-gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
        vectors = client.embeddings.create(model="vault-embed-small", input=["first text", "second text"])
        assert [len(item.embedding) for item in vectors.data] == [16, 16], "the demo's embedding model answers"
        env_file = (checkout / ".env").read_text()
        assert re.search(r"(?m)^SECRET_KEY=\S{50,}$", env_file)
        assert re.search(r"(?m)^CHATVAULT_ENCRYPTION_KEYS=\S+$", env_file)

        second = make_run(checkout, free_port(), free_port(), subprocess.PIPE, text=True, start_new_session=True)
        try:
            output, _ = second.communicate(timeout=60)
        finally:
            stop(second)  # should it have started a demo after all

        assert second.returncode != 0, output
        demo_pid = _pid_of(f"run_demo --host {HOST} --port {port} ")
        assert f"A ChatVault demo is already running on this database (pid {demo_pid}, {base})" in output
        assert "Nothing was changed" in output
        assert sign_in(base, password) == f"{base}/admin/"
        assert (checkout / ".env").read_text() == env_file  # its secrets were kept
    finally:
        stop(first)


def stop(process):
    """Stop a `make run` started in a session of its own as Ctrl-C does (SIGINT to its group), then for sure."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _status(url):
    """Return the HTTP status of a GET, or None when nothing answers."""
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5) as response:
            return response.status
    except OSError:
        return None


def _pid_of(command_line):
    """Return the pid of the one process whose command line holds command_line."""
    (pid,) = subprocess.run(["pgrep", "-f", command_line], capture_output=True, text=True).stdout.split()
    return int(pid)
