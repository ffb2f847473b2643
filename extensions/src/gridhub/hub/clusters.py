"""Stop a user's Dask clusters when their server stops (a Spawner.post_stop_hook).

A server that is stopped or culled cannot close the clusters it made, and
dask-gateway keeps a cluster, and so its DIRAC jobs, until someone stops it or
it has been idle for ``DiracClusterConfig.idle_timeout``. So when the hub stops
a server (the user, an admin, the idle-culler, or a server found dead), it asks
the gateway for that user's active clusters and stops each one; the gateway's
DIRAC backend then kills their jobs.

dask-gateway lets only a cluster's owner stop it, and learns who a caller is
from the hub (``JupyterHubAuthenticator``: ``GET /hub/api/user`` with the
caller's token). So the hook acts as the user: it issues the user a token with
the one scope ``access:services!service=dask-gateway``, valid for a minute, and
deletes it when done. No admin credential of the gateway is involved, and the
token travels only in a header to the gateway.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

TOKEN_NOTE = "gridhub: stop the user's Dask clusters as the server stops"  # noqa: S105
TOKEN_SECONDS = 60


class StopClustersWithServer:
    """``c.Spawner.post_stop_hook = StopClustersWithServer(api_url, service)``.

    ``api_url``: the gateway's API as the hub reaches it (``<gateway>/api/v1``);
    ``service``: the gateway's JupyterHub service name (its access scope).
    """

    def __init__(self, api_url: str, service: str, timeout: float = 20) -> None:
        self.api_url = api_url.rstrip("/")
        self.scope = f"access:services!service={service}"
        self.timeout = timeout

    async def __call__(self, spawner) -> None:
        user = spawner.user
        log = getattr(spawner, "log", logging.getLogger(__name__))
        # Clusters belong to the user, not to one server: with named servers,
        # leave them while another of the user's servers still runs.
        others = [s for s in user.spawners.values() if s is not spawner and s.active]
        if others:
            log.info("%s has another running server: Dask clusters left running", user.name)
            return
        token = user.new_api_token(note=TOKEN_NOTE, scopes=[self.scope], expires_in=TOKEN_SECONDS)
        try:
            names = await self.stop_all(token)
        except (HTTPClientError, OSError, ValueError) as exc:
            # (the gateway's idle_timeout is the backstop)
            log.warning(
                "Could not stop the Dask clusters of %s at %s: %s", user.name, self.api_url, exc
            )
            return
        finally:
            _delete_token(user, token)
        if names:
            log.info("Stopped the Dask clusters of %s: %s", user.name, ", ".join(names))

    async def stop_all(self, token: str) -> list[str]:
        """Stop every active cluster of the token's owner; their names."""
        response = await self._fetch("GET", "/clusters/", token)
        names = sorted(json.loads(response.body))
        for name in names:
            await self._fetch("DELETE", f"/clusters/{quote(name, safe='')}", token)
        return names

    async def _fetch(self, method: str, path: str, token: str):
        request = HTTPRequest(
            self.api_url + path,
            method=method,
            headers={"Authorization": f"jupyterhub {token}"},
            request_timeout=self.timeout,
        )
        return await AsyncHTTPClient().fetch(request)


def _delete_token(user, token: str) -> None:
    from jupyterhub import orm

    orm_token = orm.APIToken.find(user.db, token)
    if orm_token is not None:
        user.db.delete(orm_token)
        user.db.commit()
