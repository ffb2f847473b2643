"""A user's own DiracX login: DiracX 0.7's authorization-code flow with PKCE.

DiracX 0.7 has no token exchange: a DiracX token of a user comes from that
user's own login at DiracX, which sends the browser on to the VO's identity
provider (IAM, the one the hub logs users in with, so its session makes the
step immediate) and back. The hub runs it (gridhub.hub.diraclogin):

1. ``start``: a PKCE verifier and DiracX's ``GET /api/auth/authorize`` URL
   (client ``myDIRACClientID``, the hub's redirect URI, which the DiracX
   deployment must list in ``DIRACX_SERVICE_AUTH_ALLOWED_REDIRECTS``);
2. DiracX redirects to IAM, IAM back to DiracX, DiracX to the redirect URI
   with ``code`` and ``state``;
3. ``exchange_code``: ``POST /api/auth/token`` (grant ``authorization_code``
   with the verifier) gives the user's access and refresh tokens.

Scopes are the least DiracX grants: ``vo:<vo>`` and ``group:<group>`` (the
user's DIRAC group, mapped from their IAM groups by ``dirac_group``). DiracX
adds the group's own properties; a ``property:`` scope could only add more,
so none is asked for.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterable, Mapping
from urllib.parse import urlencode

from .models import TokenResponse
from .tokens import DEFAULT_CLIENT_ID, _token_request

#: the key of ``groups`` for users in none of the mapped IAM groups
DEFAULT_KEY = "default"


def dirac_group(hub_groups: Iterable[str], groups: Mapping[str, str]) -> str | None:
    """The DIRAC group of a user in ``hub_groups`` (their IAM groups): the
    first of the deployer's map (in its order) that the user is in, else its
    ``default`` entry, else None (DiracX then uses the VO's DefaultGroup)."""
    mine = set(hub_groups)
    for iam_group, group in groups.items():
        if iam_group != DEFAULT_KEY and iam_group in mine:
            return group
    return groups.get(DEFAULT_KEY)


def scope(vo: str, group: str | None) -> str:
    return f"vo:{vo} group:{group}" if group else f"vo:{vo}"


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge) as RFC 7636 defines them."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).decode().rstrip("=")


def authorize_url(
    diracx_url: str,
    *,
    redirect_uri: str,
    scope: str,
    state: str,
    code_challenge: str,
    client_id: str = DEFAULT_CLIENT_ID,
) -> str:
    """Where the browser starts the user's DiracX login."""
    query = urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": scope,
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
    )
    return f"{diracx_url.rstrip('/')}/api/auth/authorize?{query}"


async def exchange_code(
    diracx_url: str,
    code: str,
    code_verifier: str,
    *,
    redirect_uri: str,
    client_id: str = DEFAULT_CLIENT_ID,
    verify: bool | str = True,
    timeout: float = 10.0,  # noqa: ASYNC109 (httpx timeouts)
) -> TokenResponse:
    """The user's tokens for the code DiracX sent back (DiracXError naming
    DiracX when refused; the code and tokens never in a message)."""
    return await _token_request(
        diracx_url,
        "POST",
        "/api/auth/token",
        verify=verify,
        timeout=timeout,
        data={
            "grant_type": "authorization_code",
            "client_id": client_id,
            "code": code,
            "code_verifier": code_verifier,
            "redirect_uri": redirect_uri,
        },
    )


__all__ = ["DEFAULT_KEY", "authorize_url", "dirac_group", "exchange_code", "pkce_pair", "scope"]
