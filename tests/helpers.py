"""Helpers shared by test modules: a chat to send, and the RequestLog rows the gateway wrote for it."""

import contextlib
import threading
import time
from http.server import ThreadingHTTPServer

from routing.models import RequestLog
from tests.gateway import wait_until

MESSAGES = [{"role": "user", "content": "hello there"}]


def rows(**filters):
    """Return chat RequestLog rows matching filters."""
    return list(RequestLog.objects.filter(endpoint="chat.completions", **filters).order_by("created_at"))


def wait_rows(count, **filters):
    """Wait until exactly `count` chat rows match, and return them."""
    wait_until(lambda: len(rows(**filters)) >= count, timeout=10, message=f"{count} RequestLog rows")
    time.sleep(0.15)  # a straggler would show up within a flush interval
    found = rows(**filters)
    assert len(found) == count
    return found


@contextlib.contextmanager
def local_http_server(handler_class, **attributes):
    """Serve handler_class on a free local port in a thread; yield the server (`.url`: its /v1 base)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
    server.daemon_threads = True
    for name, value in attributes.items():
        setattr(server, name, value)
    server.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
