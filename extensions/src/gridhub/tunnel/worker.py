"""``gridhub-worker``: a Dask worker that a grid node's firewall cannot hide.

Usage (what the DIRAC backend puts in the job)::

    gridhub-worker [options] -- gateway://<traefik>:8786/<cluster> [dask worker args]

1. picks a free local port P;
2. opens SSH to the facility's tunnel service through Traefik, user
   ``<cluster>``, authenticated with the cluster's private key (the
   worker's TLS key file), with one of two clients:

   - ``openssh``: ``ssh -N`` speaking plain SSH to ``<traefik>:8786``
     (Traefik routes a connection without a TLS ClientHello to the tunnel
     service); the server's host key must be pinned. About half the CPU
     per MB of the other path (see docs/reverse-path.md).
   - ``asyncssh``: SSH inside TLS to ``<traefik>:8786`` (SNI
     ``gridhub-tunnel``, Traefik terminates it, the worker checks its
     certificate); pinning the host key is optional.

   ``GRIDHUB_TUNNEL_CLIENT=auto`` (default) takes ``openssh`` when an
   ``ssh`` binary exists and a host key is pinned, else ``asyncssh``; if
   that first ``openssh`` attempt fails (say a facility without the plain
   SSH route, or a site passing only TLS), it falls back to ``asyncssh``;
3. asks for the remote forward ``<cluster>-<worker>`` -> 127.0.0.1:P;
4. runs ``dask worker`` with ``--listen-address tls://127.0.0.1:P
   --contact-address gateway://<traefik>:8786/<cluster>-<worker>
   --preload gridhub.tunnel.direct_peers`` plus the given arguments (the
   preload lets workers of one site talk directly, see
   :mod:`gridhub.tunnel.direct_peers`).

If the tunnel drops, the worker is stopped (Dask reschedules its tasks); if
the worker exits, the tunnel is closed and gridhub-worker exits with the
worker's code. SIGTERM/SIGINT stop the worker, then the tunnel.

Options fall back to the environment the job already has:
``GRIDHUB_FACILITY_DASK_ADDRESS`` (traefik host:port), ``GRIDHUB_CLUSTER_NAME``,
``GRIDHUB_WORKER_NAME``, ``DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY`` (the
cluster key), ``GRIDHUB_FACILITY_CA`` (CA file for Traefik's certificate;
default: the system's trust store), ``GRIDHUB_TUNNEL_HOST_KEY`` (pinned SSH
host key, OpenSSH public key line), ``GRIDHUB_TUNNEL_CLIENT``
(``auto``/``openssh``/``asyncssh``), ``GRIDHUB_REVERSE_PATH`` (``0``: no
tunnel, plain dask worker).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

import asyncssh

from ..ports import free_port
from .common import (
    CHANNEL_WINDOW,
    CIPHERS,
    MAX_PKTSIZE,
    TUNNEL_SNI,
    route_name,
    run_event_loop,
)
from .openssh import OpenSSHError, OpenSSHTunnel, open_openssh, ssh_binary

log = logging.getLogger("gridhub.tunnel.worker")

#: Exit code when the tunnel (not the worker) failed.
EXIT_TUNNEL = 75
CLIENTS = ("auto", "openssh", "asyncssh")
#: What may go wrong while opening the path (either client).
OPEN_ERRORS = (OSError, asyncssh.Error, TimeoutError, ssl.SSLError, OpenSSHError, ValueError)
DEFAULT_DASK_WORKER = [sys.executable, "-m", "distributed.cli.dask_worker"]
DIRECT_PEERS_PRELOAD = "gridhub.tunnel.direct_peers"
SSH_OPTIONS: dict[str, Any] = {
    # Bulk Dask transfers go through the channel: large windows, no zlib,
    # AES-GCM (hardware-accelerated through cryptography/OpenSSL).
    "encryption_algs": CIPHERS,
    "compression_algs": ["none"],
    "window": CHANNEL_WINDOW,
    "max_pktsize": MAX_PKTSIZE,
}


class TLSTunnel:
    """asyncssh ``tunnel=`` object: the SSH connection runs inside TLS to
    Traefik, which terminates it (SNI ``gridhub-tunnel``) and passes plain
    TCP to the tunnel service.

    The certificate chain is verified as usual; the name check accepts the
    facility's own host name (what an ACME certificate carries) or the
    tunnel SNI (a self-signed facility certificate), since the SNI is a
    routing label, not the facility's DNS name.
    """

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str = TUNNEL_SNI,
        accept_names: Sequence[str] = (),
    ):
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname
        self.accept_names = [n.lower() for n in (*accept_names, server_hostname)]
        self.logger = log

    async def create_connection(self, session_factory: Any, host: str, port: int) -> Any:
        loop = asyncio.get_running_loop()
        transport, session = await loop.create_connection(
            session_factory, host, port, ssl=self.ssl_context, server_hostname=self.server_hostname
        )
        names = [*self.accept_names, host.lower()]
        if self.ssl_context.verify_mode == ssl.CERT_REQUIRED and not _cert_matches(
            transport.get_extra_info("peercert") or {}, names
        ):
            transport.abort()
            raise ssl.SSLCertVerificationError(f"facility certificate matches none of {names}")
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return transport, session

    def __str__(self) -> str:
        return f"TLS (SNI {self.server_hostname})"


def _cert_matches(cert: dict, names: Sequence[str]) -> bool:
    sans = cert.get("subjectAltName", ())
    for kind, value in sans:
        value = value.lower()
        for name in names:
            if kind == "IP Address" and value == name:
                return True
            if kind == "DNS" and (
                value == name
                or (value.startswith("*.") and "." in name and name.split(".", 1)[1] == value[2:])
            ):
                return True
    return False


def facility_ssl_context(cafile: str | None, insecure: bool = False) -> ssl.SSLContext:
    """TLS context for the outer leg: verify Traefik's certificate chain
    (the name is checked by :class:`TLSTunnel`)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile or None)
    ctx.check_hostname = False
    if insecure:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _opt_value(args: Sequence[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def _first_positional(args: Sequence[str]) -> str | None:
    for a in args:
        if "://" in a and not a.startswith("-"):
            return a
    return None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        i = argv.index("--")
        ours, dask_args = argv[:i], argv[i + 1 :]
    else:  # no "--": ours up to the scheduler address
        i = next((k for k, a in enumerate(argv) if "://" in a), len(argv))
        ours, dask_args = argv[:i], argv[i:]
    env = os.environ
    p = argparse.ArgumentParser(
        prog="gridhub-worker",
        description="Run a Dask worker reachable through a reverse SSH path via Traefik.",
        epilog="Everything after -- goes to dask worker (the scheduler address first).",
    )
    p.add_argument(
        "--facility",
        default=env.get("GRIDHUB_FACILITY_DASK_ADDRESS"),
        help="Traefik's Dask TLS entrypoint host:port "
        "[GRIDHUB_FACILITY_DASK_ADDRESS; default: from the scheduler address]",
    )
    p.add_argument(
        "--cluster",
        default=env.get("GRIDHUB_CLUSTER_NAME"),
        help="cluster name [GRIDHUB_CLUSTER_NAME; default: scheduler address path]",
    )
    p.add_argument(
        "--worker-name",
        default=env.get("GRIDHUB_WORKER_NAME"),
        help="worker name for the route [GRIDHUB_WORKER_NAME; default: --name]",
    )
    p.add_argument(
        "--key",
        default=env.get("DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY"),
        help="the cluster's private key, PEM [DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY]",
    )
    p.add_argument(
        "--facility-ca",
        default=env.get("GRIDHUB_FACILITY_CA"),
        help="CA file for Traefik's certificate [GRIDHUB_FACILITY_CA; default: system]",
    )
    p.add_argument(
        "--insecure-facility-tls",
        action="store_true",
        default=env.get("GRIDHUB_FACILITY_TLS_INSECURE", "") in ("1", "true"),
        help="do not verify Traefik's certificate (tests only)",
    )
    p.add_argument("--tunnel-sni", default=env.get("GRIDHUB_TUNNEL_SNI", TUNNEL_SNI))
    p.add_argument(
        "--ssh-host-key",
        default=env.get("GRIDHUB_TUNNEL_HOST_KEY"),
        help="pin the tunnel server's SSH host key (OpenSSH public key line) "
        "[GRIDHUB_TUNNEL_HOST_KEY]; required by --client openssh; without it the "
        "asyncssh client trusts the TLS-verified facility",
    )
    p.add_argument(
        "--client",
        choices=CLIENTS,
        default=env.get("GRIDHUB_TUNNEL_CLIENT", "auto") or "auto",
        help="SSH client of the reverse path: openssh (plain SSH, needs ssh and a "
        "pinned host key), asyncssh (SSH in TLS), auto: openssh when possible "
        "[GRIDHUB_TUNNEL_CLIENT]",
    )
    p.add_argument(
        "--no-reverse-path",
        dest="reverse_path",
        action="store_false",
        default=env.get("GRIDHUB_REVERSE_PATH", "1") not in ("0", "false", "no"),
        help="no tunnel: run dask worker as given [GRIDHUB_REVERSE_PATH=0]",
    )
    p.add_argument(
        "--dask-worker",
        default=env.get("GRIDHUB_DASK_WORKER_CMD"),
        help="command that starts the worker (default: this Python's dask worker)",
    )
    p.add_argument(
        "--stop-grace",
        type=float,
        default=10.0,
        help="seconds between SIGTERM and SIGKILL for the worker",
    )
    p.add_argument(
        "--keepalive",
        type=float,
        default=15.0,
        help="SSH keepalive interval; 4 missed keepalives drop the tunnel",
    )
    p.add_argument("--connect-timeout", type=float, default=60.0)
    p.add_argument(
        "--reconnect-for",
        type=float,
        default=float(env.get("GRIDHUB_TUNNEL_RECONNECT", "120")),
        help="seconds to keep re-opening a dropped reverse path (the same route) "
        "before stopping the worker; 0: stop at once [GRIDHUB_TUNNEL_RECONNECT]",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    ns = p.parse_args(ours)
    ns.dask_args = dask_args
    scheduler = _first_positional(dask_args)
    if ns.reverse_path:
        if scheduler is None or not scheduler.startswith("gateway://"):
            p.error("the dask worker arguments must start with gateway://<traefik>/<cluster>")
        u = urlparse(scheduler)
        ns.facility = ns.facility or u.netloc
        ns.cluster = ns.cluster or u.path.strip("/")
        if not ns.key:
            p.error("no cluster key (--key or DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY)")
        if not ns.cluster:
            p.error("no cluster name")
        if ns.client == "openssh" and not ns.ssh_host_key:
            p.error("--client openssh needs the pinned host key (GRIDHUB_TUNNEL_HOST_KEY)")
    ns.worker_name = ns.worker_name or _opt_value(dask_args, "--name")
    ns.dask_cmd = ns.dask_worker.split() if ns.dask_worker else list(DEFAULT_DASK_WORKER)
    return ns


def worker_command(ns: argparse.Namespace, port: int | None, route: str | None) -> list[str]:
    args = list(ns.dask_args)
    if port is not None and route is not None:
        args += [
            "--listen-address",
            f"tls://127.0.0.1:{port}",
            "--contact-address",
            f"gateway://{ns.facility}/{route}",
        ]

        # The nanny would need a reverse path of its own: one process per job.
        if "--nanny" not in args and "--no-nanny" not in args:
            args.append("--no-nanny")
        # Workers of one site also talk directly (off per site by the deployer).
        args += ["--preload", DIRECT_PEERS_PRELOAD]
    # The protocol would otherwise follow the scheduler address (gateway://),
    # which can only dial, not listen.
    scheduler = _first_positional(args) or ""
    if scheduler.startswith("gateway://") and "--protocol" not in args:
        args += ["--protocol", "tls"]
    return [*ns.dask_cmd, *args]


def choose_client(ns: argparse.Namespace) -> str:
    """``openssh`` or ``asyncssh`` for ``ns.client`` (``auto``: see the module doc)."""
    if ns.client != "auto":
        return ns.client
    if ssh_binary() and ns.ssh_host_key:
        return "openssh"
    return "asyncssh"


Tunnel = asyncssh.SSHClientConnection | OpenSSHTunnel


async def open_tunnel(ns: argparse.Namespace, route: str, port: int, client: str) -> Tunnel:
    """The reverse path for ``route`` -> 127.0.0.1:``port``; the result has
    ``close()`` and ``await wait_closed()`` (closed: the path is gone)."""
    if client == "openssh":
        host, _, tport = ns.facility.rpartition(":")
        ssh = ssh_binary()
        if ssh is None:
            raise OpenSSHError("no ssh binary")
        return await open_openssh(
            ssh=ssh,
            host=host.strip("[]"),
            port=int(tport),
            user=ns.cluster,
            route=route,
            local_port=port,
            key_file=ns.key,
            host_key=ns.ssh_host_key or "",
            keepalive=ns.keepalive,
            connect_timeout=ns.connect_timeout,
        )
    conn, _listener = await open_asyncssh(ns, route, port)
    return conn


async def open_asyncssh(
    ns: argparse.Namespace, route: str, port: int
) -> tuple[asyncssh.SSHClientConnection, asyncssh.SSHListener]:
    host, _, tport = ns.facility.rpartition(":")
    key = asyncssh.read_private_key(ns.key)
    known_hosts: Any = None
    if ns.ssh_host_key:
        known_hosts = ([asyncssh.import_public_key(ns.ssh_host_key)], [], [])
    tunnel = TLSTunnel(
        facility_ssl_context(ns.facility_ca, ns.insecure_facility_tls), ns.tunnel_sni
    )
    conn = await asyncio.wait_for(
        asyncssh.connect(
            host.strip("[]"),
            int(tport),
            tunnel=tunnel,
            username=ns.cluster,
            client_keys=[key],
            known_hosts=known_hosts,
            agent_path=None,
            preferred_auth="publickey",
            config=None,
            keepalive_interval=ns.keepalive,
            keepalive_count_max=4,
            **SSH_OPTIONS,
        ),
        ns.connect_timeout,
    )
    try:
        listener = await conn.forward_remote_port(route, 0, "127.0.0.1", port)
    except Exception:
        conn.close()
        raise
    return conn, listener


async def _terminate(proc: asyncio.subprocess.Process, grace: float) -> int:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return proc.returncode if proc.returncode is not None else 1


async def run(ns: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    conn = None
    route = ""
    port = 0
    if ns.reverse_path:
        port = free_port()
        route = route_name(ns.cluster, ns.worker_name)
        ns.chosen_client = choose_client(ns)
        try:
            conn = await open_tunnel(ns, route, port, ns.chosen_client)
        except OPEN_ERRORS as e:
            if not (ns.client == "auto" and ns.chosen_client == "openssh"):
                log.error(
                    "gridhub-worker: cannot open the reverse path via %s (%s): %s",
                    ns.facility,
                    ns.chosen_client,
                    e,
                )
                return EXIT_TUNNEL
            # A facility without the plain SSH route, or a site letting only
            # TLS out: the TLS-wrapped path may still get through.
            log.warning("gridhub-worker: openssh path failed (%s); trying asyncssh over TLS", e)
            ns.chosen_client = "asyncssh"
            try:
                conn = await open_tunnel(ns, route, port, ns.chosen_client)
            except OPEN_ERRORS as e2:
                log.error(
                    "gridhub-worker: cannot open the reverse path via %s: %s", ns.facility, e2
                )
                return EXIT_TUNNEL
        log.info(
            "gridhub-worker: reverse path %s -> 127.0.0.1:%d open (route %s, client %s)",
            ns.facility,
            port,
            route,
            ns.chosen_client,
        )
        cmd = worker_command(ns, port, route)
    else:
        cmd = worker_command(ns, None, None)

    log.info("gridhub-worker: starting %s", " ".join(cmd))
    proc = await asyncio.create_subprocess_exec(*cmd)
    worker_done = asyncio.ensure_future(proc.wait())
    stopping = asyncio.ensure_future(stop.wait())
    code = EXIT_TUNNEL
    try:
        while True:
            waits: set[asyncio.Future[Any]] = {worker_done, stopping}
            tunnel_down = asyncio.ensure_future(conn.wait_closed()) if conn else None
            if tunnel_down is not None:
                waits.add(tunnel_down)
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if tunnel_down is not None and tunnel_down not in done:
                tunnel_down.cancel()
            if worker_done in done:
                code = proc.returncode or 0
                log.info("gridhub-worker: worker exited with %s", code)
                break
            if stopping in done:
                log.info("gridhub-worker: signal received, stopping the worker")
                code = await _terminate(proc, ns.stop_grace)
                break
            # The reverse path dropped (a gateway restart, a network blip):
            # the worker keeps its state while we re-open the same route.
            conn = await reopen_tunnel(ns, route, port, stopping)
            if conn is None:
                log.error("gridhub-worker: reverse path closed, stopping the worker")
                await _terminate(proc, ns.stop_grace)
                code = EXIT_TUNNEL
                break
    finally:
        for f in (worker_done, stopping):
            f.cancel()
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 5)
        if proc.returncode is None:
            await _terminate(proc, ns.stop_grace)
    return code


async def reopen_tunnel(
    ns: argparse.Namespace, route: str, port: int, stopping: asyncio.Future
) -> Tunnel | None:
    """Re-open ``route`` for up to ``ns.reconnect_for`` seconds; None if not."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ns.reconnect_for
    delay = 0.5
    while loop.time() < deadline and not stopping.done():
        log.warning("gridhub-worker: reverse path dropped, re-opening route %s", route)
        try:
            conn = await open_tunnel(ns, route, port, ns.chosen_client)
        except OPEN_ERRORS as e:
            log.warning("gridhub-worker: re-opening failed: %s", e)
        else:
            log.info("gridhub-worker: reverse path re-opened (route %s)", route)
            return conn
        await asyncio.wait([stopping], timeout=min(delay, max(0.0, deadline - loop.time())))
        delay = min(delay * 2, 5.0)
    return None


def main(argv: Sequence[str] | None = None) -> None:
    ns = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if not ns.verbose:
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
    sys.exit(run_event_loop(run(ns)))


if __name__ == "__main__":
    main()
