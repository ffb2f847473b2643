"""Schedulers in containers of their own, outside the gateway's trust domain.

A Dask scheduler runs user code: anyone holding the cluster's credentials can
call ``client.run_on_scheduler`` (distributed no longer lets pickling be
switched off). Run as a process of the gateway it could read everything the
gateway holds: the DB and its key, the hub's service token, DiracX's API key,
every other cluster's TLS key and token. So, as dask-gateway's Kubernetes
backend does with a pod per scheduler, each cluster's scheduler is a
container started through the Docker API with nothing but its own cluster's
credentials (handed to it on its stdin: no file, no volume, nothing
``docker inspect`` shows), as an unprivileged user, with a read-only root, no
capabilities and bounded memory and PIDs, on a network of its own shared
only with Traefik and the gateway (cluster_networks.py; docs/dirac-backend.md,
"Where schedulers run").

Starting a container and importing the scheduler's code takes seconds, so a
few containers are started ahead (``SchedulerContainers.pool_size``): each
has imported everything and waits for its one job (scheduler_bootstrap.py).

Used by every shipped deployment (hub_config/dask_gateway_config.py); the
process harness of the integration tests keeps DiracBackend's processes.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from dask_gateway_server.backends.db_base import Cluster
from traitlets import Dict, Float, Integer, List, Unicode
from traitlets.config import LoggingConfigurable

from .backend import DiracBackend
from .cluster_networks import ClusterNetworks

# Inside its own container a scheduler has fixed ports (nothing else listens there)
SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787
API_PORT = 8788
# the container's own tmpfs: its only writable place (the root is read-only)
TMP = "/tmp"  # noqa: S108
# what a pool container's name says after the deployment's prefix
POOL_WORD = "pool-"


@dataclass(frozen=True)
class Warm:
    """A started scheduler container waiting for its one job: no credential
    and no network yet."""

    id: str
    name: str


class SchedulerContainers(LoggingConfigurable):
    """Where and how scheduler containers run (Docker API; docker-py in threads).

    Every scheduler container runs ``bootstrap_cmd`` (gridhub.gateway.
    scheduler_bootstrap), which imports the scheduler's code and waits for
    its job on stdin: the cluster's command and environment (its TLS key,
    certificate and token), written through the Docker API's attach socket,
    so no credential is in the container's configuration (``docker
    inspect``), a file, a volume or a log. ``pool_size`` of them are started
    ahead, each used for exactly one cluster; without a warm one, a cluster
    gets a container started for it (the same bootstrap, handed its job at
    once).
    """

    image = Unicode(
        help="""Image schedulers run in: the notebook image (the graphs they
        unpickle come from its environment; already on the host for the
        notebook servers).""",
        config=True,
    )
    network = Unicode(
        help="""Docker network whose members (Traefik, by the public host name,
        and the gateway) each cluster's own network gets, under the same
        aliases (cluster_networks.py); schedulers are never on it.""",
        config=True,
    )
    subnets = Unicode(
        "10.253.0.0/16",
        help="""Address range the clusters' networks take their /28 subnets
        from (Docker's default pools hold only about 30 networks).""",
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
    bootstrap_cmd = List(
        Unicode(),
        ["python", "-m", "gridhub.gateway.scheduler_bootstrap"],
        help="Command of every scheduler container: imports, then waits for its job on stdin.",
        config=True,
    )
    pool_size = Integer(
        1,
        min=0,
        help="""Scheduler containers kept started ahead (imports done, no
        credential), each used for one cluster and replaced in the
        background; 0: each cluster's container is started when it is
        created.""",
        config=True,
    )
    pool_retry_delay = Float(
        30.0, help="Seconds before the pool tries again after a failed start.", config=True
    )

    # the label that finds a deployment's schedulers again (after a restart too)
    LABEL = "org.gridhub.scheduler-of"
    # most seconds a gateway going down waits for a pool container being created
    STOP_WAIT = 20.0

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._client: Any = None
        self._pool: list[Warm] = []
        self._wake = asyncio.Event()
        self._refill: asyncio.Task[None] | None = None
        self._creating: asyncio.Future[Warm] | None = None
        self._closing = False
        self._networks: ClusterNetworks | None = None

    def _docker(self) -> Any:
        if self._client is None:
            import docker

            self._client = docker.from_env(timeout=60)
        return self._client

    def _check_configured(self) -> None:
        if not self.image or not self.network:
            raise ValueError("SchedulerContainers.image and .network must be set")

    @property
    def networks(self) -> ClusterNetworks:
        if self._networks is None:
            self._check_configured()
            self._networks = ClusterNetworks(
                self._docker,
                self.network,
                self.subnets,
                labels=dict(self.labels),
                scheduler_label=self.LABEL,
                log=self.log,
            )
        return self._networks

    def name(self, cluster_name: str) -> str:
        return f"{self.name_prefix}{cluster_name}"

    @staticmethod
    def host(cluster_name: str) -> str:
        """Its host name and network alias: unique on its network, and short
        enough for one DNS label (a container name with a project in front
        of a 32-character cluster name may not be)."""
        return f"scheduler-{cluster_name}"

    # ------------------------------------------------------------------
    # starting one cluster's scheduler

    async def start(self, cluster_name: str, command: list[str], env: dict[str, str]) -> None:
        """Run the cluster's scheduler (``command`` with ``env``) in a warm
        container when the pool has one, else in one started now; either way
        named for the cluster, with the alias ``host(cluster_name)`` on the
        cluster's own network."""
        self._check_configured()
        name, host = self.name(cluster_name), self.host(cluster_name)
        network = await asyncio.to_thread(self.networks.create, cluster_name)
        while self._pool:
            # the oldest first: the gateway's choice alone, nothing of the user's
            warm = self._pool.pop(0)
            self._wake.set()
            try:
                await asyncio.to_thread(self._take, warm, name, host, network, command, env)
            except Exception as exc:
                # gone (killed, out of memory) or Docker refused: never
                # reused, whatever it got; the next one or a cold start
                self.log.warning("Warm scheduler %s not usable (%s): removed", warm.name, exc)
                await self.remove(warm.id)
                continue
            self.log.info("Cluster %s: scheduler in warm container %s", cluster_name, name)
            return
        await asyncio.to_thread(self._cold, name, host, network, command, env)
        self.log.info("Cluster %s: scheduler in new container %s", cluster_name, name)

    def _take(
        self,
        warm: Warm,
        name: str,
        host: str,
        network: str,
        command: list[str],
        env: dict[str, str],
    ) -> None:
        client = self._docker()
        ctr = client.containers.get(warm.id)
        if ctr.status != "running":
            raise RuntimeError(f"container is {ctr.status}")
        self._remove_stale(name)
        # the cluster's name before its credentials: a container holding them
        # is always found by that name (the cluster's state), never as a pool one
        ctr.rename(name)
        # on its cluster's network only now, under the cluster's alias: the
        # address is the one a container started for the cluster has
        # (Traefik, the gateway and the scrape relay dial what it reports)
        client.api.connect_container_to_network(ctr.id, network, aliases=[host])
        self._send_job(warm.id, command, env)

    def _cold(
        self, name: str, host: str, network: str, command: list[str], env: dict[str, str]
    ) -> None:
        self._remove_stale(name)
        ctr = self._create(name, host, network)
        try:
            ctr.start()
            self._send_job(ctr.id, command, env)
        except Exception:
            self._remove(ctr.id)
            raise

    def _remove_stale(self, name: str) -> None:
        # a container of this name left by a crash before its cluster's
        # state was saved: it belongs to this cluster, start afresh
        self._remove(name)

    def _create(self, name: str, host: str | None, network: str | None = None) -> Any:
        """Create (not start) a scheduler container on ``network`` (its
        cluster's; a warm one: the template, left before it starts), with the
        alias ``host``."""
        client = self._docker()
        network = network or self.network
        return client.containers.create(
            self.image,
            list(self.bootstrap_cmd),
            name=name,
            hostname=host,
            entrypoint=["tini", "-g", "--"],
            # nothing secret here: all of this is in `docker inspect`
            environment={"HOME": TMP},
            # the job comes on stdin (only through the Docker API)
            stdin_open=True,
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
            network=network,
            networking_config={
                network: client.api.create_endpoint_config(aliases=[host] if host else [])
            },
            labels={**self.labels, self.LABEL: self.name_prefix},
        )

    def _send_job(self, container_id: str, command: list[str], env: dict[str, str]) -> None:
        """The job on the container's stdin: one line of ASCII JSON (no raw
        control byte, so never Docker's detach keys), then end of input."""
        line = json.dumps({"argv": command, "env": env}, ensure_ascii=True) + "\n"
        attached = self._docker().api.attach_socket(container_id, params={"stdin": 1, "stream": 1})
        # docker-py gives the raw socket of the upgraded HTTP connection
        raw = getattr(attached, "_sock", attached)
        try:
            raw.sendall(line.encode("ascii"))
            raw.shutdown(socket.SHUT_WR)
        finally:
            raw.close()

    # ------------------------------------------------------------------
    # the pool

    def pool_name(self) -> str:
        """A new pool container's name: random, so that nothing about it can
        be guessed or chosen before it is handed out."""
        return f"{self.name_prefix}{POOL_WORD}{secrets.token_hex(8)}"

    def _is_pool_name(self, name: str) -> bool:
        return name.startswith(f"{self.name_prefix}{POOL_WORD}")

    async def start_pool(self) -> None:
        """Remove what an earlier gateway left in its pool, then keep it filled
        (in the background). Left pool containers hold no credential, but
        the image may have changed since, and none is ever handed out twice."""
        self._check_configured()
        self._closing = False
        self._refill = asyncio.ensure_future(self._refill_loop())

    async def _refill_loop(self) -> None:
        try:
            await asyncio.to_thread(self._remove_pool_leftovers)
        except Exception as exc:
            self.log.error("Could not remove earlier pool containers: %s", exc)
        try:
            # what clusters that ended while no gateway ran left; and this
            # gateway (a new container after an upgrade) on the live ones
            await asyncio.to_thread(self.networks.remove_unused)
            await self.sync_networks()
        except Exception as exc:
            self.log.error("Could not tidy the clusters' networks: %s", exc)
        self._wake.set()
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            while len(self._pool) < self.pool_size and not self._closing:
                name = self.pool_name()
                self._creating = asyncio.ensure_future(asyncio.to_thread(self._create_warm, name))
                try:
                    # shielded: a gateway going down waits for it (stop_pool)
                    self._pool.append(await asyncio.shield(self._creating))
                except Exception as exc:
                    self.log.error(
                        "Warm scheduler %s did not start (%s); again in %.0f s",
                        name,
                        exc,
                        self.pool_retry_delay,
                    )
                    try:
                        await self.remove(name)
                    except Exception as exc2:  # Docker away: a later start removes it
                        self.log.error("Could not remove %s: %s", name, exc2)
                    await asyncio.sleep(self.pool_retry_delay)
                finally:
                    self._creating = None

    def _create_warm(self, name: str) -> Warm:
        ctr = self._create(name, None)
        # started on no network: while it waits it reaches nothing and nothing
        # reaches it, and its network interface (and alias) come with its
        # cluster (_take)
        self._docker().api.disconnect_container_from_network(ctr.id, self.network)
        ctr.start()
        self.log.info("Warm scheduler %s started", name)
        return Warm(id=ctr.id, name=name)

    def _remove_pool_leftovers(self) -> None:
        found = self._docker().containers.list(
            all=True, filters={"label": f"{self.LABEL}={self.name_prefix}"}
        )
        for ctr in found:
            if self._is_pool_name(ctr.name):
                self.log.info("Removing pool container %s of an earlier gateway", ctr.name)
                self._remove(ctr.id)

    async def stop_pool(self) -> None:
        """The gateway goes: its warm containers go too (a new gateway would
        remove them anyway); none is left half-made for `compose down`."""
        self._closing = True
        if self._refill is not None:
            self._refill.cancel()
        if self._creating is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._creating), self.STOP_WAIT)
            except Exception as exc:  # removed below by name anyway
                self.log.debug("Pool container being created: %s", exc)
        self._pool.clear()
        try:
            await asyncio.to_thread(self._remove_pool_leftovers)
        except Exception as exc:
            self.log.warning("Could not remove pool containers: %s", exc)

    # ------------------------------------------------------------------
    # watching and removing

    async def running(self, names: Sequence[str]) -> list[bool]:
        """Which of the named containers run (one Docker call for all)."""
        up = await asyncio.to_thread(self._running_names)
        return [n in up for n in names]

    def _running_names(self) -> set[str]:
        found = self._docker().containers.list(
            filters={"label": f"{self.LABEL}={self.name_prefix}", "status": "running"}
        )
        return {c.name for c in found}

    async def sync_networks(self) -> None:
        """Traefik and the gateway on every cluster's network (again, when
        one of them was recreated)."""
        await asyncio.to_thread(self.networks.sync_members)

    async def remove_network(self, cluster_name: str) -> None:
        await asyncio.to_thread(self.networks.remove, cluster_name)

    async def remove(self, name: str) -> None:
        await asyncio.to_thread(self._remove, name)

    def _remove(self, name: str) -> None:
        """Remove a container by name or id; gone already is fine."""
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

    async def setup(self, app: Any) -> None:
        await super().setup(app)
        await self.containers.start_pool()

    async def cleanup(self) -> None:
        await self.containers.stop_pool()
        await super().cleanup()

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
        # scheduler's environment only (handed over on its stdin), never in a
        # file, a volume or the container's configuration
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
        # the name is the cluster's, warm container or not (a warm one is
        # renamed before it gets the credentials): the reconcile loop, stop
        # and a restarted gateway find it by the state
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
        await self.containers.remove_network(cluster.name)

    async def do_check_clusters(self, clusters: Sequence[Cluster]) -> list[bool]:
        try:
            await self.containers.sync_networks()
        except Exception as exc:  # Docker busy: the next check tries again
            self.log.warning("Could not check the clusters' networks: %s", exc)
        names = [c.state.get("container", "") for c in clusters]
        return await self.containers.running(names)
