"""Helpers shared by test modules: a chat to send, and the RequestLog rows the gateway wrote for it."""

import time

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
