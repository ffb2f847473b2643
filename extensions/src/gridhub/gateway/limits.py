"""What one user may hold at once (clusters, workers, cores) and how long
their idle clusters live, by hub group.

The deployer gives limits per JupyterHub group (``default`` for users in
none of the listed groups); a user in several listed groups gets the most
generous of each. Limits are resolved when a cluster is created (the user's
groups are known then) and kept in its config, so they hold across gateway
restarts. Workers and cores count over all the user's active clusters.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

KINDS = ("clusters", "workers", "cores", "idle_timeout")
DEFAULT = "default"


@dataclass(frozen=True)
class Limits:
    """None: no limit of that kind."""

    clusters: int | None = None
    workers: int | None = None
    cores: int | None = None
    idle_timeout: int | None = None  # seconds an idle cluster lives (0: no limit)
    source: str = ""  # the group the limits come from, for messages

    def cluster_idle_timeout(self, configured: float) -> float:
        """The idle timeout of a new cluster: the deployer's (0: never), cut to
        the group's when that is shorter."""
        if not self.idle_timeout:
            return configured
        return min(configured, self.idle_timeout) if configured else float(self.idle_timeout)

    def as_dict(self) -> dict:
        return asdict(self)


def check_table(table: Mapping[str, Mapping[str, int]]) -> None:
    """Refuse a limits table with an unknown kind or a negative limit, naming it."""
    for group, limits in table.items():
        for kind, value in limits.items():
            if kind not in KINDS:
                raise ValueError(f"limits of {group!r}: unknown limit {kind!r} (use {KINDS})")
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"limits of {group!r}: {kind} must be an integer >= 0")


def limits_for(groups: Iterable[str], table: Mapping[str, Mapping[str, int]]) -> Limits:
    """The limits of a user in ``groups``: the most generous among the listed
    groups they are in, else the ``default`` entry, else none."""
    entries = {g: table[g] for g in sorted(set(groups)) if g in table}
    if not entries:
        entries = {DEFAULT: table[DEFAULT]} if DEFAULT in table else {}
    if not entries:
        return Limits()
    merged: dict[str, int | None] = {}
    for kind in KINDS:
        values = [e.get(kind) for e in entries.values()]
        merged[kind] = None if None in values else max(v for v in values if v is not None)
    return Limits(**merged, source=", ".join(entries))


def allowed_workers(
    limits: Limits, worker_cores: float, others_workers: int, others_cores: float
) -> int | None:
    """Most workers one cluster may have, given what the user's other clusters
    hold (None: no limit)."""
    bounds = []
    if limits.workers is not None:
        bounds.append(limits.workers - others_workers)
    if limits.cores is not None:
        bounds.append(int((limits.cores - others_cores) // max(worker_cores, 1e-9)))
    return max(0, min(bounds)) if bounds else None
