"""The facility's Dask side as real processes: embedded DiracX, the local
site, Traefik, and dask-gateway-server with the gridhub DIRAC backend.

Use the ``dirac_facility`` fixture (module scope): ``.client(user)`` gives a
dask_gateway.Gateway whose clusters' workers are DIRAC jobs.

``hub_dirac_facility`` (module scope; import it into the test module) is the
same facility with the gateway authenticating users by their JupyterHub
tokens, as deployed: start the test hub with ``.hub_env()`` and
``.hub_config()`` (the hub's API port and the gateway service token are
fixed before either process starts).
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from dask_gateway import BasicAuth, Gateway, GatewayCluster, JupyterHubAuth
from distributed import Client
from gridhub.dirac import FINAL_STATES
from gridhub.refusals import release
from processes import (
    dask_gateway_server,
    facility_tls,
    free_port,
    gateway_config,
    kill_processes_in,
    start_traefik,
    wait_for,
)

PASSWORD = secrets.token_hex(8)


class Refusal:
    value: Exception


@contextmanager
def refused(match: str | None = None) -> Iterator[Refusal]:
    """pytest.raises for dask-gateway client calls that the gateway refuses:
    the error is released (gridhub.refusals) so that the failed cluster is
    freed in the test's thread; pytest.raises would keep its traceback and
    leave the cycle to the collector, which may run it on the client's IO
    loop and deadlock it."""
    got = Refusal()
    try:
        yield got
    except Exception as exc:
        release(exc)
        got.value = exc
    else:
        raise AssertionError("the call was not refused")
    if match is not None and not re.search(match, str(got.value)):
        raise AssertionError(f"refused, but not with {match!r}: {got.value}")


PREFIX = "/services/dask-gateway"
HUB_SERVICE = "dask-gateway"  # the gateway's JupyterHub service name


@dataclass(frozen=True)
class HubLink:
    """What a gateway that authenticates users with JupyterHub knows of the hub."""

    bind_url: str  # where the (test) hub will listen: http://127.0.0.1:<port>
    api_token: str  # the dask-gateway service's hub API token

    @property
    def api_url(self) -> str:
        return self.bind_url + "/hub/api"


def jobs_of(diracx, cluster_name: str) -> list[dict]:
    """The DIRAC jobs of a cluster (its JobGroup) as DiracX has them, by JobID."""

    async def go():
        async with diracx.client() as c:
            return await c.search(
                [{"parameter": "JobGroup", "operator": "eq", "value": cluster_name}],
                [
                    "JobID",
                    "Status",
                    "MinorStatus",
                    "ApplicationStatus",
                    "Owner",
                    "JobGroup",
                    "JobName",
                ],
                sort=[{"parameter": "JobID", "direction": "asc"}],
            )

    return asyncio.run(go())


def wait_running(diracx, cluster_name: str, n: int, log=None, *, retry=()) -> None:
    """Wait (120 s) until ``n`` of the cluster's DIRAC jobs are Running, e.g.
    once a replacement job has taken a lost worker's place."""
    wait_for(
        lambda: sum(j["Status"] == "Running" for j in jobs_of(diracx, cluster_name)) == n,
        120,
        f"{n} jobs of cluster {cluster_name} running",
        log,
        interval=0.5,
        retry=retry,
    )


@contextmanager
def running_cluster(
    gateway: Gateway, workers: int, timeout: float = 120
) -> Iterator[tuple[GatewayCluster, Client]]:
    """A new cluster of ``gateway`` and its client once ``workers`` workers
    have joined (within ``timeout`` s); the cluster is shut down on exit."""
    cluster = gateway.new_cluster()
    try:
        cluster.scale(workers)
        client = cluster.get_client()
        client.wait_for_workers(workers, timeout=timeout)
        yield cluster, client
    finally:
        cluster.shutdown()


def final_jobs(diracx, cluster_name: str, log=None, timeout: float = 60) -> list[dict]:
    """The cluster's DIRAC jobs once there are some and every one is final
    (fails with ``log`` after ``timeout`` s): no job outlives its cluster."""
    return wait_for(
        lambda: (
            (js := jobs_of(diracx, cluster_name))
            and all(j["Status"] in FINAL_STATES for j in js)
            and js
        ),
        timeout,
        f"every DIRAC job of cluster {cluster_name} final",
        log,
        interval=0.5,
        retry=(),
    )


class Facility:
    def __init__(self, work: Path, diracx, site, hub: HubLink | None = None) -> None:
        self.hub = hub
        self.site = site
        self.work = work
        self.diracx = diracx
        tls = facility_tls()
        self.cert, self.key = tls.cert, tls.key
        self.gw_port = free_port()
        self.provider_token = secrets.token_hex(16)
        self.traefik = start_traefik(
            work / "traefik",
            provider_url=f"http://127.0.0.1:{self.gw_port}/api/v1/traefik",
            provider_token=self.provider_token,
            cert=self.cert,
            key=self.key,
        )
        self.encrypt_key = base64.b64encode(os.urandom(32)).decode()
        self.users: set[str] = set()
        try:
            self.gateway = self.start_gateway()
        except BaseException:
            self.traefik.stop()
            raise

    def config(self, **overrides: object) -> str:
        values: dict[str, object] = {
            "DaskGateway__address": f"127.0.0.1:{self.gw_port}",
            "DaskGateway__backend_class": "gridhub.gateway.backend.DiracBackend",
            "DaskGateway__authenticator_class": "dask_gateway_server.auth.SimpleAuthenticator",
            "SimpleAuthenticator__password": PASSWORD,
            "Proxy__externally_managed": True,
            "Proxy__prefix": PREFIX,
            "DiracBackend__api_url": f"http://127.0.0.1:{self.gw_port}/api",
            "DiracBackend__db_url": f"sqlite:///{self.work / 'gateway.sqlite'}",
            "DiracBackend__db_encrypt_keys": [self.encrypt_key],
            "DiracBackend__stop_clusters_on_shutdown": False,
            "DiracBackend__diracx_url": self.diracx.url,
            "DiracBackend__diracx_embedded_state_dir": str(self.diracx.state_dir),
            "DiracBackend__public_dask_address": f"127.0.0.1:{self.traefik.dask_port}",
            "DiracBackend__facility_ca_file": str(self.cert),
            "DiracBackend__traefik_token": self.provider_token,
            "DiracBackend__state_dir": str(self.work / "gateway-state"),
            "DiracBackend__clusters_directory": str(self.work / "clusters"),
            "DiracBackend__worker_status_period": 1.0,
            "DiracBackend__cluster_status_period": 1.0,
            "DiracBackend__cluster_heartbeat_period": 2,
            # A busy scheduler on a loaded 2-core machine may miss a few beats.
            "DiracBackend__cluster_heartbeat_timeout": 60.0,
            "DiracClusterConfig__worker_memory": "1 G",
            "DiracClusterConfig__idle_timeout": 0.0,
        }
        if self.hub is not None:
            del values["SimpleAuthenticator__password"]
            values.update(
                {
                    "DaskGateway__authenticator_class": (
                        "dask_gateway_server.auth.JupyterHubAuthenticator"
                    ),
                    "JupyterHubAuthenticator__jupyterhub_api_url": self.hub.api_url,
                    "JupyterHubAuthenticator__jupyterhub_api_token": self.hub.api_token,
                    "JupyterHubAuthenticator__jupyterhub_service_name": HUB_SERVICE,
                    # Users' tokens die with their test hub, so teardown cannot
                    # stop clusters through the API as the user: the gateway
                    # stops whatever is left when it shuts down.
                    "DiracBackend__stop_clusters_on_shutdown": True,
                }
            )
        values.update(overrides)
        return gateway_config(**values)

    @property
    def public_url(self) -> str:
        """The gateway API as users reach it: Traefik's HTTPS, under the prefix."""
        return f"https://127.0.0.1:{self.traefik.https_port}{PREFIX}"

    def start_gateway(self):
        gateway = dask_gateway_server(
            self.work / "gateway", self.config(), f"127.0.0.1:{self.gw_port}"
        )
        # Traefik polls the gateway's routes every second; wait for the API's.
        wait_for(
            lambda: (
                httpx.get(self.public_url + "/api/health", verify=str(self.cert)).status_code == 200
            ),
            30,
            "the gateway API through Traefik",
            self.traefik.logfile,
        )
        return gateway

    @property
    def proxy_address(self) -> str:
        """Where clients reach schedulers: Traefik's Dask port (SNI routing)."""
        return f"gateway://127.0.0.1:{self.traefik.dask_port}"

    def client(self, user: str = "alice", hub_token: str | None = None) -> Gateway:
        """A client as a notebook has it: API and schedulers through Traefik.
        With JupyterHub auth, ``hub_token`` is the user's hub API token."""
        if self.hub is not None:
            if hub_token is None:
                raise ValueError("this facility's gateway takes JupyterHub tokens: pass hub_token")
            auth = JupyterHubAuth(api_token=hub_token)
        else:
            self.users.add(user)
            auth = BasicAuth(user, PASSWORD)
        return Gateway(address=self.public_url, proxy_address=self.proxy_address, auth=auth)

    def hub_env(self) -> dict[str, str]:
        """GRIDHUB_* settings for the test hub this gateway trusts."""
        assert self.hub is not None, "a facility started with a HubLink"
        return {
            "GRIDHUB_HUB_BIND_URL": self.hub.bind_url,
            "GRIDHUB_GATEWAY_URL": f"http://127.0.0.1:{self.gw_port}",
            "GRIDHUB_GATEWAY_API_TOKEN": self.hub.api_token,
            "GRIDHUB_GATEWAY_PROXY_ADDRESS": self.proxy_address,
        }

    def hub_config(self) -> str:
        """JupyterHub config for the test hub's own Traefik: send the gateway's
        public prefix (API and dashboards) on to this facility's Traefik, as
        the deployed single Traefik routes it (the hub's route for the
        dask-gateway service would reach the API without stripping the prefix)."""
        dynamic = {
            "http": {
                "routers": {
                    "gridhub-test-facility": {
                        "rule": f"PathPrefix(`{PREFIX}/`)",
                        "service": "gridhub-test-facility",
                        "priority": 100000,
                    }
                },
                "services": {
                    "gridhub-test-facility": {
                        "loadBalancer": {
                            "servers": [{"url": f"https://127.0.0.1:{self.traefik.https_port}"}],
                            "serversTransport": "gridhub-test-facility",
                        }
                    }
                },
                "serversTransports": {"gridhub-test-facility": {"rootCAs": [str(self.cert)]}},
            }
        }
        return (
            "c = get_config()  # noqa\n"
            f"c.TraefikFileProviderProxy.extra_dynamic_config = {dynamic!r}\n"
        )

    def logs(self) -> str:
        return "\n".join(
            f"--- {name} ---\n{log}"
            for name, log in [
                ("gateway", self.gateway.log()),
                ("local site", self.site.log()),
                ("traefik", self.traefik.log()),
            ]
        )

    def _active_clusters(self) -> list[str]:
        names = []
        for user in self.users:
            with self.client(user) as gateway:
                names += [c.name for c in gateway.list_clusters()]
        return names

    def stop(self) -> None:
        # Clusters outlive the gateway by design (stop_clusters_on_shutdown
        # is False): stop every one of them first, so no scheduler or DIRAC
        # job outlives the test.
        if self.gateway.running():
            for user in sorted(self.users):
                with self.client(user) as gateway:
                    for report in gateway.list_clusters():
                        gateway.stop_cluster(report.name)
            wait_for(
                lambda: not self._active_clusters(),
                60,
                "all clusters stopped",
                self.gateway.logfile,
            )
        # (with JupyterHub auth, the gateway stops what is left on SIGTERM)
        self.gateway.stop(timeout=60 if self.hub is not None else 15)
        self.traefik.stop()
        kill_processes_in(self.work / "clusters")


class HeldFacility(Facility):
    """The facility with every cluster's workers bound to HELD_SITE, which no
    stand-in serves: its jobs stay queued in DIRAC until a test starts one."""

    HELD_SITE = "LCG.Held.gridhub"

    def config(self, **overrides: object) -> str:
        return super().config(DiracClusterConfig__sites=[self.HELD_SITE], **overrides)


@pytest.fixture(scope="module")
def held_facility(tmp_path_factory, diracx_server, diracx_local_site):
    f = HeldFacility(tmp_path_factory.mktemp("held-facility"), diracx_server, diracx_local_site)
    yield f
    f.stop()


@pytest.fixture(scope="module")
def dirac_facility(tmp_path_factory, diracx_server, diracx_local_site):
    f = Facility(tmp_path_factory.mktemp("facility"), diracx_server, diracx_local_site)
    yield f
    f.stop()


@pytest.fixture(scope="module")
def hub_dirac_facility(tmp_path_factory, diracx_server, diracx_local_site):
    """The facility with JupyterHub auth, for one test hub at a time (it must
    bind ``.hub.bind_url``: pass ``.hub_env()`` to the hub)."""
    hub = HubLink(f"http://127.0.0.1:{free_port()}", secrets.token_hex(32))
    f = Facility(tmp_path_factory.mktemp("hub-facility"), diracx_server, diracx_local_site, hub)
    yield f
    f.stop()
