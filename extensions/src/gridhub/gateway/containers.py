"""Schedulers in containers of their own, outside the gateway's trust domain.

A Dask scheduler runs user code: anyone holding the cluster's credentials can
call ``client.run_on_scheduler`` (distributed no longer lets pickling be
switched off). Run as a process of the gateway it could read everything the
gateway holds: the DB and its key, the hub's service token, DiracX's API key,
every other cluster's TLS key and token. So, as dask-gateway's Kubernetes
backend does with a pod per scheduler, each cluster's scheduler is a
container started through the Docker API with nothing but its own cluster's
credentials (in its environment: no file, no volume), as an unprivileged
user, with a read-only root, no capabilities and bounded memory and PIDs, on
a network that reaches only Traefik and the gateway's API
(docs/dirac-backend.md, "Where schedulers run").

Used by every shipped deployment (hub_config/dask_gateway_config.py); the
process harness of the integration tests keeps DiracBackend's processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from dask_gateway_server.backends.db_base import Cluster
from traitlets import Dict, Integer, Unicode
from traitlets.config import LoggingConfigurable

from .backend import DiracBackend

# Inside its own container a scheduler has fixed ports (nothing else listens there)
SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787
API_PORT = 8788
# the container's own tmpfs: its only writable place (the root is read-only)
TMP = "/tmp"  # noqa: S108


class SchedulerContainers(LoggingConfigurable):
    """Where and how scheduler containers run (Docker API; docker-py in threads)."""

    image = Unicode(
        help="""Image schedulers run in: the notebook image (the graphs they
        unpickle come from its environment; already on the host for the
        notebook servers).""",
        config=True,
    )
    network = Unicode(
        help="""Docker network of the schedulers: one that reaches Traefik (by the
        public host name) and the gateway's API, and nothing else.""",
        config=True,
    )
    name_prefix = Unicode(
        "gridhub-scheduler-",
        help="Container name prefix (one deployment's schedulers share it).",
        config=True,
    )
    labels = Dict(
        help="Labels put on every scheduler container (e.g. the compose project's).",
        config=True,
    )
    user = Unicode("65534:65534", help="uid:gid schedulers run as.", config=True)
    mem_limit = Unicode("2g", help="Memory limit of one scheduler container.", config=True)
    pids_limit = Integer(512, help="PID limit of one scheduler container.", config=True)
    tmp_size = Unicode("512m", help="Size of the scheduler's /tmp (tmpfs).", config=True)

    # the label that finds a deployment's schedulers again (after a restart too)
    LABEL = "org.gridhub.scheduler-of"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._client: Any = None

    def _docker(self) -> Any:
        if self._client is None:
            import docker

            self._client = docker.from_env(timeout=60)
        return self._client

    def name(self, cluster_name: str) -> str:
        return f"{self.name_prefix}{cluster_name}"

    @staticmethod
    def host(cluster_name: str) -> str:
        """Its host name and network alias: unique on its network, and short
        enough for one DNS label (a container name with a project in front
        of a 32-character cluster name may not be)."""
        return f"scheduler-{cluster_name}"

    async def start(self, cluster_name: str, command: list[str], env: dict[str, str]) -> None:
        if not self.image or not self.network:
            raise ValueError("SchedulerContainers.image and .network must be set")
        await asyncio.to_thread(self._run, cluster_name, command, env)

    def _run(self, cluster_name: str, command: list[str], env: dict[str, str]) -> None:
        import docker.errors

        client = self._docker()
        name, host = self.name(cluster_name), self.host(cluster_name)
        # a container of the same name left by a crash before its cluster's
        # state was saved: it belongs to this cluster, start afresh
        try:
            client.containers.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass
        client.containers.run(
            self.image,
            command,
            name=name,
            hostname=host,
            entrypoint=["tini", "-g", "--"],
            environment=env,
            user=self.user,
            working_dir=TMP,
            read_only=True,
            tmpfs={TMP: f"size={self.tmp_size},mode=1777"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            pids_limit=self.pids_limit,
            # the image's own check is the gateway's: the gateway watches schedulers
            healthcheck={"test": ["NONE"]},
            mem_limit=self.mem_limit,
            network=self.network,
            networking_config={self.network: client.api.create_endpoint_config(aliases=[host])},
            labels={**self.labels, self.LABEL: self.name_prefix},
            detach=True,
        )

    async def running(self, names: Sequence[str]) -> list[bool]:
        """Which of the named containers run (one Docker call for all)."""
        up = await asyncio.to_thread(self._running_names)
        return [n in up for n in names]

    def _running_names(self) -> set[str]:
        found = self._docker().containers.list(
            filters={"label": f"{self.LABEL}={self.name_prefix}", "status": "running"}
        )
        return {c.name for c in found}

    async def remove(self, name: str) -> None:
        await asyncio.to_thread(self._remove, name)

    def _remove(self, name: str) -> None:
        import docker.errors

        try:
            self._docker().containers.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            # already being removed (e.g. by `compose down`): gone either way
            if exc.status_code != 409:
                raise


class DockerDiracBackend(DiracBackend):
    """DiracBackend with each cluster's scheduler in its own container."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.containers = SchedulerContainers(parent=self)

    def get_scheduler_command(self, cluster: Cluster) -> list[str]:
        cmd = DiracBackend.get_scheduler_command(self, cluster)
        host = self.containers.host(cluster.name)
        # its own host name: the address it reports (and Traefik and the
        # gateway dial) is one they resolve on the schedulers' network
        for flag, value in (
            ("--host", host),
            ("--port", str(SCHEDULER_PORT)),
            ("--dashboard-address", f"{host}:{DASHBOARD_PORT}"),
            ("--dg-api-address", f"{host}:{API_PORT}"),
        ):
            cmd[cmd.index(flag) + 1] = value
        return cmd

    def get_scheduler_env(self, cluster: Cluster) -> dict[str, str]:
        env = self.get_env(cluster)
        env.pop("USER", None)
        # distributed takes PEM text in place of a path: the key is in the
        # container's environment only, never in a file or a volume
        cert, key = cluster.tls_cert.decode(), cluster.tls_key.decode()
        env.update(
            {
                "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": cert,
                "DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__CERT": cert,
                "DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__KEY": key,
                "HOME": TMP,
            }
        )
        return env

    def get_env(self, cluster: Cluster) -> dict[str, str]:
        # dask-gateway's variables and the cluster's, none of the gateway's own
        # (LocalBackend would pass on its PATH, VIRTUAL_ENV...)
        from dask_gateway_server.backends.db_base import DBBackendBase

        return DBBackendBase.get_env(self, cluster)

    async def start_scheduler(self, cluster: Cluster) -> AsyncIterator[dict[str, Any]]:
        name = self.containers.name(cluster.name)
        yield {"container": name}
        await self.containers.start(
            cluster.name, self.get_scheduler_command(cluster), self.get_scheduler_env(cluster)
        )
        yield {"container": name}

    async def stop_scheduler(self, cluster: Cluster) -> None:
        name = cluster.state.get("container")
        if name:
            await self.containers.remove(name)

    async def do_check_clusters(self, clusters: Sequence[Cluster]) -> list[bool]:
        names = [c.state.get("container", "") for c in clusters]
        return await self.containers.running(names)
