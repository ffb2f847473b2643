"""Hub secrets: from config, else from the state directory, else generated once.

A generated secret is 32 random bytes (hex), written to ``<state_dir>/secrets/<name>``
with mode 0600 in a 0700 directory, atomically and without replacing an existing file,
so an upgrade or restart never regenerates it.

The few secrets that services share (SHARED: the gateway's hub-service token,
Traefik's provider token, and the facility certificate under ``tls/``) live in
the shared secrets directory instead: ``$FACILITY_SHARED_SECRETS`` where the
container layout gives each service its own state (the compose facility: the
`secrets` volume, written by the hub, read-only elsewhere), else the same
``<state_dir>/secrets``. Everything else stays in the state directory of the
one service that uses it. The token Prometheus scrapes with (MONITORING:
``metrics_token``, for the hub's /hub/metrics, the gateway's metrics and
Traefik's metrics entrypoint) lives in ``$FACILITY_MONITORING_SECRETS`` when
set (the compose facility's `monitoring` volume: the hub writes it, only
Prometheus and the gateway read it), else with the hub's own.
"""

from __future__ import annotations

import os
import secrets as _random
from dataclasses import dataclass
from pathlib import Path

from ..files import write_private
from .settings import Settings

SECRET_BYTES = 32


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


SHARED = frozenset({"gateway_api_token", "traefik_provider_token"})
MONITORING = frozenset({"metrics_token"})
MONITORING_ENV = "FACILITY_MONITORING_SECRETS"


def shared_dir(state_dir: Path) -> Path:
    """Where the secrets services share live (see the module)."""
    return Path(os.environ.get("FACILITY_SHARED_SECRETS") or Path(state_dir) / "secrets")


def monitoring_dir(state_dir: Path) -> Path:
    """Where the metrics token lives (see the module)."""
    return Path(os.environ.get(MONITORING_ENV) or Path(state_dir) / "secrets")


def load_or_create(state_dir: Path, name: str, configured: str | None = None, generate=None) -> str:
    """Return the secret `name`: configured value, else stored value, else a new one."""
    own = Path(state_dir) / "secrets"
    if name in MONITORING and os.environ.get(MONITORING_ENV):
        return _monitoring_secret(monitoring_dir(state_dir), own, name, configured)
    if configured:
        return configured
    directory = _private_dir(shared_dir(state_dir) if name in SHARED else own)
    return load_or_create_in(directory, name, generate)


def _monitoring_secret(directory: Path, own: Path, name: str, configured: str | None) -> str:
    """The readers (Prometheus, the gateway) find the value in the monitoring
    directory: a configured one is written there too; an older GridHub's, kept
    with the hub's own secrets, moves there (an external scraper keeps working)."""
    path = _private_dir(directory) / name
    if configured:
        if not path.is_file() or path.read_text().strip() != configured:
            write_private(path, configured + "\n")
        return configured
    old = own / name
    if not path.exists() and old.is_file() and old.read_text().strip():
        try:
            write_private(path, old.read_text(), replace=False)
        except FileExistsError:
            pass
    return load_or_create_in(directory, name)


def load_or_create_in(directory: Path, name: str, generate=None) -> str:
    """The stored value of `name` in `directory`, else a new one, written once."""
    path = directory / name
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if value:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return value
    value = generate() if generate else _random.token_hex(SECRET_BYTES)
    try:
        write_private(path, value + "\n", replace=False)
    except FileExistsError:  # another process won the race: use its value
        value = path.read_text().strip()
    return value


def _access_code() -> str:
    # typed by students from a slide: short, unambiguous characters, still 60 bits
    alphabet = "abcdefghjkmnpqrstuvwxyz23456789"
    raw = "".join(_random.choice(alphabet) for _ in range(12))
    return f"{raw[:4]}-{raw[4:8]}-{raw[8:]}"


@dataclass(frozen=True)
class HubSecrets:
    cookie_secret: str
    crypt_key: str
    proxy_api_password: str
    gateway_api_token: str
    metrics_token: str
    masterclass_access_code: str
    masterclass_teacher_code: str

    def __repr__(self) -> str:  # never print secrets by accident
        return "HubSecrets(<hidden>)"


def _value(secret) -> str | None:
    return secret.get_secret_value() if secret is not None else None


def load_secrets(settings: Settings) -> HubSecrets:
    state = settings.state_dir
    _private_dir(Path(state))
    return HubSecrets(
        cookie_secret=load_or_create(state, "cookie_secret", _value(settings.cookie_secret)),
        crypt_key=load_or_create(state, "crypt_key", _value(settings.crypt_key)),
        proxy_api_password=load_or_create(
            state, "proxy_api_password", _value(settings.proxy_api_password)
        ),
        gateway_api_token=load_or_create(
            state, "gateway_api_token", _value(settings.gateway_api_token)
        ),
        metrics_token=load_or_create(state, "metrics_token", _value(settings.metrics_token)),
        masterclass_access_code=load_or_create(
            state,
            "masterclass_access_code",
            _value(settings.masterclass_access_code),
            generate=_access_code,
        ),
        masterclass_teacher_code=load_or_create(
            state, "masterclass_teacher_code", _value(settings.masterclass_teacher_code)
        ),
    )
