"""Database reads for async views, on small thread pools of their own.

Never on Django's shared sync thread (every sync call of the process queues behind it), nor on the event loop's
default executor (DNS lookups for upstream calls): a query hung in a network partition or on a lock keeps its thread
until it ends, so each caller gets a pool whose threads only it can use up, and may stop waiting (`timeout`) without
waiting for the thread. Stale connections are dropped around each read, as Django does around a request.
"""

import asyncio
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.db import close_old_connections


class DatabaseThreads:
    """A named pool of threads for one kind of database read."""

    def __init__(self, name, max_workers=4):
        self.executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)

    async def run(self, func, *args, timeout=None):
        """Return func(*args) run on the pool like a request; raise TimeoutError if it takes longer than timeout."""

        def run():
            close_old_connections()
            try:
                return func(*args)
            finally:
                close_old_connections()

        read = sync_to_async(run, thread_sensitive=False, executor=self.executor)()
        return await (asyncio.wait_for(read, timeout) if timeout is not None else read)
