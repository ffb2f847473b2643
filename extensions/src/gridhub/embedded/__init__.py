"""The embedded DIRAC: a real DiracX 0.7 server on one machine.

``python -m gridhub.embedded --state-dir DIR --host 127.0.0.1 --port PORT``
(also the ``gridhub-embedded-dirac`` script) runs DiracX's own FastAPI app
(``diracx.testing.routers.create_app``, i.e. ``diracx.routers.create_app``
with job parameters kept in sqlite instead of OpenSearch) under uvicorn, with:

* sqlite databases on disk in ``DIR/db/`` (JobDB, JobLoggingDB, AuthDB, ...);
* a sandbox store: moto's S3 server in-process, behind a gate that answers
  only requests signed with the store's credential (``DIR/s3-credentials``,
  0600: DiracX signs, and hands out presigned URLs) and refuses moto's
  ``/moto-api/`` (see store.py); moto keeps objects in memory, so its
  recorder logs every request to ``DIR/sandboxes.moto`` (0600) and a restart
  replays it: sandboxes, like jobs, their JDLs and statuses, survive a restart;
* a DIRAC configuration git repository in ``DIR/cs`` with one VO
  ``gridhub``, a group ``gridhub_user`` (NormalUser, JobAdministrator) and
  the facility user ``gridhub``; hub users are added on the facility's
  request to the DIRAC group their hub groups map to (``gridhub_analysis``,
  ``gridhub_class`` for masterclass students by default; NormalUser only;
  users.py).

The facility's identity: DiracX 0.7's ``GET /api/auth/legacy-exchange``
turns an API key into access+refresh tokens for any user of the CS (the
server knows only the key's SHA-256, ``DIRACX_LEGACY_EXCHANGE_HASHED_API_KEY``).
The key is generated once into ``DIR/legacy-api-key`` (0600) and
``facility_token_source(DIR, url)`` uses it; ``register_user`` and
``user_token_source`` give each hub user their own DIRAC identity and token
the same way.  No token is minted locally.

Everything in DIR is generated on first start only (DIR 0700, secrets 0600)
and reused on every restart.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..dirac.tokens import LegacyExchangeToken
from ..files import write_private
from .users import USER_GROUP, DiracUser, UserNameError, dirac_user_name

if TYPE_CHECKING:
    from ..dirac import DiracXClient

VO = "gridhub"
GROUP = "gridhub_user"
FACILITY_USER = "gridhub"
GROUP_PROPERTIES = ["NormalUser", "JobAdministrator"]
BUCKET = "sandboxes"

SIGNING_KEY = "signing-key.jwks"
STATE_KEY = "state-key"
API_KEY = "legacy-api-key"
FACILITY = "facility.json"
CS_DIR = "cs"
DB_DIR = "db"
SERVER_INFO = "server.json"
S3_RECORDING = "sandboxes.moto"
S3_CREDENTIALS = "s3-credentials"


@dataclass(frozen=True)
class Facility:
    vo: str
    group: str
    user: str
    sub: str

    @property
    def scope(self) -> str:
        return f"vo:{self.vo} group:{self.group}"


def _config(facility: Facility) -> dict:
    """The minimal DIRAC CS (same shape as diracx.testing.utils.with_config_repo)."""
    db = {"DBName": "gridhub", "Host": "localhost", "Port": 0}
    return {
        "DIRAC": {},
        "Registry": {
            facility.vo: {
                "DefaultGroup": facility.group,
                "DefaultProxyLifeTime": 432000,
                "DefaultStorageQuota": 2000,
                # No IdP in the embedded setup: users come in by legacy exchange.
                "IdP": {"URL": "https://idp.invalid", "ClientID": "gridhub-embedded"},
                "Users": {facility.sub: {"PreferedUsername": facility.user, "Email": None}},
                "Groups": {
                    facility.group: {
                        "Properties": GROUP_PROPERTIES,
                        "Users": [facility.sub],
                    }
                },
            }
        },
        # a user's job search shows only their jobs (users.py)
        "Operations": {facility.vo: {"Services": {"JobMonitoring": {"GlobalJobsInfo": False}}}},
        "Systems": {
            "WorkloadManagement": {
                "Databases": {
                    "JobDB": {**db, "MaxRescheduling": 3},
                    "JobLoggingDB": db,
                    "PilotAgentsDB": db,
                    "SandboxMetadataDB": db,
                    "TaskQueueDB": db,
                    "ElasticJobParametersDB": db,
                    "VirtualMachineDB": db,
                }
            }
        },
    }


def ensure_state(state_dir: str | Path) -> Path:
    """Create DIR's keys, CS repository and DB directory if missing; never
    regenerate what exists.  Returns the resolved directory."""
    d = Path(state_dir).resolve()
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    (d / DB_DIR).mkdir(exist_ok=True)

    if not (d / SIGNING_KEY).exists():
        from joserfc.jwk import KeySet, OKPKey

        key = OKPKey.generate_key(
            parameters={"key_ops": ["sign", "verify"], "alg": "Ed25519", "kid": uuid.uuid4().hex}
        )
        write_private(
            d / SIGNING_KEY, json.dumps(KeySet([key]).as_dict(private=True)).encode(), replace=False
        )
    if not (d / STATE_KEY).exists():
        from cryptography.fernet import Fernet

        write_private(d / STATE_KEY, Fernet.generate_key(), replace=False)
    if not (d / API_KEY).exists():
        write_private(d / API_KEY, base64.urlsafe_b64encode(secrets.token_bytes(32)), replace=False)
    if not (d / S3_CREDENTIALS).exists():
        creds = {
            "access_key_id": "GRIDHUB" + secrets.token_hex(8).upper(),
            "secret_access_key": secrets.token_urlsafe(30),
        }
        write_private(d / S3_CREDENTIALS, json.dumps(creds), replace=False)
    if not (d / FACILITY).exists():
        fac = Facility(VO, GROUP, FACILITY_USER, str(uuid.uuid4()))
        (d / FACILITY).write_text(json.dumps(fac.__dict__, indent=1))
    if not (d / CS_DIR / ".git").exists():
        _make_cs_repo(d / CS_DIR, load_facility(d))
    return d


def _make_cs_repo(path: Path, facility: Facility) -> None:
    from diracx.core.config.schema import Config
    from git import Repo

    path.mkdir(exist_ok=True)
    repo = Repo.init(path, initial_branch="master")
    cs = Config.model_validate(_config(facility))
    (path / "default.yml").write_text(cs.model_dump_json(by_alias=True, exclude_unset=True))
    repo.index.add(["default.yml"])
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "gridhub-embedded")
        cw.set_value("user", "email", "gridhub-embedded@localhost")
    repo.index.commit("GridHub embedded DIRAC configuration")


def load_facility(state_dir: str | Path) -> Facility:
    return Facility(**json.loads((Path(state_dir) / FACILITY).read_text()))


def api_key(state_dir: str | Path) -> bytes:
    """The raw legacy-exchange API key (secret)."""
    return base64.urlsafe_b64decode((Path(state_dir) / API_KEY).read_bytes().strip())


def hashed_api_key(state_dir: str | Path) -> str:
    return hashlib.sha256(api_key(state_dir)).hexdigest()


def facility_token_source(
    state_dir: str | Path, url: str, *, verify: bool | str = True
) -> LegacyExchangeToken:
    """Tokens for the facility user of the embedded DiracX at ``url``, via
    DiracX's legacy-exchange endpoint and the API key kept in ``state_dir``."""
    fac = load_facility(state_dir)
    return LegacyExchangeToken(url, api_key(state_dir), fac.user, fac.scope, verify=verify)


def user_token_source(
    state_dir: str | Path,
    url: str,
    hub_user: str,
    *,
    group: str = USER_GROUP,
    verify: bool | str = True,
) -> LegacyExchangeToken:
    """Tokens of a hub user (registered in ``group`` by ``register_user``) for
    that group (the job's OwnerGroup), from the same API key as the facility's."""
    fac = load_facility(state_dir)
    user = DiracUser(hub_user, dirac_user_name(hub_user, reserved=(fac.user,)), group, fac.vo)
    return LegacyExchangeToken(url, api_key(state_dir), user.username, user.scope, verify=verify)


async def register_user(
    facility: DiracXClient, hub_user: str, group: str = USER_GROUP
) -> DiracUser:
    """Make ``hub_user`` a DIRAC user of the embedded DiracX in ``group``
    (idempotent), ``facility`` being a client with the facility's identity.
    UserNameError for a name or group that cannot be registered (the
    server's reason)."""
    from ..dirac import DiracXError

    dirac_user_name(hub_user)  # refuse an empty or over-long name here
    try:
        got = await facility.call(
            "POST", "/api/gridhub/users", json={"hub_user": hub_user, "group": group}
        )
    except DiracXError as exc:
        if "answered 422" in exc.msg:
            raise UserNameError(exc.msg) from None
        raise
    return DiracUser(hub_user, str(got["username"]), str(got["group"]), str(got["vo"]))


def store_credentials(state_dir: str | Path) -> tuple[str, str]:
    """(access key id, secret) of the sandbox store: DiracX's, nobody else's."""
    creds = json.loads((Path(state_dir) / S3_CREDENTIALS).read_text())
    return creds["access_key_id"], creds["secret_access_key"]


def server_info(state_dir: str | Path) -> dict:
    """What the running server wrote to DIR/server.json (url, s3_url, pid)."""
    return json.loads((Path(state_dir) / SERVER_INFO).read_text())


__all__ = [
    "API_KEY",
    "FACILITY_USER",
    "GROUP",
    "USER_GROUP",
    "VO",
    "DiracUser",
    "Facility",
    "UserNameError",
    "api_key",
    "dirac_user_name",
    "ensure_state",
    "facility_token_source",
    "hashed_api_key",
    "load_facility",
    "register_user",
    "server_info",
    "store_credentials",
    "user_token_source",
]
