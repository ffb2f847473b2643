"""oidc-provider-mock (the IAM stand-in) that also serves public OIDC clients.

DiracX 0.7 is a public client of its identity provider: it redeems the
authorization code with PKCE and its client id only, no secret (as its IAM
client is registered). The mock registers clients with
``token_endpoint_auth_method: none`` but its code grant accepts only secret
methods; this launcher lets that grant accept ``none`` too, then runs the
mock's own command line (same options).
"""

import runpy

from oidc_provider_mock import _app

_app.AuthorizationCodeGrant.TOKEN_ENDPOINT_AUTH_METHODS = [
    "client_secret_basic",
    "client_secret_post",
    "none",
]

if __name__ == "__main__":
    runpy.run_module("oidc_provider_mock", run_name="__main__")
