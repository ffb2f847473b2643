"""A Docker network per Dask cluster: a scheduler reaches no other scheduler.

A scheduler runs its user's code (``client.run_on_scheduler``). On one
network shared by every scheduler, that code could scan for the others:
their comm and API ports refuse it (mutual TLS with each cluster's own CA,
each cluster's token), but a dashboard answers anyone who reaches it (as
upstream dask-gateway serves dashboards) and shows the cluster's tasks,
workers and logs. So each cluster's scheduler has a network of its own,
internal (no route out), shared only with the members of the schedulers'
network, the *template*: Traefik (alias ``PUBLIC_HOST``: clients' and
workers' reverse paths) and the gateway (its API). They are attached to each
cluster's network under the aliases they have on the template, so a
scheduler resolves the names it always did; a member recreated (an upgrade
of Traefik or the gateway) is attached again by the next check.

Docker's default address pools give a host about 30 networks: cluster
networks take /28 subnets (a scheduler, Traefik, the gateway and room to
spare) of ``subnets`` instead, 4096 of them in a /16.

Docker calls are blocking (docker-py): run these in a thread.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable
from typing import Any

# what a cluster network's label says: the template it copies
LABEL = "org.gridhub.network-of"
PREFIX_LENGTH = 28

Members = dict[str, list[str]]  # container id -> its aliases on the template


class ClusterNetworks:
    """Create, attach and remove the networks of one deployment's clusters."""

    def __init__(
        self,
        docker: Callable[[], Any],
        template: str,
        subnets: str,
        labels: dict[str, str],
        scheduler_label: str,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self._docker = docker
        self.template = template
        self.subnets = ipaddress.ip_network(subnets)
        if self.subnets.prefixlen > PREFIX_LENGTH:
            raise ValueError(
                f"{subnets}: cluster networks need a range of /{PREFIX_LENGTH} or more"
            )
        self.labels = {**labels, LABEL: template}
        # containers with this label are schedulers, never members
        self.scheduler_label = scheduler_label
        self.log = log
        self._lock = threading.Lock()  # one subnet choice at a time
        self._members_seen: frozenset[str] | None = None
        self._created: set[str] = set()

    def name(self, cluster_name: str) -> str:
        return f"{self.template}-{cluster_name}"

    # ------------------------------------------------------------------

    def create(self, cluster_name: str) -> str:
        """The cluster's network, with the template's members attached
        (kept if it exists: a start tried again)."""
        api, name = self._docker().api, self.name(cluster_name)
        with self._lock:
            if not api.networks(names=[name]):
                self._create(name)
            self._created.add(name)
        self._attach(name, self._members())
        return name

    def _create(self, name: str) -> None:
        import docker.errors
        from docker.types import IPAMConfig, IPAMPool

        api = self._docker().api
        template = api.inspect_network(self.template)
        used = _used_subnets(api.networks())
        for subnet in self.subnets.subnets(new_prefix=PREFIX_LENGTH):
            if any(subnet.overlaps(u) for u in used):
                continue
            try:
                api.create_network(
                    name,
                    driver="bridge",
                    internal=True,
                    # the deployer's driver options (an MTU, say) as on the template
                    options=template.get("Options") or None,
                    ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=str(subnet))]),
                    labels=self.labels,
                    check_duplicate=True,
                )
                return
            except docker.errors.APIError as exc:
                # taken since we looked (another deployment on this host)
                if "overlaps" not in str(exc):
                    raise
                used.append(subnet)
        raise RuntimeError(
            f"No free /{PREFIX_LENGTH} left in {self.subnets} for the network of a new"
            " Dask cluster: stop clusters, or give GRIDHUB_GATEWAY_SCHEDULER_SUBNETS a"
            " larger range"
        )

    def _members(self) -> Members:
        """The template's containers and their aliases there (Traefik, the
        gateway), schedulers left out: a warm one is on it between its
        creation and its start."""
        members: Members = {}
        for cid in self._docker().api.inspect_network(self.template).get("Containers") or {}:
            info = self._inspect(cid)
            if info is None or self._is_scheduler(info):  # gone: being replaced
                continue
            endpoint = info["NetworkSettings"]["Networks"].get(self.template) or {}
            members[cid] = list(endpoint.get("Aliases") or [])
        return members

    def _attach(self, name: str, members: Members) -> None:
        import docker.errors

        api = self._docker().api
        there = api.inspect_network(name).get("Containers") or {}
        for cid, aliases in members.items():
            if cid in there:
                continue
            try:
                api.connect_container_to_network(cid, name, aliases=aliases)
            except docker.errors.APIError as exc:
                if exc.status_code == 404:  # a member being replaced: the next check
                    continue
                # attached meanwhile by a check or a start running beside this one
                if cid in (api.inspect_network(name).get("Containers") or {}):
                    continue
                raise
            self.log.info("Attached %s to %s", cid[:12], name)

    def sync_members(self) -> None:
        """Attach the template's members to every cluster network when they
        changed (first call, a recreated Traefik or gateway): one inspect of
        the template otherwise."""
        api = self._docker().api
        ids = frozenset(api.inspect_network(self.template).get("Containers") or {})
        if ids == self._members_seen:
            return
        members = self._members()
        for net in self._ours():
            self._attach(net["Name"], members)
        self._members_seen = ids

    # ------------------------------------------------------------------

    def remove(self, cluster_name: str) -> None:
        """Detach the members and remove the cluster's network (after its
        scheduler); gone already is fine."""
        name = self.name(cluster_name)
        with self._lock:
            self._created.discard(name)
            self._remove(name)

    def _remove(self, name: str) -> None:
        import docker.errors

        api = self._docker().api
        try:
            for cid in api.inspect_network(name).get("Containers") or {}:
                try:
                    api.disconnect_container_from_network(cid, name, force=True)
                except docker.errors.NotFound:
                    pass
            api.remove_network(name)
        except docker.errors.NotFound:
            pass

    def remove_unused(self) -> None:
        """Remove cluster networks no scheduler is on (left by clusters that
        ended while no gateway ran, e.g. `compose down`), except those this
        gateway just made for a cluster being started."""
        api = self._docker().api
        with self._lock:
            for net in self._ours():
                if net["Name"] in self._created:
                    continue
                on_it = api.inspect_network(net["Id"]).get("Containers") or {}
                if not any(self._is_scheduler(self._inspect(cid)) for cid in on_it):
                    self.log.info("Removing %s: no scheduler is on it", net["Name"])
                    self._remove(net["Name"])

    def _inspect(self, cid: str) -> dict[str, Any] | None:
        """A container's configuration; None when it is gone."""
        import docker.errors

        try:
            info: dict[str, Any] = self._docker().api.inspect_container(cid)
        except docker.errors.NotFound:
            return None
        return info

    def _is_scheduler(self, info: dict[str, Any] | None) -> bool:
        return info is not None and self.scheduler_label in (info["Config"].get("Labels") or {})

    def _ours(self) -> list[dict[str, Any]]:
        found = self._docker().api.networks(filters={"label": f"{LABEL}={self.template}"})
        return list(found)


def _used_subnets(networks: list[dict[str, Any]]) -> list[Any]:
    used = []
    for net in networks:
        for cfg in (net.get("IPAM") or {}).get("Config") or []:
            subnet = ipaddress.ip_network(cfg.get("Subnet") or "::/128", strict=False)
            if subnet.version == 4:
                used.append(subnet)
    return used
