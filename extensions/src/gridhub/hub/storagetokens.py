"""The facility's storage-token issuer: a hub-managed service (docs/data-lake.md).

    GET  <prefix>.well-known/openid-configuration   anyone: issuer and jwks_uri
    GET  <prefix>jwks                               anyone: the public key
    POST <prefix>token    Authorization: token <a user's JupyterHub token>
         -> {"access_token", "expires_at", "scope", "cache"}: a WLCG token that
            reads the lake's datasets and reads and writes the analysis-cache
            areas of the user and of its JupyterHub groups (scopes derived by
            gridhub.cachepolicy.scopes from what the hub says of the caller,
            never from the request); it expires after ``--lifetime`` seconds.
            ``cache``: the areas and the deployer's default and maximum expiry

The XRootD origin trusts this issuer (its SciTokens config names
``<public URL>/services/gridhub-storage``; it fetches the keys through Traefik
with the facility certificate). The signing key is made once in the hub's
state (0600) and never leaves this process: users, their schedulers and
workers only ever hold tokens it signed. With ``--cache-token-file`` the
service also keeps the XCache's own read token there (rewritten every
``--cache-token-every`` seconds, 0600: the XRootD client reads a token only
from a file no one else may read; the cache runs as the same uid), so the cache
reads the origin as itself, never with a user's token.

Tokens are never logged: a line names the user, the scope and the expiry.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tornado import ioloop, web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from gridhub import cachepolicy
from gridhub.files import write_private

from .service import serve

log = logging.getLogger("gridhub.storagetokens")

#: what the XCache's token may do: read the datasets (never the analysis cache,
#: whose objects change and expire: the cache must not keep copies of them)
READ_SCOPE = " ".join(f"storage.read:{p}" for p in cachepolicy.DATASET_PATHS)
DEFAULT_LIFETIME = 3600
CACHE_DEFAULT_EXPIRY = cachepolicy.DEFAULT_EXPIRY
CACHE_MAX_EXPIRY = cachepolicy.MAX_EXPIRY
CACHE_TOKEN_EVERY = 900


def load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The issuer's EC P-256 key, made once (0600) and kept across restarts."""
    if not path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            write_private(path, pem, replace=False)
        except FileExistsError:
            pass  # another start won the race: use its key
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise SystemExit(f"gridhub-storage: {path} is not an EC private key")
    return loaded


class Issuer:
    """Signs WLCG-profile read tokens with one key; publishes its public half."""

    def __init__(self, url: str, audience: str, key: ec.EllipticCurvePrivateKey) -> None:
        self.url = url.rstrip("/")
        self.audience = audience
        self.key = key
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        # the key id follows the key: a new key is never taken for a cached old one
        self.kid = (
            "gridhub-"
            + jwt.utils.base64url_encode(json.dumps(public, sort_keys=True).encode()).decode()[-16:]
        )
        public.update(kid=self.kid, alg="ES256", use="sig")
        self.jwks = {"keys": [public]}
        self.discovery = {"issuer": self.url, "jwks_uri": f"{self.url}/jwks"}

    def token(self, sub: str, lifetime: int, scope: str = READ_SCOPE) -> tuple[str, int]:
        now = int(time.time())
        claims: dict[str, str | int] = {
            "iss": self.url,
            "sub": sub,
            "aud": self.audience,
            "wlcg.ver": "1.0",
            "scope": scope,
            "iat": now,
            "nbf": now - 60,  # clocks of the readers may lag a little
            "exp": now + lifetime,
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": self.kid})
        return token, now + lifetime


class _Base(web.RequestHandler):
    def initialize(
        self,
        issuer: Issuer,
        api_url: str = "",
        lifetime: int = 0,
        cache: dict | None = None,
        no_area_groups: frozenset[str] = frozenset(),
    ) -> None:
        self.issuer = issuer
        self.api_url = api_url
        self.lifetime = lifetime
        self.cache = cache or {}
        self.no_area_groups = no_area_groups

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")


class DiscoveryHandler(_Base):
    def get(self) -> None:
        self.finish(self.issuer.discovery)


class JWKSHandler(_Base):
    def get(self) -> None:
        self.finish(self.issuer.jwks)


class TokenHandler(_Base):
    async def post(self) -> None:
        header = self.request.headers.get("Authorization", "")
        scheme, _, caller = header.partition(" ")
        if scheme.lower() not in ("token", "bearer") or not caller.strip():
            raise web.HTTPError(401, "a JupyterHub token of a user is required")
        request = HTTPRequest(
            self.api_url + "/user",
            headers={"Authorization": f"token {caller.strip()}"},
            request_timeout=20,
        )
        try:
            who = json.loads((await AsyncHTTPClient().fetch(request)).body)
        except HTTPClientError as exc:
            raise web.HTTPError(403 if exc.code in (401, 403) else 502) from None
        if who.get("kind") != "user":
            raise web.HTTPError(403, "storage tokens are for users")
        # the hub's answer names the user and its groups (JupyterHub's identify
        # scopes give every token read:users:groups of its own user)
        name = who["name"]
        groups = [str(g) for g in who.get("groups") or [] if g not in self.no_area_groups]
        scope = cachepolicy.scopes(name, groups)
        token, expires = self.issuer.token(name, self.lifetime, scope)
        log.info("storage token for %s (scope %s) until %s", name, scope, expires)
        cache = {**self.cache, "areas": cachepolicy.areas(name, groups)}
        self.set_header("Content-Type", "application/json")
        self.finish(
            json.dumps(
                {"access_token": token, "expires_at": expires, "scope": scope, "cache": cache}
            )
        )


class HealthHandler(web.RequestHandler):
    def get(self) -> None:
        self.finish({"ok": True})


def make_app(
    prefix: str,
    issuer: Issuer,
    api_url: str,
    lifetime: int,
    cache_expiry: tuple[str, str] = (CACHE_DEFAULT_EXPIRY, CACHE_MAX_EXPIRY),
    no_area_groups: Iterable[str] = (),
) -> web.Application:
    """`no_area_groups`: hub groups that are not a shared area of the analysis
    cache (the masterclass's class: every student, strangers to each other)."""
    prefix = "/" + prefix.strip("/") + "/"
    default, maximum = (cachepolicy.parse_duration(v) for v in cache_expiry)
    cache = {"default_expiry": default, "max_expiry": maximum}
    args = {
        "issuer": issuer,
        "api_url": api_url.rstrip("/"),
        "lifetime": lifetime,
        "cache": cache,
        "no_area_groups": frozenset(no_area_groups),
    }
    return web.Application(
        [
            (prefix + ".well-known/openid-configuration", DiscoveryHandler, {"issuer": issuer}),
            (prefix + "jwks", JWKSHandler, {"issuer": issuer}),
            (prefix + "token", TokenHandler, args),
            (prefix + "health", HealthHandler),
        ]
    )


def write_cache_token(issuer: Issuer, path: Path, every: int) -> None:
    """The XCache's own read token; valid for three rewrites (a late one is harmless)."""
    token, expires = issuer.token("xcache", 3 * every, READ_SCOPE)
    write_private(path, token + "\n")
    log.info("cache token in %s until %s", path, expires)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="gridhub-storage", description=__doc__.splitlines()[0])
    ap.add_argument("--issuer", required=True, help="this issuer's public URL")
    ap.add_argument("--audience", required=True, help="the audience the storage accepts")
    ap.add_argument("--key-file", type=Path, required=True, help="signing key (made once)")
    ap.add_argument("--lifetime", type=int, default=DEFAULT_LIFETIME, help="users' tokens (s)")
    ap.add_argument("--cache-token-file", type=Path, help="keep the XCache's token here")
    ap.add_argument("--cache-token-every", type=int, default=CACHE_TOKEN_EVERY)
    ap.add_argument("--cache-default-expiry", default=CACHE_DEFAULT_EXPIRY, help="(7d)")
    ap.add_argument("--cache-max-expiry", default=CACHE_MAX_EXPIRY, help="(30d)")
    ap.add_argument(
        "--no-area-group",
        action="append",
        default=[],
        help="a hub group that gets no shared analysis-cache area (repeatable)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(name)s] %(message)s")
    issuer = Issuer(args.issuer, args.audience, load_or_create_key(args.key_file))
    app = make_app(
        os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/gridhub-storage/"),
        issuer,
        os.environ["JUPYTERHUB_API_URL"],
        args.lifetime,
        (args.cache_default_expiry, args.cache_max_expiry),
        args.no_area_group,
    )
    log.info("storage-token issuer %s on %s", issuer.url, os.environ["JUPYTERHUB_SERVICE_URL"])
    if args.cache_token_file:
        path, every = args.cache_token_file, args.cache_token_every
        write_cache_token(issuer, path, every)
        renew = ioloop.PeriodicCallback(lambda: write_cache_token(issuer, path, every), every * 1e3)
        renew.start()
    serve(app)


if __name__ == "__main__":
    main()
