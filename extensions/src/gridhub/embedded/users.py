"""Hub users as DIRAC users of the embedded DiracX (issue 16).

Each hub user is a user of the facility's VO in the embedded CS, member of
the DIRAC group their hub groups map to (``embedded_group``: the deployer's
``GRIDHUB_DIRACX_GROUPS``, else ``EMBEDDED_GROUPS``: masterclass students in
``gridhub_class``, everyone else in ``USER_GROUP``). Every such group has
``NormalUser`` only (no JobAdministrator), so DiracX records their jobs and
sandboxes as theirs, ``OwnerGroup`` says which group, and its own policies
keep users apart (a normal user's job search is limited to their jobs;
reading or changing a job needs to own it).

* Isolation: the CS sets ``Operations/<vo>/Services/JobMonitoring/
  GlobalJobsInfo = False`` (DiracX's default, True, shows every job of the
  VO in any user's search).
* Registration: ``POST /api/gridhub/users`` on the embedded server
  (routes.py), allowed to the facility's own identity only (its token from
  the legacy-exchange API key, the credential the gateway already holds).
  The server adds the user to the CS git repository (``register_in_cs``),
  in the group asked for (created with ``NormalUser`` alone when missing; a
  group with any other property, the facility's among them, is refused),
  commits, and re-reads its configuration before answering, so the user's
  token can be obtained at once (DiracX caches the CS revision for 5 s).
  Idempotent; users stay in the CS and in every group they were put in, as
  users do in a DIRAC registry (only the facility obtains their tokens, for
  the group of the cluster at hand).
* Tokens: ``user_token_source`` exchanges the same API key for the user's
  token (legacy-exchange, scope ``vo:<vo> group:<group>``). The key stays
  with the facility (the gateway); no signing key leaves the server.

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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..dirac.userlogin import DEFAULT_KEY, dirac_group

if TYPE_CHECKING:
    from . import Facility

USER_GROUP = "gridhub_analysis"
CLASS_GROUP = "gridhub_class"
USER_GROUP_PROPERTIES = ["NormalUser"]
#: GRIDHUB_DIRACX_GROUPS when the deployer sets none (embedded DiracX): the
#: masterclass students (hub group ``class``) apart from everyone else
EMBEDDED_GROUPS = {"class": CLASS_GROUP, DEFAULT_KEY: USER_GROUP}
CS_FILE = "default.yml"
MAX_HUB_NAME = 255

_PLAIN = re.compile(r"[a-z][a-z0-9_]{0,31}")
# DIRAC group names: <vo>_<role> by convention; nothing that splits a scope
_GROUP = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_OTHER = re.compile(r"[^a-z0-9]+")
# uuid5 namespace of hub users' DIRAC subjects (fixed: subjects must be stable)
_SUB_NAMESPACE = uuid.UUID("6f1c1b8e-5a4e-4c59-9a51-0b8f2f3d7c21")


class UserNameError(ValueError):
    """A hub user name that cannot be registered (the message says why)."""


class GroupError(ValueError):
    """A DIRAC group hub users cannot be put in (the message names it and its source)."""


def check_group(group: object, *, reserved: str, where: str) -> str:
    """``group`` if hub users may be put in it: a DIRAC group name, not the
    facility's own (``reserved``). GroupError naming it and ``where`` it came
    from otherwise."""
    if not isinstance(group, str) or not _GROUP.fullmatch(group):
        raise GroupError(
            f"{where}: {group!r} is not a DIRAC group name (a letter, then letters,"
            " digits, '_' or '-'; at most 64 characters)"
        )
    if group == reserved:
        raise GroupError(
            f"{where}: {group!r} is the facility's own DIRAC group, never given to users"
        )
    return group


def embedded_group(hub_groups: Iterable[str], groups: Mapping[str, str]) -> str:
    """The DIRAC group of a user in ``hub_groups`` with the embedded DiracX:
    ``groups`` (GRIDHUB_DIRACX_GROUPS; ``EMBEDDED_GROUPS`` when empty) as for
    an external DiracX (first listed group the user is in, else "default"),
    else ``USER_GROUP`` (never the VO's DefaultGroup: the facility's)."""
    return dirac_group(hub_groups, groups or EMBEDDED_GROUPS) or USER_GROUP


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


def register_in_cs(
    cs_dir: Path, facility: Facility, hub_user: str, group: str = USER_GROUP
) -> tuple[str, bool]:
    """Add ``hub_user`` to the CS repository at ``cs_dir`` in ``group``
    (created with NormalUser alone when missing; commit) unless it is there.
    Returns (DIRAC user name, whether the CS changed). Not thread-safe: the
    embedded server serialises its calls. UserNameError if the DIRAC name is
    held by someone else; GroupError for a group hub users may not join."""
    import yaml
    from diracx.core.config.schema import Config
    from git import Repo

    vo = facility.vo
    check_group(group, reserved=facility.group, where="registration request")
    name = dirac_user_name(hub_user, reserved=(facility.user,))
    sub = user_sub(hub_user)
    path = Path(cs_dir) / CS_FILE
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    registry = data["Registry"][vo]
    users = registry.setdefault("Users", {})
    for other_sub, info in users.items():
        if info.get("PreferedUsername") == name and other_sub != sub:
            raise UserNameError(f"DIRAC user name {name!r} is already held by another user")
    groups = registry.setdefault("Groups", {})
    entry = groups.setdefault(group, {"Properties": list(USER_GROUP_PROPERTIES), "Users": []})
    # DiracX gives a token any property of any group its user is in (when
    # asked): a hub user's groups must never hold more than NormalUser
    if sorted(entry.get("Properties", [])) != USER_GROUP_PROPERTIES:
        raise GroupError(
            f"registration request: DIRAC group {group!r} has the properties"
            f" {sorted(entry.get('Properties', []))}; hub users join only groups with"
            f" {USER_GROUP_PROPERTIES} alone"
        )
    monitoring = (
        data.setdefault("Operations", {})
        .setdefault(vo, {})
        .setdefault("Services", {})
        .setdefault("JobMonitoring", {})
    )
    if sub in users and sub in entry["Users"] and monitoring.get("GlobalJobsInfo") is False:
        return name, False
    # DiracX lets every user's job search see every job of the VO unless
    # GlobalJobsInfo is off (then a user's search shows only their jobs)
    monitoring["GlobalJobsInfo"] = False
    users[sub] = {"PreferedUsername": name, "Email": None}
    if sub not in entry["Users"]:
        entry["Users"] = [*entry["Users"], sub]
    cs = Config.model_validate(data)  # never commit a CS DiracX would refuse
    path.write_text(cs.model_dump_json(by_alias=True, exclude_unset=True))
    repo = Repo(cs_dir)
    repo.index.add([CS_FILE])
    repo.index.commit(f"Register hub user as DIRAC user {name} in group {group}")
    return name, True


__all__ = [
    "CLASS_GROUP",
    "EMBEDDED_GROUPS",
    "USER_GROUP",
    "DiracUser",
    "GroupError",
    "UserNameError",
    "check_group",
    "dirac_user_name",
    "embedded_group",
    "register_in_cs",
    "user_sub",
]
