"""A dask-gateway backend whose workers are DIRAC grid jobs.

The scheduler runs at the facility, one per cluster with the cluster's own
TLS credentials: a process of the gateway here (as dask-gateway's
LocalBackend runs it, for tests and a single trusted user), a container of its
own in every shipped deployment (containers.DockerDiracBackend). Each
worker is one DIRAC job submitted to DiracX over HTTP. Worker nodes have no
public address: workers dial the scheduler through Traefik
(``gateway://<public>/<cluster>``, TLS passthrough by SNI) and open a reverse
path back (``gridhub-worker``) so that the scheduler and the other workers
can reach them.

State lives in dask-gateway's database (``cluster.state`` / ``worker.state``
hold the sandbox and the DIRAC job id), so a restarted gateway finds its
clusters and jobs again through the DB backend's reconcile loop.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from dask_gateway_server import options as opts
from dask_gateway_server.backends.base import PublicException
from dask_gateway_server.backends.db_base import Cluster, DBBackendBase, JobStatus, Worker
from dask_gateway_server.backends.local import LocalClusterConfig, UnsafeLocalBackend
from dask_gateway_server.models import ClusterStatus
from dask_gateway_server.routes import api_handler
from dask_gateway_server.traitlets import Type
from traitlets import Bool, Dict, Float, Integer, List, TraitError, Unicode, default, validate

from ..dirac import (
    FINAL_STATES,
    DiracXClient,
    DiracXError,
    DiracXForbidden,
    DiracXTokenExpired,
    DiracXUnreachable,
    TokenSource,
)
from ..embedded import GROUP as FACILITY_GROUP
from ..embedded.users import USER_GROUP, GroupError, UserNameError, check_group, embedded_group
from ..tunnel.server import TunnelServer
from ..tunnel.traefik import dynamic_config, make_traefik_handler
from .jdl import WorkerJob, job_sandbox
from .limits import Limits, allowed_workers, check_table, limits_for
from .submission import BulkSubmitter


class DiracClusterConfig(LocalClusterConfig):
    """Per-cluster settings (deployer defaults, user options override them)."""

    # distributed >= 2024 ships `dask scheduler`, no longer `dask-scheduler`;
    # the scheduler runs in the gateway's own environment.
    @default("scheduler_cmd")
    def _scheduler_cmd_default(self) -> list[str]:
        return [sys.executable, "-m", "distributed.cli.dask_scheduler"]

    # Without the reverse path: the worker node's own `dask worker`.
    @default("worker_cmd")
    def _worker_cmd_default(self) -> list[str]:
        return ["dask", "worker"]

    sites = List(
        Unicode(),
        help="DIRAC sites the workers may run at (empty: any site).",
        config=True,
    )
    worker_image = Unicode(
        "",
        help="""Container image the worker runs in: a registry image or an
        unpacked image on CVMFS (/cvmfs/unpacked.cern.ch/...). Empty: the
        worker node's own environment. Best kept the same as the notebook
        image so that package versions match.""",
        config=True,
    )
    max_wall_time = Integer(
        3600 * 8,
        min=60,
        help="Maximum wall time of one worker job, in seconds.",
        config=True,
    )
    banned_sites = List(
        Unicode(),
        help="DIRAC sites the workers must not run at (the JDL's BannedSites).",
        config=True,
    )
    user_limits = Dict(
        help="""Set by the gateway when the cluster is created: its owner's limits
        (DiracBackend.group_limits resolved for the owner's groups).""",
        config=True,
    )
    job_tags = List(
        Unicode(),
        help="DIRAC job Tags: capabilities the site must offer (e.g. GPU).",
        config=True,
    )
    dirac_group = Unicode(
        "",
        help="""Set by the gateway when the cluster is created (embedded DiracX):
        the DIRAC group its jobs go under, from its owner's hub groups then.""",
        config=True,
    )


class DiracBackend(UnsafeLocalBackend):
    """dask-gateway backend: facility-side schedulers, DIRAC-job workers.

    Schedulers run as processes of the gateway's own user, isolated per
    cluster only by their own TLS credentials: user code on a scheduler can
    read what the gateway holds, so this is for tests and trusted single-user
    setups; deployments use containers.DockerDiracBackend.
    """

    cluster_config_class = Type(
        "gridhub.gateway.backend.DiracClusterConfig",
        klass="dask_gateway_server.backends.base.ClusterConfig",
        help="The cluster config class to use",
        config=True,
    )

    diracx_url = Unicode(
        help="Base URL of the DiracX server jobs are submitted to.",
        config=True,
    )
    diracx_ca_file = Unicode(
        "",
        help="CA bundle to verify DiracX's certificate (empty: system CAs).",
        config=True,
    )
    diracx_embedded_state_dir = Unicode(
        "",
        help="""State directory of the embedded DiracX server (the one-machine
        default and masterclass mode). When set, each user's jobs are submitted
        with that user's own DIRAC identity: the gateway registers the user in
        the embedded DiracX's CS and obtains the user's tokens with the
        facility's API key from that state (docs/dirac-backend.md, Identity).""",
        config=True,
    )
    diracx_groups = Dict(
        Unicode(),
        help="""Embedded DiracX: hub group -> DIRAC group a user's jobs go under
        (GRIDHUB_DIRACX_GROUPS): the first listed group the user is in, else
        "default", else gridhub_analysis. Empty: masterclass students (hub group
        class) in gridhub_class, everyone else in gridhub_analysis. The embedded
        server creates a missing group with NormalUser alone.""",
        config=True,
    )
    diracx_token_file = Unicode(
        "",
        help="""File holding a DiracX refresh token for the facility's robot
        identity: every user's jobs are submitted under it (the deployer's
        explicit choice for an external DiracX; else diracx_user_logins).""",
        config=True,
    )
    diracx_user_logins = Bool(
        False,
        help="""External DiracX: each user's jobs go under the user's own DiracX
        login, which the hub runs after the IAM login and hands over
        (PUT /api/v1/dirac-logins/<user>, gridhub.gateway.diraclogins).""",
        config=True,
    )
    diracx_login_handoff_token = Unicode(
        "",
        help="""Bearer token the hub presents to hand users' DiracX logins over
        (the hub's dask-gateway service token).""",
        config=True,
    )
    diracx_login_url = Unicode(
        "",
        help="Where a user renews their DiracX login (the hub's /hub/dirac-login), for messages.",
        config=True,
    )
    diracx_timeout = Float(10.0, help="Seconds for one DiracX request.", config=True)
    group_limits = Dict(
        help="""Per JupyterHub group, what one user of the group may hold at once
        over all their clusters, and how long their idle clusters live (seconds):
        {"class": {"clusters": 1, "workers": 2, "idle_timeout": 900},
        "default": {"clusters": 3, "cores": 32}}. "default" is for users in none of
        the listed groups; a user in several gets the most generous of each; a
        kind left out is not limited (gridhub.gateway.limits).""",
        config=True,
    )
    diracx_probe_timeout = Float(
        5.0,
        help="Seconds to wait for DiracX before refusing to create a cluster.",
        config=True,
    )

    public_dask_address = Unicode(
        help="""host:port of the facility's public Dask TLS entrypoint (Traefik's
        8786) as the grid worker nodes reach it.""",
        config=True,
    )
    scheduler_host = Unicode(
        "127.0.0.1",
        help="""Address schedulers listen on: one Traefik can reach (0.0.0.0
        in containers). Nothing else needs to reach it.""",
        config=True,
    )

    facility_ca_file = Unicode(
        "",
        help="""CA certificate of Traefik's public certificate, sent to workers
        in the sandbox (needed when it is self-signed; empty: system CAs).""",
        config=True,
    )

    worker_command = List(
        Unicode(),
        ["gridhub-worker"],
        help="""Command that starts a worker on the worker node, before the
        dask worker arguments. gridhub-worker opens the reverse path.""",
        config=True,
    )
    worker_environment = Dict(
        help="Extra environment for worker jobs (not secrets: use the sandbox).",
        config=True,
    )
    reverse_path = Bool(
        True,
        help="""Open a reverse path from each worker through Traefik. Switch
        off only where workers are directly reachable.""",
        config=True,
    )

    state_dir = Unicode(
        "",
        help="""Directory for the gateway's own state (the tunnel's SSH host
        key, generated once). Default: a temporary directory.""",
        config=True,
    )
    tunnel_listen_address = Unicode(
        "127.0.0.1:0",
        help="""host:port the reverse-path SSH service listens on; Traefik's
        gridhub-tunnel route points here.""",
        config=True,
    )
    tunnel_forward_host = Unicode(
        "127.0.0.1",
        help="Address worker routes listen on (reachable by Traefik only).",
        config=True,
    )
    tunnel_advertise_host = Unicode(
        "",
        help="Host Traefik uses to reach tunnel and worker routes (default: the bind host).",
        config=True,
    )
    traefik_token = Unicode(
        help="""Bearer token Traefik's HTTP provider presents to read routes
        (GET <gateway>/api/v1/traefik). hub_config/dask_gateway_config.py sets
        it from the settings' traefik_provider_token.""",
        config=True,
    )

    metrics_token = Unicode(
        "",
        help="""Bearer token a Prometheus scraper presents to read GET
        <gateway>/api/v1/metrics (empty: gateway admins only; gateway/observe.py).""",
        config=True,
    )

    traefik_cert_resolver = Unicode(
        "",
        help="Traefik certificate resolver for routes it terminates (ACME); empty: default cert.",
        config=True,
    )

    # A grid job may wait in a queue: give it longer than a local process.
    @default("worker_start_timeout")
    def _worker_start_timeout_default(self) -> float:
        return 900.0

    @default("worker_status_period")
    def _worker_status_period_default(self) -> float:
        return 5.0

    @default("cluster_status_period")
    def _cluster_status_period_default(self) -> float:
        return 5.0

    # ------------------------------------------------------------------
    # DiracX access

    def token_source(self) -> TokenSource:
        """The facility's identity: the robot's, which submits every job, or
        (embedded) the one that registers users."""
        if self.diracx_embedded_state_dir:
            from ..embedded import facility_token_source

            return facility_token_source(self.diracx_embedded_state_dir, self.diracx_url)
        if self.diracx_token_file:
            from ..dirac import RefreshingToken

            return RefreshingToken.from_file(
                self.diracx_url, self.diracx_token_file, verify=self._verify()
            )
        raise ValueError(
            "DiracBackend needs an identity: set diracx_embedded_state_dir, diracx_token_file"
            " or diracx_user_logins"
        )

    def _read_facility_ca(self) -> bytes | None:
        return Path(self.facility_ca_file).read_bytes() if self.facility_ca_file else None

    def _verify(self) -> bool | str:
        return self.diracx_ca_file or True

    async def setup(self, app: Any) -> None:
        if not self.traefik_token:
            raise ValueError(
                "DiracBackend.traefik_token (GRIDHUB_TRAEFIK_PROVIDER_TOKEN) is not set: "
                "Traefik could not read the routes of clusters"
            )
        app.router.add_get(
            "/api/v1/traefik", make_traefik_handler(self.traefik_config, self.traefik_token)
        )
        # GridHub's one API extension: what the worker jobs of a cluster are
        # doing in DIRAC, for gridhub.cluster's progress while workers start.
        # Authenticated as dask-gateway's own routes (the cluster's owner).
        app.router.add_get(
            "/api/v1/clusters/{cluster_name}/jobs",
            api_handler(self._handle_jobs, user_authenticated=True),
        )
        if self.diracx_user_logins:
            from .diraclogins import ROUTE

            if not self.diracx_login_handoff_token:
                raise ValueError(
                    "DiracBackend.diracx_user_logins needs diracx_login_handoff_token:"
                    " the hub could not hand users' DiracX logins over"
                )
            handle = self._logins.handler(
                self.diracx_login_handoff_token,
                lambda user: bool(self._clusters_of(user)),
                self._drop_user,
            )
            app.router.add_route("PUT", ROUTE, handle)
            app.router.add_route("DELETE", ROUTE, handle)
        from .observe import add_routes  # /api/v1/usage, /api/v1/metrics

        add_routes(app, self)
        await super().setup(app)

    async def _handle_jobs(self, request: web.Request) -> web.Response:
        name = request.match_info["cluster_name"]
        user = request["user"]
        cluster = self.db.get_cluster(name)
        if cluster is None or not user.has_permissions(cluster):
            # another user's cluster is as unknown as a missing one
            raise web.HTTPNotFound(reason=f"Cluster {name} not found")
        return web.json_response(await self.worker_jobs(cluster))

    async def worker_jobs(self, cluster: Cluster) -> dict[str, Any]:
        """The cluster's current worker jobs with their DIRAC status, minor
        and application status, and why its latest failed jobs failed."""
        workers = [
            w
            for w in cluster.workers.values()
            if w.status < JobStatus.STOPPED and w.target <= JobStatus.RUNNING
        ]
        ids = [w.state.get("job_id") for w in workers]
        # with the cluster owner's DIRAC identity: each user sees only their jobs
        dirac = await self.dirac_for(cluster.username, self.group_of(cluster))
        states = await dirac.statuses([int(i) for i in ids if i is not None])
        jobs = []
        for worker, job_id in zip(workers, ids, strict=True):
            state = states.get(int(job_id)) if job_id is not None else None
            jobs.append(
                {
                    "worker": worker.name,
                    "job_id": int(job_id) if job_id is not None else None,
                    # not yet a DIRAC job: the gateway is submitting it
                    "status": state.status if state else "Submitting",
                    "minor_status": state.minor_status if state else "",
                    "application_status": state.application_status if state else "",
                }
            )
        return {
            "cluster": cluster.name,
            "status": cluster.status.name,
            "jobs": sorted(jobs, key=lambda j: j["worker"]),
            "failures": list(self._site_failures.get(cluster.name, ())),
        }

    def traefik_config(self) -> dict[str, Any]:
        """Routes for Traefik's HTTP provider, from dask-gateway's own route
        table (the API, schedulers, dashboards) and the live reverse paths."""
        prefix = self.proxy.prefix
        schedulers, dashboards = {}, {}
        for route in self.proxy.routes.values():
            if route["kind"] == "SNI":
                schedulers[route["sni"]] = route["target"]
                continue
            path = route["path"].removeprefix(prefix)
            if path.startswith("/clusters/"):
                dashboards[path.removeprefix("/clusters/")] = route["target"]
        tunnel = getattr(self, "tunnel", None)
        config = dynamic_config(
            schedulers,
            dashboards,
            tunnel.routes if tunnel else {},
            (self.tunnel_advertise_host or tunnel.listen_host, tunnel.port) if tunnel else None,
            gateway_prefix=prefix,
            cert_resolver=self.traefik_cert_resolver or None,
        )
        if prefix:
            self._add_api_route(config, prefix)
        return config

    def _add_api_route(self, config: dict[str, Any], prefix: str) -> None:
        # The API under the public prefix (the hub's /services/dask-gateway),
        # prefix stripped as dask-gateway's own proxy does. Its priority beats
        # the hub's route for the same prefix; dashboards' longer paths win.
        http = config.setdefault("http", {})
        tls = {"certResolver": self.traefik_cert_resolver} if self.traefik_cert_resolver else {}
        http.setdefault("routers", {})["gateway-api"] = {
            "entryPoints": ["websecure"],
            "rule": f"PathPrefix(`{prefix}/`)",
            "service": "gateway-api",
            "middlewares": ["gateway-api"],
            "priority": 1000,
            "tls": tls,
        }
        http.setdefault("services", {})["gateway-api"] = {
            "loadBalancer": {"servers": [{"url": self.proxy.gateway_url}]}
        }
        http.setdefault("middlewares", {})["gateway-api"] = {"stripPrefix": {"prefixes": [prefix]}}
        for name, router in http["routers"].items():
            if name.startswith("dashboard-"):
                router["priority"] = 2000

    def _cluster_public_key(self, cluster_name: str) -> bytes | None:
        cluster = self.db.get_cluster(cluster_name)
        if cluster is None or cluster.status > JobStatus.RUNNING:
            return None
        return cluster.tls_cert

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sandbox_locks: dict[str, asyncio.Lock] = {}
        self._sandbox_uploads: dict[str, asyncio.Task[None]] = {}
        # the latest jobs of each cluster that ended before their worker ran,
        # to tell the user why the cluster failed
        self._site_failures: dict[str, deque[str]] = {}
        # each user's own DIRAC identity, by (user, DIRAC group: embedded
        # DiracX; "" with users' own logins), while their clusters live
        self._user_dirac: dict[tuple[str, str], DiracXClient] = {}
        self._user_locks: dict[tuple[str, str], asyncio.Lock] = {}
        # each user's worker jobs go to DiracX in bulk (scale(N): N/20 calls)
        self._submitters: dict[tuple[str, str], BulkSubmitter] = {}

    @validate("diracx_groups")
    def _check_diracx_groups(self, proposal: Any) -> dict:
        for hub_group, group in proposal.value.items():
            where = f"DiracBackend.diracx_groups (GRIDHUB_DIRACX_GROUPS), hub group {hub_group!r}"
            try:
                check_group(group, reserved=FACILITY_GROUP, where=where)
            except GroupError as exc:
                raise TraitError(str(exc)) from None
        return proposal.value

    @validate("group_limits")
    def _check_group_limits(self, proposal: Any) -> dict:
        try:
            check_table(proposal.value)
        except ValueError as exc:
            raise TraitError(f"DiracBackend.group_limits: {exc}") from None
        return proposal.value

    async def do_setup(self) -> None:
        await super().do_setup()
        if not self.diracx_url:
            raise ValueError("DiracBackend.diracx_url is not set")
        if not self.public_dask_address:
            raise ValueError("DiracBackend.public_dask_address is not set")
        self._facility_ca = self._read_facility_ca()  # once, at startup
        if not self.diracx_user_logins:
            self.dirac = DiracXClient(
                self.diracx_url,
                self.token_source(),
                timeout=self.diracx_timeout,
                verify=self._verify(),
            )
        if self.reverse_path:
            host, _, port = self.tunnel_listen_address.rpartition(":")
            if not self.state_dir:
                self.state_dir = tempfile.mkdtemp(prefix="gridhub-gateway-")
            self.tunnel = TunnelServer(
                self._cluster_public_key,
                Path(self.state_dir) / "tunnel",
                listen_host=host,
                listen_port=int(port),
                forward_host=self.tunnel_forward_host,
                advertise_host=self.tunnel_advertise_host or None,
            )
            await self.tunnel.start()

    async def do_cleanup(self) -> None:
        await super().do_cleanup()
        if hasattr(self, "tunnel"):
            await self.tunnel.stop()
        for username, _ in {*self._submitters, *self._user_dirac}:
            await self._drop_user(username, revoke=False)
        if hasattr(self, "dirac"):
            await self.dirac.aclose()

    @property
    def _logins(self) -> Any:  # gridhub.gateway.diraclogins.DiracLogins
        if getattr(self, "_logins_store", None) is None:
            from .diraclogins import DiracLogins

            state = Path(self.state_dir or tempfile.mkdtemp(prefix="gridhub-gateway-"))
            self._logins_store = DiracLogins(
                state / "dirac-logins",
                self.diracx_url,
                login_url=self.diracx_login_url,
                verify=self._verify(),
                timeout=self.diracx_timeout,
            )
        return self._logins_store

    def group_of(self, cluster: Cluster) -> str:
        """The DIRAC group ``cluster``'s jobs go under with the embedded DiracX
        (fixed when it was created; a cluster from before groups were mapped:
        USER_GROUP, where its owner was then); "" otherwise."""
        if not self.diracx_embedded_state_dir:
            return ""
        return str(cluster.config.get("dirac_group") or USER_GROUP)

    def _group_for(self, hub_groups: Any) -> str:
        if not self.diracx_embedded_state_dir:
            return ""
        return embedded_group(hub_groups, self.diracx_groups)

    async def dirac_for(self, username: str, group: str = "") -> DiracXClient:
        """The DiracX client with ``username``'s identity: with an external
        DiracX and user logins, the user's own login (DiracXLoginRequired
        naming it when missing or expired); with the embedded DiracX, the
        user's own in DIRAC group ``group`` (``group_of`` the cluster; the user
        is registered in it on first use, idempotent, so it is found again
        after a gateway restart); else the facility's robot."""
        if not (self.diracx_embedded_state_dir or self.diracx_user_logins):
            return self.dirac
        if self.diracx_embedded_state_dir:
            group = group or USER_GROUP
        else:
            group = ""  # the group is the user's login's
        key = (username, group)
        client = self._user_dirac.get(key)
        if client is not None:
            return client
        async with self._user_locks.setdefault(key, asyncio.Lock()):
            client = self._user_dirac.get(key)
            if client is None and self.diracx_user_logins:
                login = self._logins.token_source(username)
                await login.access_token()  # a missing or dead login is named here
                client = DiracXClient(
                    self.diracx_url, login, timeout=self.diracx_timeout, verify=self._verify()
                )
                self._user_dirac[key] = client
                self.log.info("User %s submits with their own DiracX login", username)
            if client is None:
                from ..embedded import register_user, user_token_source

                user = await register_user(self.dirac, username, group)
                tokens = user_token_source(
                    self.diracx_embedded_state_dir,
                    self.diracx_url,
                    username,
                    group=user.group,
                    verify=self._verify(),
                )
                client = DiracXClient(
                    self.diracx_url, tokens, timeout=self.diracx_timeout, verify=self._verify()
                )
                self._user_dirac[key] = client
                self.log.info(
                    "User %s submits as DIRAC user %s in group %s",
                    username,
                    user.username,
                    user.group,
                )
            return client

    async def _drop_user(
        self, username: str, *, group: str | None = None, revoke: bool = True
    ) -> None:
        """Forget a user's bulk submitters and DIRAC tokens (revoking their
        refresh tokens): those of ``group`` only, or all."""
        for key in [k for k in {*self._submitters, *self._user_dirac} if k[0] == username]:
            if group is None or key[1] == group:
                await self._drop(key, revoke=revoke)

    async def _drop(self, key: tuple[str, str], *, revoke: bool) -> None:
        submitter = self._submitters.pop(key, None)
        if submitter is not None:  # (its calls on their way finish first)
            await submitter.close()
        client = self._user_dirac.pop(key, None)
        self._user_locks.pop(key, None)
        if client is None:
            return
        tokens = client.tokens
        if revoke and hasattr(tokens, "revoke"):
            await tokens.revoke()
        await client.aclose()
        username, group = key
        self.log.info(
            "Dropped the DIRAC token of user %s%s (no cluster left)",
            username,
            f" in group {group}" if group else "",
        )

    async def start_cluster(self, user: Any, cluster_options: dict[str, Any]) -> str:
        limits = limits_for(user.groups, self.group_limits)
        if limits.clusters is not None:
            mine = [c.name for c in self._clusters_of(user.name)]
            if len(mine) >= limits.clusters:
                raise PublicException(
                    f"Cannot create a cluster: the limit for {limits.source} is"
                    f" {limits.clusters} cluster(s) at a time and you have {len(mine)}"
                    f" ({', '.join(mine)}). Stop one first."
                )
        # Refuse up front, with the reason, rather than fail after a timeout.
        try:
            group = self._group_for(user.groups)
            await asyncio.wait_for(self._probe_dirac(user.name, group), self.diracx_probe_timeout)
        except UserNameError as exc:
            raise PublicException(f"Cannot create a cluster: {exc}") from exc
        except DiracXForbidden as exc:
            raise PublicException(
                f"Cannot create a cluster: DIRAC refused your identity ({exc})."
            ) from exc
        except DiracXTokenExpired as exc:  # (DiracXLoginRequired: says where to renew it)
            raise PublicException(f"Cannot create a cluster: {exc}") from exc
        except (DiracXError, TimeoutError, OSError) as exc:
            reason = (
                exc
                if isinstance(exc, DiracXError)
                else DiracXUnreachable(
                    f"no answer within {self.diracx_probe_timeout:.0f} s", self.diracx_url
                )
            )
            raise PublicException(
                f"Cannot create a cluster: DIRAC is unreachable ({reason}). "
                "Nothing was created; try again when DIRAC is back."
            ) from exc
        return await super().start_cluster(user, cluster_options)

    async def _probe_dirac(self, username: str, group: str) -> None:
        # An authenticated search matching nothing: proves both reachability
        # and that the user's identity (in the new cluster's group) is accepted.
        dirac = await self.dirac_for(username, group)
        await dirac.search([{"parameter": "JobID", "operator": "eq", "value": 0}], ["JobID"])

    # ------------------------------------------------------------------
    # Schedulers: at the facility (start_scheduler / stop_scheduler)

    async def do_start_cluster(self, cluster: Cluster) -> AsyncIterator[dict[str, Any]]:
        # The sandbox needs only the cluster's credentials and config: upload
        # it while the scheduler starts (seconds of imports), not after the
        # first scale. The first worker waits for it (cluster_sandbox's lock).
        self._sandbox_uploads[cluster.name] = asyncio.create_task(self._upload_early(cluster))
        async for state in self.start_scheduler(cluster):
            # the state yielded replaces the DB's: keep the sandbox if it is in
            sandbox = cluster.state.get("sandbox")
            yield {**state, "sandbox": sandbox} if sandbox else state

    def start_scheduler(self, cluster: Cluster) -> AsyncIterator[dict[str, Any]]:
        """Start the cluster's scheduler, yielding its state: here a process of
        the gateway (LocalBackend's); containers.DockerDiracBackend: a container."""
        return UnsafeLocalBackend.do_start_cluster(self, cluster)

    async def stop_scheduler(self, cluster: Cluster) -> None:
        await UnsafeLocalBackend.do_stop_cluster(self, cluster)

    async def _upload_early(self, cluster: Cluster) -> None:
        try:
            await self.cluster_sandbox(cluster)
        except (DiracXError, OSError) as exc:
            # the first worker tries again and reports it if it fails again
            self.log.info("Early sandbox upload of cluster %s failed: %s", cluster.name, exc)
        finally:
            self._sandbox_uploads.pop(cluster.name, None)

    def get_scheduler_command(self, cluster: Cluster) -> list[str]:
        cmd = DBBackendBase.get_scheduler_command(self, cluster)
        # Listen where Traefik can reach it; the preload reports the address.
        cmd[cmd.index("--host") + 1] = self.scheduler_host
        # the dashboard and the gateway-facing API too: the preload reports
        # them by the scheduler's address, so they must listen there
        for flag in ("--dashboard-address", "--dg-api-address"):
            if flag in cmd:
                cmd[cmd.index(flag) + 1] = f"{self.scheduler_host}:0"
        return cmd

    # ------------------------------------------------------------------
    # Workers: DIRAC jobs

    # dask-gateway's worker environment that a grid worker has no use for:
    # the cluster's API token (it lets its holder stop the cluster and post
    # heartbeats: only the scheduler talks to the gateway) and the API's
    # internal URL (unreachable from the grid anyway).
    WORKER_ENV_DROPPED = ("DASK_GATEWAY_API_TOKEN", "DASK_GATEWAY_API_URL")

    def worker_env(self, cluster: Cluster) -> dict[str, str]:
        """What the job exports: dask-gateway's worker environment without
        what only the scheduler uses, and without the facility's paths (the
        job script sets the TLS paths on the node)."""
        env = DBBackendBase.get_env(self, cluster)
        for key in self.WORKER_ENV_DROPPED:
            env.pop(key, None)
        env.update(self.worker_environment)
        env["GRIDHUB_CLUSTER_NAME"] = cluster.name
        env["GRIDHUB_FACILITY_DASK_ADDRESS"] = self.public_dask_address
        tunnel = getattr(self, "tunnel", None)
        if tunnel is not None:
            # the pinned SSH host key lets gridhub-worker open its path with
            # OpenSSH over plain SSH, where the node has ssh (docs/reverse-path.md)
            env["GRIDHUB_TUNNEL_HOST_KEY"] = tunnel.host_public_key
        if cluster.config.worker_image:
            env["GRIDHUB_WORKER_IMAGE"] = cluster.config.worker_image
        return env

    def job_worker_command(self, cluster: Cluster) -> list[str]:
        scheduler = f"gateway://{self.public_dask_address}/{cluster.name}"
        dask_args = DBBackendBase.get_worker_command(
            self, cluster, "{worker_name}", scheduler_address=scheduler
        )[len(cluster.config.worker_cmd) :]
        # No worker dashboard: on a grid node nothing can reach it (the reverse
        # path carries the worker's comm port only), and starting it (bokeh)
        # is half the worker's start-up CPU.
        i = dask_args.index("--dashboard-address")
        dask_args[i : i + 2] = ["--no-dashboard"]
        if self.reverse_path:
            return [*self.worker_command, "--", *dask_args]
        return [*cluster.config.worker_cmd, *dask_args]

    async def cluster_sandbox(self, cluster: Cluster) -> str:
        """Upload the cluster's sandbox once; its PFN is kept in the DB."""
        # workers created together wait for the first one's upload
        lock = self._sandbox_locks.setdefault(cluster.name, asyncio.Lock())
        async with lock:
            return await self._upload_sandbox_once(cluster)

    async def _upload_sandbox_once(self, cluster: Cluster) -> str:
        pfn = cluster.state.get("sandbox")
        if pfn:
            return str(pfn)
        files = job_sandbox(
            env=self.worker_env(cluster),
            worker_cmd=self.job_worker_command(cluster),
            tls_cert=cluster.tls_cert,
            tls_key=cluster.tls_key,
            facility_ca=self._facility_ca,
        )
        # the submitting identity's: DiracX checks the sandbox's owner and group
        dirac = await self.dirac_for(cluster.username, self.group_of(cluster))
        pfn = await dirac.upload_sandbox(files)
        self.db.update_cluster(cluster, state={**cluster.state, "sandbox": pfn})
        return pfn

    async def do_start_worker(self, worker: Worker) -> AsyncIterator[dict[str, Any]]:
        cluster = worker.cluster
        job = WorkerJob(
            cluster_name=cluster.name,
            worker_name=worker.name,
            username=cluster.username,
            sandbox_pfn=await self.cluster_sandbox(cluster),
            cores=cluster.config.worker_cores,
            wall_time=cluster.config.max_wall_time,
            sites=tuple(cluster.config.sites),
            banned_sites=tuple(cluster.config.banned_sites),
            tags=tuple(cluster.config.job_tags),
            memory_mb=cluster.config.worker_memory // 2**20,
        )
        job_id = await self._submitter(cluster.username, self.group_of(cluster)).submit(job.jdl())
        self.log.info(
            "Worker %s of cluster %s (user %s) is DIRAC job %d",
            worker.name,
            cluster.name,
            cluster.username,
            job_id,
        )
        yield {"job_id": job_id}

    def _submitter(self, username: str, group: str) -> BulkSubmitter:
        submitter = self._submitters.get((username, group))
        if submitter is None:

            async def submit(jdls: list[str]) -> list[int]:
                job_ids = await (await self.dirac_for(username, group)).submit_jdl(jdls)
                self.log.info(
                    "Submitted %d worker job(s) of user %s in one call", len(job_ids), username
                )
                return job_ids

            async def kill(job_ids: list[int]) -> None:
                self.log.info(
                    "Killing jobs %s of user %s (their workers gave up)", job_ids, username
                )
                try:
                    await (await self.dirac_for(username, group)).kill(job_ids)
                except DiracXError as exc:  # the cluster's stop sweeps its JobGroup
                    self.log.warning("Could not kill jobs %s: %s", job_ids, exc)

            submitter = self._submitters[(username, group)] = BulkSubmitter(submit, kill)
        return submitter

    async def do_stop_worker(self, worker: Worker) -> None:
        job_id = worker.state.get("job_id")
        if job_id is not None:
            dirac = await self.dirac_for(worker.cluster.username, self.group_of(worker.cluster))
            await dirac.kill([int(job_id)])

    async def process_cluster_options(self, user: Any, request: dict[str, Any]) -> Any:
        options, config = await super().process_cluster_options(user, request)
        # the owner's limits as they are now, kept with the cluster (its groups
        # are not known later, e.g. after a gateway restart)
        limits = limits_for(user.groups, self.group_limits)
        config.user_limits = limits.as_dict()
        config.idle_timeout = limits.cluster_idle_timeout(config.idle_timeout)
        # and its DIRAC group: the cluster keeps it whatever the user's groups
        # become; their next cluster takes the group they are in then
        config.dirac_group = self._group_for(user.groups)
        return options, config

    def _worker_allowance(self, cluster: Cluster) -> tuple[int | None, str]:
        """Most workers ``cluster`` may have beside its owner's other clusters,
        and the limit and use that bound it, for messages."""
        limits = Limits(**cluster.config.get("user_limits", {}))
        if limits.workers is None and limits.cores is None:
            return None, ""  # (every heartbeat asks: nothing to count)
        others = self._clusters_of(cluster.username, but=cluster.name)
        workers = sum(c.count for c in others)
        cores = sum(c.count * c.config.worker_cores for c in others)
        allowed = allowed_workers(limits, cluster.config.worker_cores, workers, cores)
        bounds = " and ".join(
            f"{n} {kind}"
            for kind, n in (("workers", limits.workers), ("cores", limits.cores))
            if n is not None
        )
        why = (
            f"the limit for {limits.source} is {bounds} at a time over all your"
            f" clusters; your other clusters hold {workers} workers ({cores:g} cores)"
        )
        return allowed, why

    async def on_cluster_heartbeat(self, cluster_name: str, msg: dict[str, Any]) -> None:
        # A worker whose DIRAC job ended before the gateway saw it running is
        # still listed as active by the scheduler for a few seconds. Counted
        # as active, the base class would stop its replacement as surplus and
        # submit yet another: report it as closed instead.
        cluster = self.db.get_cluster(cluster_name)
        if cluster is not None:
            ended = {
                w.name
                for w in cluster.workers.values()
                if w.status >= JobStatus.STOPPED or w.target == JobStatus.FAILED
            }
            gone = ended.intersection(msg["active_workers"])
            if gone:
                msg = {
                    **msg,
                    "active_workers": [w for w in msg["active_workers"] if w not in gone],
                    "closed_workers": [*msg["closed_workers"], *sorted(gone)],
                }
            allowed, why = self._worker_allowance(cluster)
            if allowed is not None and msg["count"] > allowed:
                # adaptive scaling (or a scale the API let through) asks for
                # more than the owner's limits leave: hold it at the limit
                self.log.info(
                    "Cluster %s asks for %d workers, held at %d: %s",
                    cluster_name,
                    msg["count"],
                    allowed,
                    why,
                )
                msg = {**msg, "count": allowed}
        if msg["active_workers"]:  # workers run: earlier failures are history
            self._site_failures.pop(cluster_name, None)
        await super().on_cluster_heartbeat(cluster_name, msg)

    async def do_check_workers(self, workers: Sequence[Worker]) -> list[bool]:
        ids = [w.state.get("job_id") for w in workers]
        by_user: dict[tuple[str, str], list[int]] = {}
        for w, i in zip(workers, ids, strict=True):
            if i is not None:
                key = (w.cluster.username, self.group_of(w.cluster))
                by_user.setdefault(key, []).append(int(i))
        states = {}
        for (username, group), known in by_user.items():  # each user sees only their jobs
            states.update(await (await self.dirac_for(username, group)).statuses(known))
        out = []
        for worker, job_id in zip(workers, ids, strict=True):
            state = states.get(int(job_id)) if job_id is not None else None
            alive = state is not None and not state.final
            if not alive:
                why = (
                    f"job {job_id}: {state.status}"
                    + (f" ({state.application_status})" if state.application_status else "")
                    if state is not None
                    else f"job {job_id}: unknown to DIRAC"
                )
                self.log.warning(
                    "Worker %s of cluster %s ended before it ran: %s",
                    worker.name,
                    worker.cluster.name,
                    why,
                )
                failures = self._site_failures.setdefault(worker.cluster.name, deque(maxlen=3))
                failures.append(why)
            out.append(alive)
        return out

    async def forward_message_to_scheduler(self, cluster: Cluster, msg: dict[str, Any]) -> None:
        failures = self._site_failures.get(cluster.name)
        if cluster.status == ClusterStatus.FAILED and failures:
            raise PublicException(
                f"cluster {cluster.name} stopped: its last worker jobs failed at the site"
                f" ({'; '.join(failures)})"
            )
        if msg.get("op") == "scale":
            db_cluster = self.db.get_cluster(cluster.name)
            allowed, why = self._worker_allowance(db_cluster) if db_cluster else (None, "")
            if allowed is not None and msg["count"] > allowed:
                raise PublicException(
                    f"Cannot scale {cluster.name} to {msg['count']} workers: {why}."
                    f" At most {allowed} for this cluster."
                )
        await super().forward_message_to_scheduler(cluster, msg)

    async def do_stop_cluster(self, cluster: Cluster) -> None:
        upload = self._sandbox_uploads.pop(cluster.name, None)
        if upload is not None:
            upload.cancel()
        self._sandbox_locks.pop(cluster.name, None)
        # Workers are stopped one by one by the reconcile loop; this catches
        # any job of the cluster that the DB lost track of (zero orphans).
        try:
            dirac = await self.dirac_for(cluster.username, self.group_of(cluster))
            jobs = await dirac.search(
                [{"parameter": "JobGroup", "operator": "eq", "value": cluster.name}],
                ["JobID", "Status"],
            )
            alive = [int(j["JobID"]) for j in jobs if j["Status"] not in FINAL_STATES]
            if alive:
                self.log.info("Killing %d leftover jobs of cluster %s", len(alive), cluster.name)
                await dirac.kill(alive)
        finally:
            try:
                await self.stop_scheduler(cluster)
            finally:
                # the user's token of this group goes with their last cluster in it
                group = self.group_of(cluster)
                others = self._clusters_of(cluster.username, but=cluster.name)
                if not any(self.group_of(c) == group for c in others):
                    await self._drop_user(cluster.username, group=group)

    def _clusters_of(self, username: str, *, but: str = "") -> list[Cluster]:
        """The user's active clusters (not being stopped), but the one named."""
        return [c for c in self.db.list_clusters(username=username) if c.name != but]


def default_cluster_options(
    *,
    max_cores: int = 8,
    max_memory_gib: float = 32,
    max_workers: int = 50,
    sites: Mapping[str, Sequence[str]] | Sequence[str] = (),
    images: Sequence[str] = ("",),
    max_wall_hours: float = 24,
) -> opts.Options:
    """The options users see in dask-gateway's dialog and the labextension.

    ``sites`` are the DIRAC sites a user may pick, as a mapping to the tags
    each offers (``{"LCG.GPU.gridhub": ["GPU"]}``) or a plain list. With tags
    known, a request no site can run is refused when the cluster is created,
    naming the tag, rather than left waiting at DIRAC.
    """
    catalogue = {s: set(t) for s, t in sites.items()} if isinstance(sites, Mapping) else {}
    names = list(sites)

    def split(text: str) -> list[str]:
        return sorted({t.strip() for t in text.split(",") if t.strip()})

    def job_tags(options: Any) -> list[str]:
        tags = split(options.tags)
        if not catalogue or not tags:
            return tags  # DIRAC decides
        allowed = [options.site] if options.site != "ANY" else names
        allowed = [s for s in allowed if s not in split(options.banned_sites)]
        if not any(set(tags) <= catalogue[s] for s in allowed):
            offered = {s: sorted(t) for s, t in catalogue.items() if t}
            raise ValueError(
                f"no site you allowed offers the tags {tags} (sites with tags: {offered or 'none'})"
            )
        return tags

    def handler(options: Any, user: Any) -> dict[str, Any]:
        config: dict[str, Any] = {
            "worker_cores": options.worker_cores,
            "worker_threads": options.worker_cores,
            "worker_memory": int(options.worker_memory * 2**30),
            "cluster_max_workers": options.max_workers,
            "max_wall_time": int(options.max_wall_hours * 3600),
            "job_tags": job_tags(options),
        }
        if options.site != "ANY":
            config["sites"] = [options.site]
        if split(options.banned_sites):
            config["banned_sites"] = split(options.banned_sites)
        if options.worker_image:
            config["worker_image"] = options.worker_image
        return config

    return opts.Options(
        opts.Integer("worker_cores", 1, min=1, max=max_cores, label="Worker cores"),
        opts.Float("worker_memory", 2, min=0.5, max=max_memory_gib, label="Worker memory (GiB)"),
        opts.Integer("max_workers", max_workers, min=1, max=max_workers, label="Maximum workers"),
        opts.Select("site", ["ANY", *names], default="ANY", label="DIRAC site"),
        opts.String("tags", "", label="Job tags (comma-separated, e.g. GPU)"),
        opts.String("banned_sites", "", label="Banned sites (comma-separated)"),
        opts.Select("worker_image", list(images), default=images[0], label="Worker image")
        if len(images) > 1
        else opts.String("worker_image", images[0], label="Worker image (empty: site default)"),
        opts.Float("max_wall_hours", 8, min=0.1, max=max_wall_hours, label="Max wall time (hours)"),
        handler=handler,
    )
