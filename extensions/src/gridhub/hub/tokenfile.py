"""Keep BEARER_TOKEN_FILE fresh inside a running user server (a Jupyter server extension).

The hub starts every IAM-mode server with ``BEARER_TOKEN_FILE`` (the WLCG bearer token
discovery convention) and ``GRIDHUB_TOKEN_SERVICE_URL`` in its environment and this
extension enabled.  Every ``interval`` seconds the extension asks the hub's token service
for the user's current access token (authenticating with the server's own
JUPYTERHUB_API_TOKEN) and, when it changed, replaces the file atomically with mode 0600.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.ioloop import IOLoop, PeriodicCallback

from ..files import write_private

log = logging.getLogger("gridhub.tokenfile")


def write_token_file(path: str | Path, token: str) -> None:
    """Atomically replace `path` with `token`, mode 0600, in a 0700 directory we create."""
    path = Path(path)
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    write_private(path, token + "\n")


class TokenFileRefresher:
    def __init__(self, path: str, service_url: str, api_token: str, interval: float = 30):
        self.path = path
        self.url = service_url.rstrip("/") + "/token"
        self.api_token = api_token
        self.interval = interval
        self.current: str | None = None
        self.failures = 0
        self._retry: object | None = None

    async def refresh_once(self) -> bool:
        request = HTTPRequest(
            self.url, headers={"Authorization": f"token {self.api_token}"}, request_timeout=20
        )
        try:
            response = await AsyncHTTPClient().fetch(request)
            token = json.loads(response.body)["access_token"]
        except Exception as exc:
            self.failures += 1
            log.warning("token refresh failed (%s): %s", self.failures, type(exc).__name__)
            if self._retry is None and self.interval > 5:  # retry soon, once
                self._retry = IOLoop.current().call_later(5, self._retry_now)
            return False
        self.failures = 0
        if token != self.current:
            write_token_file(self.path, token)
            self.current = token
            log.info("refreshed %s", self.path)
        return True

    async def _retry_now(self) -> None:
        self._retry = None
        await self.refresh_once()

    def start(self) -> None:
        IOLoop.current().add_callback(self.refresh_once)
        self.periodic = PeriodicCallback(self.refresh_once, self.interval * 1000)
        self.periodic.start()


def _jupyter_server_extension_points():
    return [{"module": "gridhub.hub.tokenfile"}]


def _refresher_from_env() -> TokenFileRefresher | None:
    path = os.environ.get("BEARER_TOKEN_FILE")
    url = os.environ.get("GRIDHUB_TOKEN_SERVICE_URL")
    api_token = os.environ.get("JUPYTERHUB_API_TOKEN")
    if not (path and url and api_token):
        return None
    interval = float(os.environ.get("GRIDHUB_TOKEN_FILE_REFRESH_SECONDS", "30"))
    return TokenFileRefresher(path, url, api_token, interval)


def _load_jupyter_server_extension(serverapp) -> None:
    if not os.environ.get("GRIDHUB_TOKEN_SERVICE_URL"):
        serverapp.log.info("gridhub.hub.tokenfile: no token service configured, not started")


async def _start_jupyter_server_extension(serverapp) -> None:
    refresher = _refresher_from_env()
    if refresher is None:
        return
    serverapp.gridhub_token_refresher = refresher
    refresher.start()
    serverapp.log.info(
        "gridhub.hub.tokenfile: keeping %s fresh every %ss", refresher.path, refresher.interval
    )
