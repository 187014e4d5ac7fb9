"""Test helpers that run the fake OpenAI-compatible provider as a real subprocess.

Usage::

    with FakeProvider.start(chunks=5, chunk_delay_ms=10) as fake:
        client = openai.OpenAI(base_url=fake.url, api_key="x")
        ...
        assert fake.requests()[-1]["headers"]["authorization"] == "Bearer x"

Keyword options of ``start`` map to the CLI flags of ``routing.fake_provider``
(``chunk_delay_ms=10`` -> ``--chunk-delay-ms 10``); the port defaults to 0, so
each fake gets a free port.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
_LISTENING = re.compile(r"fake provider listening on http://(?P<host>[^\s:]+):(?P<port>\d+)")
# Only ever talk to the local fake, even when proxy variables are set.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def terminate(process: subprocess.Popen, timeout: float = 5) -> None:
    """Stop ``process`` with SIGTERM, killing it if it does not exit within ``timeout`` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _cli_args(options: dict[str, Any]) -> list[str]:
    """Turn keyword options into command-line flags."""
    args = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            args.append(flag)
        elif isinstance(value, (list, tuple)):
            for item in value:
                args += [flag, str(item)]
        else:
            args += [flag, str(value)]
    return args


class FakeProvider:
    """A running fake provider subprocess and a small client for its control API."""

    STARTUP_TIMEOUT = 15.0

    def __init__(self, process: subprocess.Popen, port: int, stderr_file):
        """Wrap an already listening fake provider process."""
        self.process = process
        self.port = port
        self.root_url = f"http://{HOST}:{port}"
        self.url = f"{self.root_url}/v1"
        self._stderr_file = stderr_file
        self._finalizer = weakref.finalize(self, terminate, process)
        weakref.finalize(self, stderr_file.close)

    @classmethod
    def start(cls, **cli_options: Any) -> FakeProvider:
        """Start ``python -m routing.fake_provider`` and wait until it listens."""
        cli_options.setdefault("port", 0)
        cli_options.setdefault("host", HOST)
        command = [sys.executable, "-m", "routing.fake_provider", *_cli_args(cli_options)]
        # stderr goes to a file: an unread pipe could fill up and block the server.
        stderr_file = tempfile.TemporaryFile()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            text=True,
        )
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=cls._drain, args=(process.stdout, lines), daemon=True).start()
        try:
            port = cls._wait_listening(process, lines)
        except BaseException as exc:
            terminate(process)
            stderr_file.seek(0)
            detail = stderr_file.read().decode(errors="replace")
            stderr_file.close()
            if not isinstance(exc, Exception):
                raise
            raise RuntimeError(f"fake provider did not start ({exc!r}): {' '.join(command)}\n{detail}") from None
        return cls(process, port, stderr_file)

    @staticmethod
    def _drain(stream, lines: queue.Queue) -> None:
        """Forward stdout lines to ``lines`` and keep the pipe empty afterwards."""
        with stream:
            for line in stream:
                lines.put(line)
        lines.put(None)

    @classmethod
    def _wait_listening(cls, process: subprocess.Popen, lines: queue.Queue) -> int:
        """Return the port announced on stdout, or raise if the process fails first."""
        while True:
            line = lines.get(timeout=cls.STARTUP_TIMEOUT)
            if line is None:
                raise RuntimeError(f"exited with {process.wait()}")
            match = _LISTENING.search(line)
            if match:
                return int(match["port"])

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """Send a control request to the fake and return the decoded JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.root_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with _OPENER.open(request, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path} -> {exc.code}: {exc.read().decode(errors='replace')}") from None

    def requests(self) -> list[dict]:
        """Return the recorded chat requests ({"headers", "body", "path"}), oldest first."""
        return self.call("GET", "/_fake/requests")["requests"]

    def clear_requests(self) -> None:
        """Forget recorded requests and reset the request/cancellation counters."""
        self.call("DELETE", "/_fake/requests")

    def config(self) -> dict:
        """Return the current runtime knobs."""
        return self.call("GET", "/_fake/config")

    def set_config(self, **knobs: Any) -> dict:
        """Change runtime knobs for all later requests (None resets one) and return them all."""
        return self.call("POST", "/_fake/config", knobs)

    def reset_config(self) -> dict:
        """Reset every runtime knob to its command-line default."""
        return self.set_config(**{name: None for name in self.config()})

    def stats(self) -> dict:
        """Return {"count", "in_flight", "cancelled"}."""
        return self.call("GET", "/_fake/stats")

    def stop(self) -> None:
        """Stop the subprocess: SIGTERM, then SIGKILL if it lingers."""
        self._finalizer()

    def stderr(self) -> str:
        """Return what the subprocess wrote to stderr so far."""
        self._stderr_file.seek(0)
        return self._stderr_file.read().decode(errors="replace")

    def __enter__(self) -> FakeProvider:
        """Return self; the provider is already running."""
        return self

    def __exit__(self, *exc_info) -> None:
        """Stop the provider."""
        self.stop()

    def __repr__(self) -> str:
        """Show the URL the fake serves."""
        return f"<FakeProvider {self.url}>"
