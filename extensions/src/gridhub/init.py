"""The compose facility's start-up, as two console scripts of the package
(in every service image that installs the gridhub wheel):

    gridhub-init          generate (once) what the facility's containers share,
                          then exit; run by the hub's entrypoint (the others wait for it)
    gridhub-access-code   print the masterclass access code (and teacher code
                          with --teacher): `docker compose exec hub gridhub-access-code`

Every secret is taken from its GRIDHUB_* setting when set, else read from the
shared secrets directory ($FACILITY_SHARED_SECRETS, the `secrets` volume; see
gridhub.hub.secrets), else generated once (load_or_create: 32 random bytes,
0600, link() so a file is never replaced). Nothing is ever regenerated on
restart or upgrade. The hub's own secrets (cookie secret, crypt key, access
codes...) are not here: the hub keeps them in its own state.

What `gridhub-init` writes:

  <shared>/gateway_api_token       the dask-gateway hub service token (hub and gateway)
  <shared>/traefik_provider_token  bearer token Traefik's HTTP provider shows the gateway
  <shared>/tls/facility.{crt,key}  self-signed certificate of the public host name,
                                   localhost and gridhub-tunnel (when no certificate is given)
  $FACILITY_CERTS_DIR/facility.crt  the public certificate, for notebooks and workers
  $FACILITY_CERTS_DIR/ca-bundle.pem system CAs + facility.crt (SSL_CERT_FILE in notebooks)
  $FACILITY_PROXY_DIR/headers.yml   Traefik's HSTS middleware (used with ACME only)
  $FACILITY_PROXY_DIR/tls.yml       Traefik's default certificate (file provider)
  $FACILITY_MONITORING_SECRETS/metrics_token  Prometheus' token (hub, gateway, Traefik metrics)
  $FACILITY_PROXY_DIR/metrics.yml   Traefik's metrics router, basic auth with that token
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

from gridhub.files import write_private
from gridhub.hub.secrets import SHARED, load_or_create, shared_dir
from gridhub.hub.settings import SettingsError, load_settings

SYSTEM_CA = Path("/etc/ssl/certs/ca-certificates.crt")
HEADERS_YML = """\
# written by gridhub-init: HSTS, attached to the HTTPS entrypoint only when
# Traefik gets a trusted certificate by ACME (images/traefik/traefik.yml.tmpl)
http:
  middlewares:
    gridhub-hsts:
      headers:
        stsSeconds: 31536000
"""


def _value(secret) -> str | None:
    return secret.get_secret_value() if secret is not None else None


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _self_signed(tls: Path, names: list[str]) -> None:
    """facility.crt/.key for `names` (first is the CN), once."""
    crt, key_path = tls / "facility.crt", tls / "facility.key"
    from cryptography import x509

    from gridhub.certificates import ORGANIZATION, self_signed

    if crt.exists() and key_path.exists():
        old = x509.load_pem_x509_certificate(crt.read_bytes())
        try:
            was_ca = old.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            was_ca = False
        ours = f"O={ORGANIZATION}" in old.subject.rfc4514_string()
        if not (was_ca and ours):
            return
        # made by an older gridhub-init as a CA: replaced once by a leaf
        print("gridhub-init: replacing the self-signed CA certificate by a leaf certificate")
    pem_crt, pem_key = self_signed(names)
    # key first: a crt without its key is never left behind
    write_private(key_path, pem_key)
    _write_atomic(crt, pem_crt, 0o644)
    print(f"gridhub-init: generated a self-signed certificate for {', '.join(names)}")


def init() -> int:
    try:
        s = load_settings()
    except SettingsError as exc:
        print(f"gridhub: {exc}", file=sys.stderr)
        return 2
    state = Path(s.state_dir)
    _take_own_secrets_back(state)
    load_or_create(state, "gateway_api_token", _value(s.gateway_api_token))
    load_or_create(state, "traefik_provider_token", _value(s.traefik_provider_token))
    metrics_token = load_or_create(state, "metrics_token", _value(s.metrics_token))
    tls = shared_dir(state) / "tls"
    tls.mkdir(mode=0o700, exist_ok=True)
    host = urlsplit(s.public_url).hostname or "localhost"
    # the hub and the gateway may start together: one of them makes the pair
    import fcntl

    with open(tls / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _self_signed(tls, [host, "localhost", "127.0.0.1", "gridhub-tunnel"])
    crt = (tls / "facility.crt").read_bytes()

    certs = Path(os.environ.get("FACILITY_CERTS_DIR", "/srv/gridhub/certs"))
    if certs.is_dir() and os.access(certs, os.W_OK):
        _write_atomic(certs / "facility.crt", crt, 0o644)
        system = SYSTEM_CA.read_bytes() if SYSTEM_CA.exists() else b""
        _write_atomic(certs / "ca-bundle.pem", system + b"\n" + crt, 0o644)
    proxy = Path(os.environ.get("FACILITY_PROXY_DIR", "/srv/gridhub/proxy"))
    if proxy.is_dir() and os.access(proxy, os.W_OK):
        # first: Traefik starts once tls.yml exists, and with ACME its HTTPS
        # entrypoint uses this middleware (HSTS only with a trusted certificate)
        _write_atomic(proxy / "headers.yml", HEADERS_YML.encode(), 0o644)
        from gridhub.hub.metrics_access import FILE, traefik_metrics_yml

        old = proxy / FILE
        text = traefik_metrics_yml(metrics_token, old.read_text() if old.is_file() else None)
        _write_atomic(old, text.encode(), 0o644)  # a bcrypt hash, not the token
        tls_yml = (
            "# written by gridhub-init: Traefik's default certificate\n"
            "tls:\n  stores:\n    default:\n      defaultCertificate:\n"
            "        certFile: /srv/gridhub/secrets/tls/facility.crt\n"
            "        keyFile: /srv/gridhub/secrets/tls/facility.key\n"
            "  options:\n    default:\n      minVersion: VersionTLS12\n"
        )
        _write_atomic(proxy / "tls.yml", tls_yml.encode(), 0o644)
    lake = Path(os.environ.get("FACILITY_LAKE_TOKENS", ""))
    if lake.name and lake.is_dir() and os.access(lake, os.W_OK):
        from gridhub.lake_metrics import verifier

        # the lake's exporter serves Prometheus' token: it gets a hash, not the token
        _write_atomic(lake / "metrics_token.sha256", f"{verifier(metrics_token)}\n".encode(), 0o644)
    share = os.environ.get("FACILITY_MASTERCLASS_SHARE")
    if share and Path(share).is_dir() and s.masterclass_notebooks_dir.is_dir():
        # the image's notebooks, copied into the volume the notebook containers
        # mount read-only (an upgrade brings new versions; homes are never touched)
        shutil.copytree(s.masterclass_notebooks_dir, share, dirs_exist_ok=True)
    return 0


# Shared by an older GridHub with every service: the hub's own secrets move
# to its own state (kept, so sessions and access codes survive the upgrade).
# (gateway_db_encrypt_key is the gateway's: it copies it, see dask_gateway_config.py)
HUB_OWN = (
    "cookie_secret",
    "crypt_key",
    "proxy_api_password",
    "metrics_token",
    "masterclass_access_code",
    "masterclass_teacher_code",
)


def _take_own_secrets_back(state: Path) -> None:
    shared, own = shared_dir(state), state / "secrets"
    if shared.resolve() == own.resolve() or not shared.is_dir():
        return
    own.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in HUB_OWN:
        assert name not in SHARED
        old = shared / name
        if not old.is_file():
            continue
        try:
            write_private(own / name, old.read_bytes(), replace=False)
        except FileExistsError:
            pass  # the hub's own copy wins
        old.unlink()


def access_code(argv: list[str]) -> int:
    from gridhub.hub.secrets import load_secrets

    try:
        s = load_settings()
    except SettingsError as exc:
        print(f"gridhub: {exc}", file=sys.stderr)
        return 2
    sec = load_secrets(s)
    if s.mode != "masterclass":
        print("This facility is in IAM mode: users log in with IAM, there is no access code.")
        return 1
    if "--teacher" in argv:
        print(sec.masterclass_teacher_code)
    else:
        print(sec.masterclass_access_code)
    return 0


def _drop_root() -> None:
    # `docker compose exec` runs as root: act as the service user, so nothing
    # in the volumes ends up owned by root
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(1000)
        os.setuid(1000)


def main() -> int:
    """gridhub-init"""
    _drop_root()
    return init()


def access_code_main() -> int:
    """gridhub-access-code [--teacher]"""
    _drop_root()
    return access_code(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
