"""IAM login: oauthenticator's GenericOAuthenticator, configured from OIDC discovery.

The only addition to the library is *proactive* refresh: oauthenticator refreshes an
access token once the provider refuses it; here ``refresh_user`` refreshes it (with the
library's own ``get_token_info`` / ``build_refresh_token_request_params``) when less than
``refresh_margin`` seconds (at most half its lifetime) are left, so the token handed to
the user's server is always valid for a while.  No token is ever logged.

With ``diracx_url`` set (an external DiracX without a robot identity), the IAM login
goes on through the user's own DiracX login (gridhub.hub.diraclogin).
"""

from __future__ import annotations

import asyncio
import time

import httpx
from oauthenticator.generic import GenericOAuthenticator
from traitlets import Dict, Integer, Unicode

from .diraclogin import HANDLERS as DIRAC_LOGIN_HANDLERS
from .diraclogin import ChainedCallbackHandler, DiracLogoutHandler


def discover(issuer: str, timeout: float = 60.0) -> dict:
    """Fetch <issuer>/.well-known/openid-configuration, retrying until `timeout`."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = httpx.get(url, timeout=10)
            response.raise_for_status()
            doc = response.json()
            for key in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint"):
                if key not in doc:
                    raise ValueError(f"{url} has no {key}")
            return doc
        except (httpx.HTTPError, ValueError) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"OIDC discovery at {url} failed: {exc}") from exc
            time.sleep(2)


class IAMAuthenticator(GenericOAuthenticator):
    """GenericOAuthenticator that refreshes access tokens before they expire."""

    callback_handler = ChainedCallbackHandler
    logout_handler = DiracLogoutHandler

    refresh_margin = Integer(
        300,
        config=True,
        help="Refresh when fewer seconds than this (at most half the lifetime) are left.",
    )
    groups_claim = Unicode("groups", config=True, help="userinfo claim with the user's groups.")
    facility_name = Unicode("GridHub", config=True)

    # the user's own DiracX login after the IAM login (gridhub.hub.diraclogin)
    diracx_url = Unicode("", config=True, help="External DiracX; empty: no DiracX login.")
    diracx_ca_file = Unicode("", config=True, help="CA bundle for DiracX (empty: system CAs).")
    diracx_vo = Unicode("", config=True, help="The DIRAC VO users log in to (scope vo:).")
    diracx_groups = Dict(
        config=True,
        help='IAM group -> DIRAC group, first match in order, "default" for the rest.',
    )
    diracx_redirect_uri = Unicode(
        "", config=True, help="<public URL>/hub/dirac-callback (DiracX must allow it)."
    )
    diracx_handoff_url = Unicode(
        "", config=True, help="The gateway's <url>/api/v1/dirac-logins (hand-over)."
    )
    diracx_handoff_token = Unicode("", config=True, help="Bearer token for the hand-over.")

    def get_handlers(self, app):
        handlers = super().get_handlers(app)
        if self.diracx_url:
            handlers = [*handlers, *DIRAC_LOGIN_HANDLERS]
        return handlers

    def build_auth_state_dict(self, token_info, user_info):
        state = super().build_auth_state_dict(token_info, user_info)
        expires_in = token_info.get("expires_in")
        if expires_in:
            state["expires_at"] = time.time() + int(expires_in)
            state["lifetime"] = int(expires_in)
        return state

    _locks: dict[str, asyncio.Lock]

    async def refresh_user(self, user, handler=None, **kwargs):
        # one refresh at a time per user: a rotated refresh token is single-use
        if not hasattr(self, "_locks"):
            self._locks, self._fresh = {}, {}
        async with self._locks.setdefault(user.name, asyncio.Lock()):
            # a request that waited for the lock reuses the refresh that just happened
            # (the hub saves the new auth_state only after we return)
            fresh = self._fresh.get(user.name)
            if fresh and fresh["auth_state"]["expires_at"] - time.time() > self._margin(
                fresh["auth_state"]
            ):
                return fresh
            result = await self._refresh_user(user, handler, **kwargs)
            if isinstance(result, dict) and (result.get("auth_state") or {}).get("expires_at"):
                self._fresh[user.name] = result
            else:
                self._fresh.pop(user.name, None)
            return result

    def _margin(self, auth_state: dict) -> float:
        return min(self.refresh_margin, auth_state.get("lifetime", 0) / 2)

    async def _refresh_user(self, user, handler=None, **kwargs):
        auth_state = await user.get_auth_state()
        if not auth_state:
            return False
        expires_at = auth_state.get("expires_at")
        refresh_token = auth_state.get("refresh_token")
        if not expires_at or not refresh_token:
            return await super().refresh_user(user, handler, **kwargs)
        if expires_at - time.time() > self._margin(auth_state):
            return True
        self.log.info("Refreshing the IAM access token of %s", user.name)
        params = self.build_refresh_token_request_params(refresh_token)
        try:
            token_info = await self.get_token_info(handler, params)
        except Exception as exc:
            self.log.warning("Refreshing tokens of %s failed: %s", user.name, type(exc).__name__)
            return await super().refresh_user(user, handler, **kwargs)
        if not token_info.get("refresh_token"):
            token_info["refresh_token"] = refresh_token
        try:
            return await self._token_to_auth_model(token_info)
        except Exception as exc:
            self.log.warning(
                "Fresh token of %s was not accepted: %s", user.name, type(exc).__name__
            )
            return False


def groups_from_claim(claim: str):
    """auth_state_groups_key callable: the claim's groups, leading '/' stripped (wlcg.groups)."""

    def groups(auth_state: dict) -> list[str]:
        info = auth_state.get("oauth_user") or {}
        value = info.get(claim) or []
        if isinstance(value, str):
            value = value.replace(",", " ").split()
        return [str(g).lstrip("/") for g in value]

    return groups
