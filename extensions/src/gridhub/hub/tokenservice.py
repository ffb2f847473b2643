"""Hub-managed service that hands a user's server the user's current IAM access token.

    GET <service prefix>token    Authorization: token <the server's JUPYTERHUB_API_TOKEN>

1. asks the hub who the caller is (``/hub/api/user`` with the caller's token); the hub
   runs ``refresh_auth`` on such a request, so the IAM token is refreshed there when due;
2. requires that token to hold the custom scope ``custom:gridhub-tokens:read`` for
   its owner (JupyterHub gives it to the user's server token only: hub/config.py);
3. reads that user's auth_state with the service's own token (scope admin:auth_state);
4. answers ``{"access_token": ..., "expires_at": ...}`` (Cache-Control: no-store).

Only a token of user X holding the scope obtains X's token: not every token of X (an
OAuth token some other service got, a token made with a few scopes for a script), since
the IAM token acts as X everywhere IAM is trusted.  Tokens travel in headers and bodies
only, never in URLs, argv or logs.
"""

from __future__ import annotations

import json
import logging
import os
from urllib.parse import quote

from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .service import serve

log = logging.getLogger("gridhub.tokenservice")

#: the JupyterHub custom scope a token needs to read its owner's IAM token
READ_SCOPE = "custom:gridhub-tokens:read"


def may_read(scopes: list[str], name: str) -> bool:
    """Whether a token with these (expanded) scopes may read ``name``'s IAM token:
    the scope itself, or filtered to that very user."""
    return READ_SCOPE in scopes or f"{READ_SCOPE}!user={name}" in scopes


class TokenHandler(web.RequestHandler):
    def initialize(self, api_url: str, api_token: str) -> None:
        self.api_url = api_url
        self.api_token = api_token

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")

    async def _hub(self, path: str, token: str) -> dict:
        request = HTTPRequest(
            self.api_url + path,
            headers={"Authorization": f"token {token}"},
            request_timeout=20,
        )
        response = await AsyncHTTPClient().fetch(request)
        return json.loads(response.body)

    async def get(self) -> None:
        header = self.request.headers.get("Authorization", "")
        scheme, _, caller_token = header.partition(" ")
        if scheme.lower() not in ("token", "bearer") or not caller_token.strip():
            raise web.HTTPError(401, "a JupyterHub token is required")
        try:
            who = await self._hub("/user", caller_token.strip())
        except HTTPClientError as exc:
            raise web.HTTPError(403 if exc.code in (401, 403) else 502) from None
        if who.get("kind") != "user":
            raise web.HTTPError(403, "only users have IAM tokens")
        name = who["name"]
        if not may_read(who.get("scopes") or [], name):
            log.warning("refused %s's token without %s", name, READ_SCOPE)
            raise web.HTTPError(403, f"the token lacks the scope {READ_SCOPE}")
        try:
            model = await self._hub(f"/users/{quote(name, safe='')}", self.api_token)
        except HTTPClientError as exc:
            log.error("reading auth_state of %s failed: HTTP %s", name, exc.code)
            raise web.HTTPError(502) from None
        state = model.get("auth_state") or {}
        if not state.get("access_token"):
            raise web.HTTPError(404, "no access token for this user")
        self.set_header("Content-Type", "application/json")
        self.finish(
            json.dumps(
                {"access_token": state["access_token"], "expires_at": state.get("expires_at")}
            )
        )


class HealthHandler(web.RequestHandler):
    def get(self) -> None:
        self.finish({"ok": True})


def make_app(prefix: str, api_url: str, api_token: str) -> web.Application:
    prefix = "/" + prefix.strip("/") + "/"
    args = {"api_url": api_url.rstrip("/"), "api_token": api_token}
    return web.Application(
        [(prefix + "token", TokenHandler, args), (prefix + "health", HealthHandler)]
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(name)s] %(message)s")
    app = make_app(
        os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/gridhub-tokens/"),
        os.environ["JUPYTERHUB_API_URL"],
        os.environ["JUPYTERHUB_API_TOKEN"],
    )
    log.info("gridhub token service on %s", os.environ["JUPYTERHUB_SERVICE_URL"])
    serve(app)


if __name__ == "__main__":
    main()
