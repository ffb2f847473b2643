"""A real XRootD origin with bearer-token authorization, for the data-lake tests.

- :class:`TokenIssuer`: a small HTTPS server on loopback publishing
  ``/.well-known/openid-configuration`` and its ``jwks_uri`` (one EC P-256
  key), and signing WLCG-profile tokens (``wlcg.ver``, ``scope``
  ``storage.read:/path``) with that key.
- :class:`XRootDServer`: Debian's ``xrootd`` (5.5) on a free loopback port,
  with its own config file in a tmp dir: ``root://`` (and ``roots://``) plus
  XrdHttp ``https://`` on a second port, TLS with the session's facility
  certificate, authorization by ``libXrdAccSciTokens`` (tokens over the
  ``ztn`` security protocol or the HTTP ``Authorization`` header) chained to
  the default authorization database, which grants anonymous read of the
  paths a deployer marks public and nothing else. With ``origin=`` the same
  class starts an XCache instead: the proxy (``libXrdPss``) with the proxy
  file cache (``libXrdPfc``) in front of that origin, authorizing its own
  clients the same way and reading from the origin with its own read-only
  token (``BEARER_TOKEN_FILE`` of the cache process).

The scitokens library (libscitokens0 0.7.3) fetches the issuer's keys with
libcurl, which trusts only the system CA bundle and has no option for
another. So the xrootd process runs in its own mount namespace
(``unshare -m``) in which ``/etc/ssl/certs/ca-certificates.crt`` is the
session's bundle (system CAs plus the facility certificate, as
``FacilityTLS`` makes it); the host's trust store is untouched.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from processes import Process, facility_tls, free_port, wait_for

AUDIENCE = "https://gridhub.test/datalake"
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
#: xrootd refuses to run as root; Debian's xrootd-server creates this user
RUN_AS = "xrootd"


@pytest.fixture(scope="module")
def lake_dir() -> Iterator[Path]:
    """A folder for a module's xrootd servers, outside pytest's root-only tmp:
    the xrootd user (RUN_AS) must reach it."""
    path = Path(tempfile.mkdtemp(prefix="gridhub-lake-"))
    shutil.chown(path, RUN_AS, RUN_AS)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class TokenIssuer:
    """An OIDC-style token issuer on https://127.0.0.1:<port> (keys only)."""

    def __init__(self) -> None:
        tls = facility_tls()
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.kid = "gridhub-test-" + uuid.uuid4().hex[:8]
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.requests: list[str] = []
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid=self.kid, alg="ES256", use="sig")
        docs = {
            "/.well-known/openid-configuration": {
                "issuer": self.url,
                "jwks_uri": f"{self.url}/jwks",
            },
            "/jwks": {"keys": [jwk]},
        }
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                doc = docs.get(self.path.split("?")[0])
                body = json.dumps(doc or {"error": "not found"}).encode()
                self.send_response(200 if doc else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tls.cert, tls.key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> TokenIssuer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def token(self, scope: str, *, lifetime: int = 600, sub: str = "alice", **claims: Any) -> str:
        """A WLCG-profile access token; ``lifetime`` < 0 makes an expired one."""
        now = int(time.time())
        payload = {
            "iss": self.url,
            "sub": sub,
            "aud": AUDIENCE,
            "wlcg.ver": "1.0",
            "scope": scope,
            "iat": min(now, now + lifetime) - 60,
            "nbf": min(now, now + lifetime) - 60,
            "exp": now + lifetime,
            "jti": uuid.uuid4().hex,
            **claims,
        }
        return jwt.encode(payload, self.key, algorithm="ES256", headers={"kid": self.kid})


def cert_dir(directory: Path) -> Path:
    """An OpenSSL hashed CA directory holding the facility certificate (X509_CERT_DIR)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert = facility_tls().cert
    digest = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", str(cert)],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    shutil.copy(cert, directory / f"{digest}.0")
    return directory


class XRootDServer(Process):
    """``xrootd`` serving ``export`` on loopback; ``scitokens=False`` leaves
    the token plugin out (only the default authorization database decides)."""

    def __init__(
        self,
        work: Path,
        export: Path,
        issuer: TokenIssuer,
        *,
        public: tuple[str, ...] = ("/public",),
        scitokens: bool = True,
        authorize: bool = True,
        origin: XRootDServer | None = None,
        origin_token: str | None = None,
    ) -> None:
        tls = facility_tls()
        self.work = work
        self.user = RUN_AS
        self.port = free_port()
        self.http_port = free_port()
        for d in ("admin", "run", "cache"):
            (work / d).mkdir(parents=True, exist_ok=True)
        self.ca_dir = cert_dir(work / "certificates")
        authdb = work / "authdb"
        # anonymous (any identity): read and list public paths; nothing else
        authdb.write_text("".join(f"u * {p} rl\n" for p in public) or "u * /nonexistent rl\n")
        scitokens_cfg = work / "scitokens.cfg"
        scitokens_cfg.write_text(
            "[Global]\n"
            f"audience = {AUDIENCE}\n"
            "onmissing = passthrough\n\n"
            "[Issuer gridhub-test]\n"
            f"issuer = {issuer.url}\n"
            "base_path = /\n"
        )
        # xrootd refuses to run as root: it drops to RUN_AS, which must read
        # its key and write its dirs (the mount namespace is set up before)
        (work / "tls").mkdir(exist_ok=True)
        cert, key = work / "tls" / "server.crt", work / "tls" / "server.key"
        shutil.copy(tls.cert, cert)
        shutil.copy(tls.key, key)
        lines = [
            f"xrd.port {self.port}",
            f"xrd.protocol XrdHttp:{self.http_port} libXrdHttp.so",
            f"all.adminpath {work / 'admin'}",
            f"all.pidpath {work / 'run'}",
            "all.export /",
            f"xrd.tls {cert} {key}",
            f"xrd.tlsca certdir {self.ca_dir}",
            # tokens only over TLS: a root:// client switches to TLS at login
            "xrootd.tls capable all",
            "xrootd.seclib libXrdSec.so",
            "sec.protocol ztn",
            "sec.protocol unix",
            "http.header2cgi Authorization authz",
        ]
        if authorize:
            lines += [f"acc.authdb {authdb}", "acc.audit deny grant", "ofs.authorize 1"]
            if scitokens:
                lines += [
                    f"ofs.authlib ++ libXrdAccSciTokens.so config={scitokens_cfg}",
                    "scitokens.trace all",
                ]
        env = {"XDG_CACHE_HOME": str(work / "cache"), "HOME": str(work)}
        self.cache_dir: Path | None = None
        if origin is not None:
            # XCache: a proxy (pss) with the proxy file cache (pfc) in front of
            # ``origin``; it authorizes its clients itself and reads from the
            # origin as itself, with its own read token (ztn over TLS)
            self.cache_dir = work / "cache-data"
            self.cache_dir.mkdir()
            lines += [
                "ofs.osslib libXrdPss.so",
                "pss.cachelib libXrdPfc.so",
                f"pss.origin 127.0.0.1:{origin.port}",
                f"oss.localroot {self.cache_dir}",
                "pfc.ram 1g",  # the minimum; a ceiling, not an allocation
                "pfc.diskusage 0.90 0.95",
                "pfc.trace info",
            ]
            if origin_token is not None:
                token_file = work / "origin-token"
                token_file.touch(mode=0o600)
                token_file.write_text(origin_token + "\n")
                env["BEARER_TOKEN_FILE"] = str(token_file)
            env["X509_CERT_DIR"] = str(self.ca_dir)
        else:
            lines.append(f"oss.localroot {export}")
        self.config = work / "xrootd.cfg"
        self.config.write_text("\n".join(lines) + "\n")
        for path in [work, *work.rglob("*")]:
            shutil.chown(path, RUN_AS, RUN_AS)
        key.chmod(0o600)
        bundle = Path(str(tls.cert.parent / "ca-bundle.pem"))
        # the xrootd process (only) trusts the bundle with the test CA: see the module doc
        script = (
            f"mount --bind {bundle} {SYSTEM_BUNDLE} && "
            f"exec xrootd -R {RUN_AS} -c {self.config} -l {work / 'xrootd.log'}"
        )
        super().__init__(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
            work / "process.log",
            env=env,
            cwd=work,
        )

    @property
    def xrootd_log(self) -> Path:
        return self.work / "xrootd.log"

    def log(self, n: int = 8000) -> str:
        text = super().log(n)
        if self.xrootd_log.exists():
            text += "\n--- xrootd.log ---\n" + self.xrootd_log.read_text(errors="replace")[-n:]
        return text

    def url(self, path: str, scheme: str = "root") -> str:
        if scheme == "https":
            return f"https://127.0.0.1:{self.http_port}/{path.lstrip('/')}"
        return f"{scheme}://127.0.0.1:{self.port}//{path.lstrip('/')}"

    def start(self, timeout: float = 60) -> XRootDServer:
        super().start()
        wait_for(
            lambda: "initialization completed" in self.log(20000),
            timeout,
            "xrootd to start",
            self.log,
            alive=self.running,
        )
        return self


class HubIssuer:
    """The facility's own issuer (``gridhub.hub.storagetokens``, the app the hub
    runs as a service) on https://127.0.0.1:<port>/services/gridhub-storage,
    with its token endpoint asking a stand-in of JupyterHub's identify endpoint
    (``GET /hub/api/user``, which in JupyterHub answers every token with its
    user's name and groups) for who a hub token belongs to: ``users`` maps
    test hub tokens to ``{"name", "groups"}``."""

    def __init__(self, key_file: Path, users: dict[str, dict[str, Any]], **app: Any) -> None:
        import asyncio

        from gridhub.hub import storagetokens
        from tornado import ioloop, web

        tls, port, api_port = facility_tls(), free_port(), free_port()
        self.url = f"https://127.0.0.1:{port}/services/gridhub-storage"
        self.token_url = self.url + "/token"
        key = storagetokens.load_or_create_key(key_file)
        self.issuer = storagetokens.Issuer(self.url, AUDIENCE, key)
        known = users

        class Identify(web.RequestHandler):  # the stand-in of the hub's /hub/api/user
            def get(self) -> None:
                scheme, _, value = self.request.headers.get("Authorization", "").partition(" ")
                who = known.get(value) if scheme == "token" else None
                if who is None:
                    raise web.HTTPError(403)
                self.finish({"kind": "user", **who})

        self.app = storagetokens.make_app(
            "/services/gridhub-storage/",
            self.issuer,
            f"http://127.0.0.1:{api_port}/hub/api",  # the hub's API is plain http inside
            app.pop("lifetime", 600),
            **app,
        )
        hub_api = web.Application([(r"/hub/api/user", Identify)])
        ready, held = threading.Event(), {}

        def serve() -> None:
            asyncio.set_event_loop(asyncio.new_event_loop())
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(tls.cert, tls.key)
            self.app.listen(port, "127.0.0.1", ssl_options=ctx)
            hub_api.listen(api_port, "127.0.0.1")
            held["loop"] = ioloop.IOLoop.current()
            ready.set()
            held["loop"].start()

        self._held = held
        threading.Thread(target=serve, daemon=True).start()
        assert ready.wait(10), "the issuer did not start"

    def token(self, *args: Any, **kw: Any) -> tuple[str, int]:
        return self.issuer.token(*args, **kw)

    def stop(self) -> None:
        self._held["loop"].add_callback(self._held["loop"].stop)


def start_origin(lake_dir: Path, export: Path, issuer: Any, **kw: Any) -> XRootDServer:
    """An XRootD server of ``export`` in a folder of its own under ``lake_dir``,
    started (its log printed when it does not start)."""
    work = Path(tempfile.mkdtemp(prefix="xrootd-", dir=lake_dir))
    server = XRootDServer(work, export, issuer, **kw)
    try:
        server.start()
    except Exception:
        print(server.log())
        server.stop()
        raise
    return server
