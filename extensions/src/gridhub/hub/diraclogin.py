"""The user's own DiracX login, chained after the hub's IAM login (external DiracX).

With ``IAMAuthenticator.diracx_url`` set (an external DiracX, no robot
identity), the hub's OAuth callback does not send the browser straight on:
it goes through ``/hub/dirac-login``, which starts DiracX's authorization-code
flow (gridhub.dirac.userlogin). DiracX sends the browser to the same IAM,
whose session from the login a moment ago lets it straight through, then back
to ``/hub/dirac-callback``; the hub exchanges the code (PKCE), hands the
tokens to the gateway (``PUT <gateway>/api/v1/dirac-logins/<user>``,
gridhub.gateway.diraclogins), which alone holds and refreshes them from then
on, and sends the browser where it was going. The hub keeps no copy.

The DIRAC group asked for is the user's IAM group mapped by
``diracx_groups`` (their first listed group, else "default"); the scope is
``vo:<vo> group:<group>`` only. A user whose DiracX login has ended (their
last cluster stopped, the refresh token expired) is told by the gateway to
open ``/hub/dirac-login`` again, which passes through IAM the same way.
At logout the hub asks the gateway to drop (and revoke) the login.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from urllib.parse import quote

import httpx
from jupyterhub.handlers import BaseHandler
from jupyterhub.utils import url_path_join
from oauthenticator.oauth2 import OAuthCallbackHandler, OAuthLogoutHandler
from tornado import web
from tornado.httputil import url_concat

from ..dirac import DiracXError, DiracXForbidden
from ..dirac.userlogin import authorize_url, dirac_group, exchange_code, pkce_pair, scope

#: seconds a started DiracX login may take (DiracX's own flow lasts 300 s)
PENDING_SECONDS = 600.0


@dataclass(frozen=True)
class Pending:
    user: str
    verifier: str
    next_url: str
    until: float


# state -> the login it belongs to (one hub process; a restart just needs a new login)
_pending: dict[str, Pending] = {}


def _redirect_uri(handler: BaseHandler) -> str:
    return handler.authenticator.diracx_redirect_uri


class DiracLoginHandler(BaseHandler):
    """GET /hub/dirac-login?next=<path>: start the user's DiracX login."""

    @web.authenticated
    async def get(self) -> None:
        a = self.authenticator
        user = self.current_user
        now = time.monotonic()
        for state in [s for s, p in _pending.items() if p.until < now]:
            del _pending[state]
        group = dirac_group([g.name for g in user.groups], a.diracx_groups)
        verifier, challenge = pkce_pair()
        state = secrets.token_urlsafe(24)
        next_url = self.get_next_url(user, default=url_path_join(self.hub.base_url, "home"))
        _pending[state] = Pending(user.name, verifier, next_url, now + PENDING_SECONDS)
        self.log.info("DiracX login of %s for DIRAC group %s", user.name, group or "(default)")
        self.redirect(
            authorize_url(
                a.diracx_url,
                redirect_uri=_redirect_uri(self),
                scope=scope(a.diracx_vo, group),
                state=state,
                code_challenge=challenge,
            )
        )


class DiracCallbackHandler(BaseHandler):
    """GET /hub/dirac-callback?code=&state=: where DiracX sends the browser back."""

    @web.authenticated
    async def get(self) -> None:
        a = self.authenticator
        user = self.current_user
        pending = _pending.pop(self.get_argument("state", ""), None)
        if pending is None or pending.user != user.name or pending.until < time.monotonic():
            raise web.HTTPError(
                400,
                "This DIRAC login is unknown or has expired: start it again at /hub/dirac-login",
            )
        error = self.get_argument("error", "")
        code = self.get_argument("code", "")
        if error or not code:
            raise web.HTTPError(403, f"DIRAC did not log you in ({error or 'no code'})")
        try:
            tokens = await exchange_code(
                a.diracx_url,
                code,
                pending.verifier,
                redirect_uri=_redirect_uri(self),
                verify=a.diracx_ca_file or True,
            )
        except DiracXError as exc:  # (no token or code in its message)
            self.log.warning("DiracX login of %s refused: %s", user.name, exc)
            status = 403 if isinstance(exc, DiracXForbidden) else 502
            raise web.HTTPError(status, f"DIRAC refused your login: {exc}") from None
        try:
            async with httpx.AsyncClient(timeout=20) as http:
                r = await http.put(
                    _handoff_url(a, user.name),
                    json=tokens.model_dump(),
                    headers={"Authorization": f"Bearer {a.diracx_handoff_token}"},
                )
            r.raise_for_status()
        except httpx.HTTPError as exc:
            self.log.warning(
                "Handing the DiracX login of %s to the gateway failed: %s",
                user.name,
                type(exc).__name__,
            )
            raise web.HTTPError(
                502, "Your DIRAC login worked but the Dask gateway did not take it; try again"
            ) from None
        self.log.info("DiracX login of %s handed to the gateway", user.name)
        self.redirect(pending.next_url)


def _handoff_url(a, name: str) -> str:
    return a.diracx_handoff_url.rstrip("/") + "/" + quote(name, safe="")


class ChainedCallbackHandler(OAuthCallbackHandler):
    """The IAM callback, going on through the user's DiracX login when set up."""

    def get_next_url(self, user=None):
        next_url = super().get_next_url(user)
        if user is None or not self.authenticator.diracx_url:
            return next_url
        return url_concat(url_path_join(self.hub.base_url, "dirac-login"), {"next": next_url})


class DiracLogoutHandler(OAuthLogoutHandler):
    """Logout: the gateway drops (and revokes) the user's DiracX login, unless
    the user's clusters still need it (then it goes when they stop)."""

    async def handle_logout(self):
        a = self.authenticator
        user = self.current_user
        if user is not None and a.diracx_url:
            try:
                async with httpx.AsyncClient(timeout=20) as http:
                    r = await http.delete(
                        _handoff_url(a, user.name),
                        headers={"Authorization": f"Bearer {a.diracx_handoff_token}"},
                    )
                self.log.info("Logout of %s: the gateway answered %d", user.name, r.status_code)
            except httpx.HTTPError as exc:
                self.log.warning(
                    "Logout of %s: the gateway could not drop the DiracX login: %s",
                    user.name,
                    type(exc).__name__,
                )
        await super().handle_logout()


HANDLERS = [(r"/dirac-login", DiracLoginHandler), (r"/dirac-callback", DiracCallbackHandler)]
