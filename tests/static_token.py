"""A fixed access token for tests (unit and integration tiers).

It satisfies gridhub.dirac's TokenSource; the package itself always needs a
token that renews (RefreshingToken, LegacyExchangeToken), so this lives here.
"""

from __future__ import annotations


class StaticToken:
    """A fixed access token; ``refresh`` cannot renew it."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "StaticToken(<hidden>)"

    async def access_token(self) -> str:
        return self._token

    async def refresh(self) -> str:
        return self._token
