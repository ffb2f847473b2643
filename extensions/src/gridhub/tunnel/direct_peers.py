"""Direct transfers between grid workers of one site (a Dask worker preload).

``gridhub-worker`` starts the dask worker with ``--preload
gridhub.tunnel.direct_peers``. Every worker keeps its reverse path
(``gateway://<traefik>/<route>``, the only address the scheduler, the
client and workers elsewhere know). With this preload a worker also:

- listens on its site-network address (the local address of the route to
  the facility) with the same cluster TLS as its reverse path (mutual: only
  holders of the cluster's key get in);
- answers ``gridhub_peer`` with its DIRAC site name (``DIRACSITE``, set by
  DIRAC's job wrapper and by the stand-in site) and that address;
- dials peers of its own cluster through a ``gateway://`` comm that, once
  per peer, asks the peer through the relay where it is, and if the peer is
  at the same site, checks the direct address (connect, mutual TLS, and the
  same worker answers) within ``GRIDHUB_DIRECT_TIMEOUT`` seconds (default
  3). The choice is remembered per peer (:mod:`.peer_choice`); everything
  else (the scheduler, other sites, a peer that failed) goes through the
  relay exactly as before.

Off at a site: ``GRIDHUB_DIRECT_PEERS_OFF=<site>[,<site>...]`` (or ``*``),
set by the deployer for every job; also off without a site name. Off means
no site listener and no direct attempts; the worker still tells asking
peers that it has no direct address, so they use the relay at once.

Why a preload and not only the ``distributed.comm.backends`` entry point:
``dask_gateway.comm`` registers its own ``gateway`` backend when imported,
so an entry point alone would be replaced as soon as anything in the
worker (user code included) imports ``dask_gateway``. The preload imports
it first, then installs this backend for the ``gateway`` scheme, in grid
workers only; schedulers and clients keep dask-gateway's.
"""

from __future__ import annotations

import contextvars
import logging
import os
from typing import Any

import dask.config
import dask_gateway.comm as gateway_comm  # imported first: it registers "gateway" on import
from dask.utils import parse_timedelta
from distributed.comm import connect
from distributed.comm.registry import backends
from distributed.comm.tcp import TLSConnector
from distributed.core import send_recv
from distributed.utils import ensure_ip, get_ip, wait_for

from .peer_choice import Choice, PeerChoices

log = logging.getLogger("gridhub.tunnel.direct_peers")

SITE_ENV = "DIRACSITE"
OFF_ENV = "GRIDHUB_DIRECT_PEERS_OFF"
TIMEOUT_ENV = "GRIDHUB_DIRECT_TIMEOUT"
DEFAULT_TIMEOUT = 3.0
#: The worker RPC a peer asks: where are you?
OP = "gridhub_peer"

# Set inside a decision: its question to the peer must take the relay.
_relay_only: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "gridhub_relay_only", default=False
)
_peers: SitePeers | None = None
_off: str | None = None  # why direct peers are off in this worker


def off_reason(site: str, off: str) -> str | None:
    """Why direct peers are off for a worker at ``site`` (None: on).
    ``off``: the deployer's comma-separated site names, ``*`` for all."""
    if not site or site.upper() == "UNKNOWN":
        return f"no site name ({SITE_ENV})"
    names = {s.strip() for s in off.split(",") if s.strip()}
    if "*" in names or site in names:
        return f"switched off for {site} ({OFF_ENV})"
    return None


def _route(loc: str) -> str:
    return gateway_comm.parse_gateway_address(loc)[2]


class SitePeers:
    """One worker's side: its own answer, and its choices per peer."""

    def __init__(self, worker: Any, site: str, address: str | None, timeout: float) -> None:
        self.worker = worker
        self.site = site
        self.address = address
        self.timeout = timeout
        self.cluster = _route(worker.scheduler.address)
        self.choices = PeerChoices()

    def info(self) -> dict[str, Any]:
        """The ``gridhub_peer`` answer."""
        return {"site": self.site, "address": self.address, "contact": self.worker.address}

    def is_peer(self, loc: str) -> bool:
        """A worker of this cluster (``<cluster>-<suffix>``), not the scheduler."""
        return _route(loc).startswith(self.cluster + "-")

    async def connect(self, loc: str, relay: Any, deserialize: bool, **connection_args: Any):
        route = _route(loc)
        choice = await self.choices.get(route, lambda: self._decide(loc))
        if choice.direct:
            try:
                comm = await wait_for(
                    TLSConnector().connect(
                        choice.direct.removeprefix("tls://"), deserialize, **connection_args
                    ),
                    self.timeout,
                )
            except (OSError, TimeoutError) as e:
                self.choices.fall_back(route, f"direct {choice.direct} failed: {_why(e)}")
            else:
                self.choices.count(route, direct=True)
                return comm
        self.choices.count(route, direct=False)
        return await relay(loc, deserialize=deserialize, **connection_args)

    async def _decide(self, loc: str) -> Choice:
        """Ask the peer through the relay; if it is at this site, check its
        direct address answers as the same worker."""
        _relay_only.set(True)  # this decision's task only (its own context)
        timeout = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"))
        info = await self._ask(f"gateway://{loc}", timeout)
        if not isinstance(info, dict) or not info.get("address"):
            return Choice(None, "the peer has no direct address (off at its site)")
        if info.get("site") != self.site:
            return Choice(None, f"other site ({info.get('site')})")
        addr = str(info["address"])
        try:
            again = await self._ask(addr, self.timeout)
        except (OSError, TimeoutError) as e:
            return Choice(None, f"direct {addr} failed: {_why(e)}", failed=True)
        if not isinstance(again, dict) or again.get("contact") != info.get("contact"):
            other = again.get("contact") if isinstance(again, dict) else again
            return Choice(None, f"{addr} is another worker ({other})", failed=True)
        return Choice(addr, f"same site {self.site}")

    async def _ask(self, addr: str, limit: float) -> Any:
        """``addr``'s ``gridhub_peer`` answer, within ``limit`` seconds."""

        async def ask() -> Any:
            comm = await connect(addr, timeout=limit, **self.worker.connection_args)
            try:
                return await send_recv(comm, op=OP)
            finally:
                await comm.close()

        try:
            return await wait_for(ask(), limit)
        except TimeoutError as e:
            raise TimeoutError(f"timed out after {limit:g} s") from e


def _why(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return str(e) or "timed out"
    # distributed's connect gives up with "Timed out trying to connect ...",
    # the last attempt's error as the cause (refused, unreachable, ...)
    cause = f" ({e.__cause__!r})" if e.__cause__ else ""
    return f"{type(e).__name__}: {e}{cause}"


class PeerGatewayConnector(gateway_comm.GatewayConnector):
    async def connect(self, address, deserialize=True, **connection_args):
        peers = _peers
        if peers is None or _relay_only.get() or not peers.is_peer(address):
            return await super().connect(address, deserialize, **connection_args)
        return await peers.connect(address, super().connect, deserialize, **connection_args)


class PeerGatewayBackend(gateway_comm.GatewayBackend):
    """dask-gateway's ``gateway://`` backend, with direct peers."""

    def get_connector(self):
        return PeerGatewayConnector()


def summary(dask_worker: Any = None) -> dict[str, Any]:
    """This worker's direct-peer state (``client.run(summary)``): its site,
    its direct address, and per peer route the path, why, and counts."""
    peers = _peers
    if peers is None:
        return {"site": os.environ.get(SITE_ENV, ""), "address": None, "off": _off, "peers": {}}
    return {
        "site": peers.site,
        "address": peers.address,
        "off": None,
        "peers": {k: v.as_dict() for k, v in peers.choices.stats.items()},
    }


def _log_to_worker_stream() -> None:
    # The dask worker configures only distributed's loggers: ours goes to
    # the same handlers, so the job log says which peer took which path.
    parent = logging.getLogger("distributed")
    if not log.handlers and parent.handlers:
        for h in parent.handlers:
            log.addHandler(h)
        log.propagate = False
    log.setLevel(logging.INFO)


def _timeout(value: str) -> float:
    try:
        t = float(value) if value else DEFAULT_TIMEOUT
    except ValueError:
        t = -1
    if t <= 0:
        log.warning(
            "%s=%r is not a number of seconds > 0; using %g", TIMEOUT_ENV, value, DEFAULT_TIMEOUT
        )
        return DEFAULT_TIMEOUT
    return t


async def _listen_on_site_network(worker: Any) -> str:
    """A second listener (same handlers, cluster TLS) on the local address
    of the route to the facility: the site LAN of a NATed worker node."""
    facility = gateway_comm.parse_gateway_address(worker.scheduler.address)[0]
    ip = get_ip(ensure_ip(facility))
    await worker.listen(f"tls://{ip}:0", **worker.security.get_listen_args("worker"))
    return worker.listeners[-1].contact_address


async def dask_setup(worker: Any) -> None:
    global _peers, _off
    _log_to_worker_stream()
    site = os.environ.get(SITE_ENV, "")
    off = off_reason(site, os.environ.get(OFF_ENV, ""))
    timeout = _timeout(os.environ.get(TIMEOUT_ENV, ""))
    address = None
    if off is None:
        try:
            address = await _listen_on_site_network(worker)
        except OSError as e:  # the worker must run anyway, on its reverse path
            off = f"cannot listen on the site network: {e}"
    if off is None:
        log.info("direct peers: on at site %s, listening on %s", site, address)
    else:
        log.info("direct peers: off (%s); every peer through the relay", off)
    _off = off
    peers = SitePeers(worker, site, address, timeout)
    worker.handlers[OP] = peers.info
    if off is None:
        _peers = peers
        backends["gateway"] = PeerGatewayBackend()


async def dask_teardown(worker: Any) -> None:
    global _peers
    if _peers is not None and _peers.worker is worker:
        _peers = None
