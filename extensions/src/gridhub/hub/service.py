"""How every hub-managed service of GridHub runs (teacher, monitoring, token
service, storage tokens): listen where the hub routes to it, stop on the hub's
SIGTERM or SIGINT, and stop by itself when the hub dies without stopping it
(SIGKILL, OOM): a managed service left behind holds its port, and the next
hub's copy of it cannot start."""

from __future__ import annotations

import logging
import os
import signal
from urllib.parse import urlsplit

from tornado import web
from tornado.ioloop import IOLoop, PeriodicCallback

log = logging.getLogger(__name__)

ORPHAN_CHECK_MS = 5000


def serve(app: web.Application, listen_host: str | None = None) -> None:
    """Run `app` on JUPYTERHUB_SERVICE_URL's port until the hub stops it.

    listen_host: where to bind instead of the URL's host (in compose, the
    hub's own 0.0.0.0: the proxy may reach the hub's name by another network
    than the one it resolves to here).
    """
    url = urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"])
    loop = IOLoop.current()
    # before listening: a signal sent as soon as the port answers stops the
    # service cleanly rather than killing it
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: loop.add_callback_from_signal(loop.stop))
    app.listen(url.port or 80, listen_host or url.hostname or "127.0.0.1")
    hub = os.getppid()

    def orphaned() -> None:
        if os.getppid() != hub:
            log.warning("the hub (pid %d) is gone without stopping this service: stopping", hub)
            loop.stop()

    PeriodicCallback(orphaned, ORPHAN_CHECK_MS).start()
    loop.start()
