"""Test helpers that run ChatVault itself as a real uvicorn process against the test database.

Usage::

    with Gateway.start(database_url) as gw:
        client = openai.OpenAI(base_url=gw.url, api_key=raw_key)
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref

from tests.fakes import HOST, REPO_ROOT, terminate

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port():
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout=10.0, interval=0.05, message="condition"):
    """Return predicate's first truthy value, polling until timeout; fail the test otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


class Gateway:
    """A running ChatVault uvicorn process."""

    def __init__(self, process, port, log_file):
        """Wrap a started process."""
        self.process = process
        self.port = port
        self.root_url = f"http://{HOST}:{port}"
        self.url = f"{self.root_url}/v1"
        self._log_file = log_file
        self._finalizer = weakref.finalize(self, terminate, process, 15)

    @classmethod
    def start(cls, database_url, *, access_log=False, graceful_timeout=20, **settings):
        """Start `uvicorn chatvault_site.asgi:application` with settings given as environment variables.

        access_log turns uvicorn's access log on; graceful_timeout is its `--timeout-graceful-shutdown` (seconds).
        """
        port = free_port()
        env = dict(os.environ)
        env.update(
            DATABASE_URL=database_url,
            CHATVAULT_CONFIG_POLL_SECONDS="0.1",
            CHATVAULT_LOG_FLUSH_SECONDS="0.05",
            PYTHONUNBUFFERED="1",
        )
        env.update({name.upper(): str(value) for name, value in settings.items()})
        log_file = tempfile.NamedTemporaryFile(prefix="gateway-", suffix=".log", delete=False)
        command = [sys.executable, "-m", "uvicorn", "chatvault_site.asgi:application", "--host", HOST,
                   "--port", str(port), "--timeout-graceful-shutdown", str(graceful_timeout)]  # fmt: skip
        if not access_log:
            command.append("--no-access-log")
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                   stdout=log_file, stderr=subprocess.STDOUT)  # fmt: skip
        gateway = cls(process, port, log_file)
        try:
            wait_until(gateway._healthy, timeout=30, message="gateway /healthz")
        except AssertionError:
            gateway.stop()
            raise AssertionError(f"gateway did not start:\n{gateway.log()}") from None
        return gateway

    def _healthy(self):
        """Return whether /healthz answers 200 (fail fast if the process died)."""
        if self.process.poll() is not None:
            raise AssertionError(f"gateway exited with {self.process.returncode}:\n{self.log()}")
        try:
            with _OPENER.open(f"{self.root_url}/healthz", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def request(self, method, path, body=None, headers=None, timeout=30):
        """Send a raw HTTP request; return (status, headers, body bytes) without raising on errors."""
        req = urllib.request.Request(self.root_url + path, data=body, method=method, headers=headers or {})
        try:
            with _OPENER.open(req, timeout=timeout) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    def health(self):
        """Return the /healthz JSON."""
        return json.loads(self.request("GET", "/healthz")[2])

    def wait_log_drained(self):
        """Wait until every request-log and feedback row this gateway queued is written.

        A fixture that outlives a test calls this after it: a row written while the test database is flushed could
        deadlock the flush, or land in the next test.
        """
        time.sleep(0.1)  # a row is queued just after its response is sent
        wait_until(
            lambda: (health := self.health())["request_log"]["pending"] == 0 and health["feedback"]["pending"] == 0,
            message="request log and feedback drained",
        )

    def log(self):
        """Return what the process printed."""
        with open(self._log_file.name, "rb") as fh:
            return fh.read().decode(errors="replace")

    def terminate(self, timeout=30):
        """Send SIGTERM and wait for a graceful exit; return the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def stop(self):
        """Stop the process."""
        self._finalizer()

    def __enter__(self):
        """Return self; the gateway is already running."""
        return self

    def __exit__(self, *exc_info):
        """Stop the gateway."""
        self.stop()
