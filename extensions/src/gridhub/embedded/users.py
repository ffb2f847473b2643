"""Hub users as DIRAC users of the embedded DiracX (issue 16).

Each hub user is a user of the facility's VO in the embedded CS, member of
``USER_GROUP`` (``NormalUser`` only: no JobAdministrator), so DiracX records
their jobs and sandboxes as theirs and its own policies keep users apart
(a normal user's job search is limited to their jobs; reading or changing a
job needs to own it).

* Isolation: the CS sets ``Operations/<vo>/Services/JobMonitoring/
  GlobalJobsInfo = False`` (DiracX's default, True, shows every job of the
  VO in any user's search).
* Registration: ``POST /api/gridhub/users`` on the embedded server
  (routes.py), allowed to the facility's own identity only (its token from
  the legacy-exchange API key, the credential the gateway already holds).
  The server adds the user to the CS git repository (``register_in_cs``),
  commits, and re-reads its configuration before answering, so the user's
  token can be obtained at once (DiracX caches the CS revision for 5 s).
  Idempotent; users stay in the CS, as users do in a DIRAC registry.
* Tokens: ``user_token_source`` exchanges the same API key for the user's
  token (legacy-exchange, scope ``vo:<vo> group:<USER_GROUP>``). The key
  stays with the facility (the gateway); no signing key leaves the server.

Names: DIRAC user names are kept to ``[a-z][a-z0-9_]{0,31}``. A hub name of
that form is its own DIRAC name, except the facility's user name; any other
name maps to ``<stem>-<10 hex of its SHA-256>`` where the stem is the name
lowercased with every run of other characters replaced by ``_`` (at most 24
characters, starting with a letter): ``Bob.Smith@example.org`` becomes
``bob_smith_example_org-<hash>``. Plain names contain no ``-``, so the two
forms never meet; the server also refuses a DIRAC name already held by a
different hub user (``sub`` = UUID5 of the hub name).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

USER_GROUP = "gridhub_analysis"
USER_GROUP_PROPERTIES = ["NormalUser"]
CS_FILE = "default.yml"
MAX_HUB_NAME = 255

_PLAIN = re.compile(r"[a-z][a-z0-9_]{0,31}")
_OTHER = re.compile(r"[^a-z0-9]+")
# uuid5 namespace of hub users' DIRAC subjects (fixed: subjects must be stable)
_SUB_NAMESPACE = uuid.UUID("6f1c1b8e-5a4e-4c59-9a51-0b8f2f3d7c21")


class UserNameError(ValueError):
    """A hub user name that cannot be registered (the message says why)."""


def _check_hub_name(hub_user: str) -> None:
    if not isinstance(hub_user, str) or not hub_user:
        raise UserNameError("hub user name is empty")
    if len(hub_user) > MAX_HUB_NAME:
        raise UserNameError(
            f"hub user name is {len(hub_user)} characters long (at most {MAX_HUB_NAME})"
        )


def dirac_user_name(hub_user: str, *, reserved: tuple[str, ...] = ("gridhub",)) -> str:
    """The DIRAC user name of a hub user (see the module docstring)."""
    _check_hub_name(hub_user)
    if _PLAIN.fullmatch(hub_user) and hub_user not in reserved:
        return hub_user
    stem = _OTHER.sub("_", hub_user.lower()).strip("_")
    if not stem[:1].isalpha() or not stem[:1].isascii():
        stem = "u_" + stem
    stem = stem[:24].rstrip("_")
    digest = hashlib.sha256(hub_user.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{stem}-{digest}"


def user_sub(hub_user: str) -> str:
    """The user's DIRAC subject in the embedded CS (stable, from the hub name)."""
    _check_hub_name(hub_user)
    return str(uuid.uuid5(_SUB_NAMESPACE, hub_user))


@dataclass(frozen=True)
class DiracUser:
    hub_user: str
    username: str  # DIRAC's: the jobs' Owner
    group: str
    vo: str

    @property
    def scope(self) -> str:
        return f"vo:{self.vo} group:{self.group}"


def register_in_cs(cs_dir: Path, vo: str, facility_user: str, hub_user: str) -> tuple[str, bool]:
    """Add ``hub_user`` to the CS repository at ``cs_dir`` (commit) unless it is
    there. Returns (DIRAC user name, whether the CS changed). Not thread-safe:
    the embedded server serialises its calls. UserNameError if the DIRAC name
    is held by someone else."""
    import yaml
    from diracx.core.config.schema import Config
    from git import Repo

    name = dirac_user_name(hub_user, reserved=(facility_user,))
    sub = user_sub(hub_user)
    path = Path(cs_dir) / CS_FILE
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    registry = data["Registry"][vo]
    users = registry.setdefault("Users", {})
    for other_sub, info in users.items():
        if info.get("PreferedUsername") == name and other_sub != sub:
            raise UserNameError(f"DIRAC user name {name!r} is already held by another user")
    groups = registry.setdefault("Groups", {})
    group = groups.setdefault(USER_GROUP, {"Properties": USER_GROUP_PROPERTIES, "Users": []})
    monitoring = (
        data.setdefault("Operations", {})
        .setdefault(vo, {})
        .setdefault("Services", {})
        .setdefault("JobMonitoring", {})
    )
    if sub in users and sub in group["Users"] and monitoring.get("GlobalJobsInfo") is False:
        return name, False
    # DiracX lets every user's job search see every job of the VO unless
    # GlobalJobsInfo is off (then a user's search shows only their jobs)
    monitoring["GlobalJobsInfo"] = False
    users[sub] = {"PreferedUsername": name, "Email": None}
    if sub not in group["Users"]:
        group["Users"] = [*group["Users"], sub]
    cs = Config.model_validate(data)  # never commit a CS DiracX would refuse
    path.write_text(cs.model_dump_json(by_alias=True, exclude_unset=True))
    repo = Repo(cs_dir)
    repo.index.add([CS_FILE])
    repo.index.commit(f"Register hub user as DIRAC user {name}")
    return name, True


__all__ = [
    "USER_GROUP",
    "DiracUser",
    "UserNameError",
    "dirac_user_name",
    "register_in_cs",
    "user_sub",
]
