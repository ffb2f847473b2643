"""The analysis cache's rules, shared by the hub's issuer, the notebook API and
the cleaner (docs/data-lake.md). Standard library only: the cleaner runs in the
lake's origin image, which has no gridhub dependencies.

Areas. A user's area is ``/cache/users/<user>/objects`` and a group's is
``/cache/groups/<group>/objects``. The last component is there on purpose:
XRootD 5.5's SciTokens plugin grants a scope path to every path that *starts
with* it as a string (component boundaries are respected only from 5.7), so a
scope ``/cache/users/al`` would also open ``/cache/users/alice``. No name holds
a ``/``, so no area path is a prefix of another's (``al/objects`` never starts
``alice/...``). Names outside :data:`SAFE_NAME` get no area at all: an area is
never granted for a name that could walk out of its folder.

Expiry. Every object ``<key>`` has a sidecar ``<key>.expires`` holding the unix
time it expires at (written by the API after the object). The cleaner takes the
earlier of that and ``mtime + maximum``, so a sidecar can never keep an object
longer than the deployer's maximum; an object without a (readable) sidecar
lives ``default`` after its last write.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

CACHE_ROOT = "/cache"
#: the last component of every area (see the module doc: prefix-free paths)
AREA_LEAF = "objects"
EXPIRES_SUFFIX = ".expires"
#: user and group names that become a path component as they are
SAFE_NAME = re.compile(r"[A-Za-z0-9_@][A-Za-z0-9._@-]{0,63}")
#: the lake's datasets that every user's token reads (the origin's layout,
#: images/xrootd): never ``/``, which would also open every cache area
DATASET_PATHS = ("/public", "/protected")
#: the deployer's defaults (settings lake_cache_default_expiry / lake_cache_max_expiry)
DEFAULT_EXPIRY = "7d"
MAX_EXPIRY = "30d"

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"\s*(\d+)\s*([smhdw]?)\s*")


def parse_duration(value: str | int | float) -> int:
    """Seconds in ``value``: an integer number of seconds, or ``<n><unit>`` with
    unit s, m, h, d or w (``90m``, ``7d``). Positive; a ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = int(value)
        if seconds != value:
            raise ValueError(f"not a whole number of seconds: {value!r}")
    else:
        m = _DURATION.fullmatch(str(value).lower())
        if not m:
            raise ValueError(
                f"not a duration: {value!r} (seconds, or a number with s, m, h, d or w: 7d)"
            )
        seconds = int(m.group(1)) * _UNITS[m.group(2) or "s"]
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


def safe_name(name: str) -> bool:
    return bool(SAFE_NAME.fullmatch(name))


def user_area(user: str) -> str:
    if not safe_name(user):
        raise ValueError(f"{user!r} is not a user name the analysis cache has an area for")
    return f"{CACHE_ROOT}/users/{user}/{AREA_LEAF}"


def group_area(group: str) -> str:
    if not safe_name(group):
        raise ValueError(f"{group!r} is not a group name the analysis cache has an area for")
    return f"{CACHE_ROOT}/groups/{group}/{AREA_LEAF}"


def areas(user: str, groups: Iterable[str]) -> list[str]:
    """The areas ``user`` (a member of ``groups``) may read and write: its own
    and its groups'; names that are not safe path components are left out."""
    out = [user_area(user)] if safe_name(user) else []
    out += [group_area(g) for g in sorted(set(groups)) if safe_name(g)]
    return out


def scopes(user: str, groups: Iterable[str]) -> str:
    """The WLCG token scope the hub's issuer gives ``user``: read the datasets;
    read, create and modify its own area and its groups' areas; nothing else."""
    parts = [f"storage.read:{p}" for p in DATASET_PATHS]
    for area in areas(user, groups):
        parts += [f"storage.read:{area}", f"storage.create:{area}", f"storage.modify:{area}"]
    return " ".join(parts)


def expires_at(mtime: float, declared: int | None, default: int, maximum: int) -> float:
    """When an object written at ``mtime`` expires: its declared expiry, but never
    later than ``mtime + maximum``; ``mtime + default`` when none was declared."""
    if declared is None:
        return mtime + min(default, maximum)
    return min(float(declared), mtime + maximum)


def parse_sidecar(text: str) -> int | None:
    """The unix time in a ``.expires`` sidecar, or None when it holds no such number."""
    try:
        value = int(text.strip())
    except ValueError:
        return None
    return value if value > 0 else None
