"""Users' own DiracX logins, held by the gateway (external DiracX, per-user identity).

The hub runs each user's DiracX login (gridhub.hub.diraclogin) and hands the
tokens over at once: ``PUT /api/v1/dirac-logins/<hub user>`` with the
hand-over token (the hub's gateway service token, which both hold) as
bearer. From then on the gateway is the only holder: it keeps the pair in
``<directory>/<sha256 of the user>.json`` (0600, directory 0700), refreshes
it while the user's clusters live (DiracX rotates refresh tokens: a second
holder refreshing the same token would make DiracX revoke all of them) and
uses it for that user's sandbox, submissions, status checks and kills
(``DiracBackend.dirac_for``). When the user's last cluster stops, or at
logout (``DELETE``, the hub's logout), the file is deleted and its refresh
token revoked at DiracX; a logout while clusters live leaves it to their end,
so their jobs can still be killed. Tokens are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from pydantic import ValidationError

from ..dirac.models import TokenResponse
from ..dirac.tokens import UserLoginToken, write_credentials

log = logging.getLogger(__name__)

ROUTE = "/api/v1/dirac-logins/{user}"


class DiracLogins:
    def __init__(
        self,
        directory: str | Path,
        diracx_url: str,
        *,
        login_url: str = "",
        verify: bool | str = True,
        timeout: float = 10.0,
    ) -> None:
        self.directory = Path(directory)
        self.diracx_url = diracx_url
        self.login_url = login_url
        self.verify = verify
        self.timeout = timeout
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)

    def path(self, hub_user: str) -> Path:
        # a hash: any hub name is a safe file name, none is a path
        return self.directory / (hashlib.sha256(hub_user.encode()).hexdigest()[:40] + ".json")

    def save(self, hub_user: str, tokens: TokenResponse) -> None:
        write_credentials(self.path(hub_user), tokens)

    def token_source(self, hub_user: str) -> UserLoginToken:
        return UserLoginToken(
            self.diracx_url,
            self.path(hub_user),
            who=hub_user,
            login_url=self.login_url,
            verify=self.verify,
            timeout=self.timeout,
        )

    def handler(
        self,
        handoff_token: str,
        has_clusters: Callable[[str], bool],
        forget: Callable[[str], Awaitable[None]],
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """The hub's hand-over route: PUT stores a login, DELETE ends it
        (``forget(user)`` drops the gateway's client of the user first)."""

        async def handle(request: web.Request) -> web.Response:
            kind, _, given = request.headers.get("Authorization", "").partition(" ")
            if (
                not handoff_token
                or kind.lower() != "bearer"
                or not hmac.compare_digest(given.encode(), handoff_token.encode())
            ):
                return web.json_response({"error": "not the hub"}, status=403)
            user = request.match_info["user"]
            if request.method == "PUT":
                try:
                    tokens = TokenResponse.model_validate(await request.json())
                except (ValueError, ValidationError):
                    return web.json_response({"error": "not a DiracX token answer"}, status=422)
                if not tokens.refresh_token:
                    return web.json_response({"error": "no refresh token"}, status=422)
                self.save(user, tokens)
                log.info("Stored the DiracX login of user %s", user)
                return web.json_response({"stored": True})
            if has_clusters(user):
                # their jobs must stay killable: dropped when the last cluster stops
                return web.json_response({"dropped": False, "reason": "clusters live"}, status=202)
            await forget(user)
            await self.token_source(user).revoke()
            log.info("Dropped the DiracX login of user %s (logout)", user)
            return web.json_response({"dropped": True})

        return handle


__all__ = ["ROUTE", "DiracLogins"]
