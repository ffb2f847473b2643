"""Where the DiracX client gets its bearer tokens.

* ``RefreshingToken``: an access token plus a refresh token; refreshed with
  DiracX's ``refresh_token`` grant at ``<url>/api/auth/token`` shortly before
  expiry.  DiracX rotates refresh tokens (each refresh returns a new one and
  the old one becomes invalid), so a token file, when given, is rewritten
  (mode 0600) after every refresh; do not share one file between processes.
* ``LegacyExchangeToken``: DiracX's ``GET /api/auth/legacy-exchange``, which
  turns an API key (whose SHA-256 the server knows from
  ``DIRACX_LEGACY_EXCHANGE_HASHED_API_KEY``) into access+refresh tokens for a
  user registered in the DIRAC configuration.  This is how the facility gets
  tokens for its own identity without a browser (see ``gridhub.embedded``).
* ``UserLoginToken``: a user's own DiracX login (the authorization-code flow
  the hub runs, ``gridhub.dirac.userlogin``), kept in a credentials file that
  only its holder rewrites.

No token is ever logged or put into an exception message.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Protocol, runtime_checkable

import httpx

from ..files import write_private
from .errors import DiracXError, DiracXForbidden, DiracXTokenExpired, DiracXUnreachable
from .models import TokenResponse

log = logging.getLogger(__name__)

DEFAULT_CLIENT_ID = "myDIRACClientID"  # DiracX's AuthSettings.dirac_client_id default
#: Refresh this long before the access token expires (capped at half its life).
REFRESH_MARGIN = 60.0


@runtime_checkable
class TokenSource(Protocol):
    async def access_token(self) -> str:
        """A valid access token (cached, refreshed before expiry)."""
        ...

    async def refresh(self) -> str:
        """Force a refresh (e.g. after a 401) and return the new access token."""
        ...


async def _token_request(
    server: str,
    method: str,
    path: str,
    *,
    verify: bool | str,
    timeout: float,  # noqa: ASYNC109 (httpx timeouts, per phase)
    data: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> TokenResponse:
    url = server.rstrip("/") + path
    try:
        async with httpx.AsyncClient(
            verify=verify, timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0))
        ) as http:
            r = await http.request(method, url, data=data, params=params, headers=headers)
    except httpx.TransportError as exc:
        raise DiracXUnreachable(f"cannot get a token ({type(exc).__name__})", server) from exc
    if r.status_code == 200:
        try:
            return TokenResponse.model_validate(r.json())
        except ValueError:  # not JSON, or not a token answer (pydantic's error is one)
            body = " ".join(r.text[:200].split())
            raise DiracXError(
                f"{method} {path} answered 200 with a body that is not JSON (or not a token "
                f"answer) ({r.headers.get('content-type', 'no content type')}): {body!r}",
                server,
            ) from None
    try:
        detail = r.json().get("detail") or r.json().get("error") or r.text
    except ValueError:
        detail = r.text
    detail = str(detail)[:300]
    if r.status_code in (502, 503, 504):
        raise DiracXUnreachable(f"token endpoint answered {r.status_code}: {detail}", server)
    if r.status_code == 403:
        raise DiracXForbidden(f"token refused: {detail}", server)
    if r.status_code in (400, 401):
        raise DiracXTokenExpired(f"cannot renew the token ({r.status_code}): {detail}", server)
    raise DiracXError(f"token endpoint answered {r.status_code}: {detail}", server)


class _CachedToken:
    """Shared caching: subclasses implement ``_fetch``."""

    client_id: str = DEFAULT_CLIENT_ID

    def __init__(self, url: str, *, verify: bool | str = True, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.verify = verify
        self.timeout = timeout
        self._access: str | None = None
        self._expires_at = 0.0
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, <hidden>)"

    def _get_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    def _store(self, tok: TokenResponse) -> None:
        self._access = tok.access_token
        life = max(float(tok.expires_in), 1.0)
        self._expires_at = time.time() + life - min(REFRESH_MARGIN, life / 2)

    async def _fetch(self) -> TokenResponse:
        raise NotImplementedError

    async def _refresh_grant(self, refresh_token: str) -> TokenResponse:
        """DiracX's refresh_token grant."""
        return await _token_request(
            self.url,
            "POST",
            "/api/auth/token",
            verify=self.verify,
            timeout=self.timeout,
            data={
                "grant_type": "refresh_token",
                "client_id": self.client_id,
                "refresh_token": refresh_token,
            },
        )

    async def access_token(self) -> str:
        if self._access is not None and time.time() < self._expires_at:
            return self._access
        async with self._get_lock():
            if self._access is not None and time.time() < self._expires_at:
                return self._access
            self._store(await self._fetch())
            assert self._access is not None
            return self._access

    async def refresh(self) -> str:
        stale = self._access
        async with self._get_lock():
            if self._access is not None and self._access != stale:
                return self._access  # someone else refreshed meanwhile
            self._store(await self._fetch())
            assert self._access is not None
            return self._access


class RefreshingToken(_CachedToken):
    """Access token renewed with DiracX's refresh_token grant."""

    def __init__(
        self,
        url: str,
        refresh_token: str,
        *,
        access_token: str | None = None,
        expires_at: float | None = None,
        client_id: str = DEFAULT_CLIENT_ID,
        verify: bool | str = True,
        timeout: float = 10.0,
        token_file: str | Path | None = None,
    ) -> None:
        super().__init__(url, verify=verify, timeout=timeout)
        self._refresh_token = refresh_token
        self.client_id = client_id
        self.token_file = Path(token_file) if token_file else None
        if access_token:
            self._access = access_token
            self._expires_at = (expires_at or 0.0) - REFRESH_MARGIN

    @classmethod
    def from_file(
        cls, url: str, path: str | Path, *, verify: bool | str = True, timeout: float = 10.0
    ) -> RefreshingToken:
        """Read a DiracX credentials file (``dirac login``'s JSON:
        ``access_token``, ``refresh_token``, ``expires_on`` epoch seconds).
        The file is rewritten after each refresh because DiracX rotates
        refresh tokens."""
        data = json.loads(Path(path).read_text())
        return cls(
            url,
            data["refresh_token"],
            access_token=data.get("access_token"),
            expires_at=float(data.get("expires_on") or 0),
            verify=verify,
            timeout=timeout,
            token_file=path,
        )

    async def _fetch(self) -> TokenResponse:
        tok = await self._refresh_grant(self._refresh_token)
        if tok.refresh_token:
            self._refresh_token = tok.refresh_token
        if self.token_file is not None:
            write_credentials(self.token_file, tok)
        return tok


class LegacyExchangeToken(_CachedToken):
    """Tokens for a CS user from DiracX's legacy-exchange endpoint and an API key.

    The first token comes from ``GET /api/auth/legacy-exchange``; later ones
    from the refresh_token grant, falling back to a new exchange when the
    refresh token is refused (e.g. after a server restart changed the issuer).
    """

    def __init__(
        self,
        url: str,
        api_key: bytes,
        preferred_username: str,
        scope: str,
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        verify: bool | str = True,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(url, verify=verify, timeout=timeout)
        self._api_key = api_key
        self.preferred_username = preferred_username
        self.scope = scope
        self.client_id = client_id
        self._refresh_token: str | None = None

    async def _exchange(self) -> TokenResponse:
        encoded = base64.urlsafe_b64encode(self._api_key).decode()
        return await _token_request(
            self.url,
            "GET",
            "/api/auth/legacy-exchange",
            verify=self.verify,
            timeout=self.timeout,
            params={"preferred_username": self.preferred_username, "scope": self.scope},
            headers={"Authorization": f"Bearer diracx:legacy:{encoded}"},
        )

    async def _fetch(self) -> TokenResponse:
        tok: TokenResponse | None = None
        if self._refresh_token:
            try:
                tok = await self._refresh_grant(self._refresh_token)
            except DiracXTokenExpired:
                log.info("Refresh token for %s refused; exchanging the API key again", self.url)
        if tok is None:
            tok = await self._exchange()
        self._refresh_token = tok.refresh_token
        return tok

    async def revoke(self) -> None:
        """Forget the tokens and revoke the refresh token at DiracX
        (``POST /api/auth/revoke``, RFC 7009). Best effort: a failure is
        logged (without the token) and the tokens are forgotten anyway."""
        refresh, self._refresh_token = self._refresh_token, None
        self._access, self._expires_at = None, 0.0
        if refresh:
            await revoke_refresh_token(
                self.url, refresh, self.client_id, verify=self.verify, timeout=self.timeout
            )


class DiracXLoginRequired(DiracXTokenExpired):
    """A user's own DiracX login is missing, expired or revoked: only the user
    can renew it (the message says where)."""


class UserLoginToken(_CachedToken):
    """A user's own DiracX login, from the credentials file ``path`` (0600).

    Every fetch reads the file and refreshes with its refresh token, then
    writes the rotated pair back: so the first use proves the DiracX session
    is alive (a revoked or expired one is refused there, not at the first
    job), the holder's copy becomes the only valid one (DiracX rotates
    refresh tokens and revokes all of a user's tokens when a used one comes
    back), and a new login written to the file is taken at the next refresh.
    One holder per file: do not refresh it from two processes.
    """

    def __init__(
        self,
        url: str,
        path: str | Path,
        *,
        who: str,
        login_url: str = "",
        client_id: str = DEFAULT_CLIENT_ID,
        verify: bool | str = True,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(url, verify=verify, timeout=timeout)
        self.path = Path(path)
        self.who = who
        self.login_url = login_url
        self.client_id = client_id
        # the digest of the refresh token DiracX last refused: never presented
        # again, for DiracX takes a refused token coming back for an attack and
        # revokes every token of the user, a login made meanwhile included
        self._refused = ""

    def _required(self, what: str) -> DiracXLoginRequired:
        renew = f"; log in to DIRAC again at {self.login_url}" if self.login_url else ""
        return DiracXLoginRequired(f"the DIRAC login of {self.who} {what}{renew}", self.url)

    async def _fetch(self) -> TokenResponse:
        try:
            refresh = json.loads(self.path.read_text())["refresh_token"]
        except (FileNotFoundError, KeyError, ValueError):
            raise self._required(
                "is missing (it ends with your last cluster and at logout)"
            ) from None
        if not refresh:
            raise self._required("is missing (it ends with your last cluster and at logout)")
        digest = hashlib.sha256(refresh.encode()).hexdigest()
        if digest == self._refused:
            raise self._required("has expired or was revoked (refused before)")
        try:
            tok = await self._refresh_grant(refresh)
        except DiracXTokenExpired as exc:
            self._refused = digest
            log.info("DiracX refused the refresh token of %s: %s", self.who, exc.msg)
            raise self._required(f"has expired or was revoked ({exc.msg})") from None
        if not tok.refresh_token:
            raise DiracXError("the refresh grant returned no refresh token", self.url)
        write_credentials(self.path, tok)
        return tok

    async def revoke(self) -> None:
        """Forget the login: delete the file and revoke its refresh token at
        DiracX (best effort, as LegacyExchangeToken.revoke)."""
        self._access, self._expires_at = None, 0.0
        try:
            refresh = json.loads(self.path.read_text()).get("refresh_token")
        except (FileNotFoundError, ValueError):
            refresh = None
        self.path.unlink(missing_ok=True)
        if refresh:
            await revoke_refresh_token(
                self.url, refresh, self.client_id, verify=self.verify, timeout=self.timeout
            )


async def revoke_refresh_token(
    url: str,
    refresh_token: str,
    client_id: str = DEFAULT_CLIENT_ID,
    *,
    verify: bool | str = True,
    timeout: float = 10.0,  # noqa: ASYNC109 (httpx timeouts)
) -> bool:
    """Revoke a refresh token at DiracX (``POST /api/auth/revoke``, RFC 7009).
    Best effort: a failure is logged without the token; returns success."""
    try:
        async with httpx.AsyncClient(verify=verify, timeout=timeout) as http:
            r = await http.post(
                url.rstrip("/") + "/api/auth/revoke",
                data={"token": refresh_token, "client_id": client_id},
            )
    except httpx.HTTPError as exc:
        log.info("Revoking a refresh token at %s failed: %s", url, type(exc).__name__)
        return False
    if r.status_code != 200:
        log.info("Revoking a refresh token at %s answered %d", url, r.status_code)
        return False
    return True


def write_credentials(path: str | Path, tok: TokenResponse) -> None:
    """Write tokens in ``dirac login``'s credentials format, mode 0600, atomically."""
    path = Path(path)
    data = {
        "access_token": tok.access_token,
        "refresh_token": tok.refresh_token,
        "expires_on": int(time.time()) + int(tok.expires_in),
    }
    write_private(path, json.dumps(data))
