"""The facility side of the reverse path: an SSH server that only forwards.

Grid workers connect (through Traefik, which terminates the outer TLS of SNI
``gridhub-tunnel``), log in as their cluster with the cluster's own key and
ask for remote forwards named ``<cluster>-<worker>``. For each forward the
server listens on an ephemeral port of ``forward_host`` (an address Traefik
can reach, nothing public) and carries each connection to the worker over the
SSH channel. The route table ``{route: (host, port)}`` is what the Traefik
dynamic configuration turns into SNI routes.

No shell, exec, subsystem (sftp), agent, X11, local (direct-tcpip) or UNIX
forwarding: asyncssh refuses all of them unless a handler allows them, and
none does here.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh

from ..files import write_private
from .common import (
    CHANNEL_WINDOW,
    MAX_PKTSIZE,
    ssh_public_key,
    valid_route_for,
)

log = logging.getLogger("gridhub.tunnel.server")

KeyLookup = Callable[[str], Any]
"""``authorized_key(cluster_name)``: the cluster's public key (anything
:func:`gridhub.tunnel.common.ssh_public_key` reads), ``None`` for an unknown
cluster. May be a coroutine function."""

Routes = dict[str, tuple[str, int]]

HOST_KEY_NAME = "ssh_host_ed25519_key"
_PP2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
# Forwards one connection may hold (one per worker is the normal case).
MAX_FORWARDS_PER_CONNECTION = 4


def load_or_create_host_key(state_dir: str | os.PathLike[str]) -> asyncssh.SSHKey:
    """The server's host key: generated once (mode 0600), then reused."""
    path = Path(state_dir) / HOST_KEY_NAME
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519")
        data = key.export_private_key()
        with contextlib.suppress(FileExistsError):  # another process won the race
            write_private(path, data, replace=False)
    return asyncssh.read_private_key(str(path))


class _Forward:
    """The listener behind one route; asyncssh closes it on cancel/close."""

    def __init__(self, server: TunnelServer, route: str, listener: asyncssh.SSHListener):
        self._server = server
        self.route = route
        self._listener = listener

    def get_port(self) -> int:
        return self._listener.get_port()

    def get_addresses(self) -> list[tuple]:
        return self._listener.get_addresses()  # type: ignore[attr-defined]  # (not in its stubs)

    def close(self) -> None:
        self._listener.close()
        self._server._drop_route(self.route, self)

    async def wait_closed(self) -> None:
        await self._listener.wait_closed()


class _Session(asyncssh.SSHServer):
    """One worker's SSH connection."""

    def __init__(self, server: TunnelServer, peer: str):
        self._server = server
        self.peer = peer
        self.cluster: str | None = None
        self._key: asyncssh.SSHKey | None = None
        self._conn: asyncssh.SSHServerConnection | None = None
        self.forwards: list[_Forward] = []

    # -- connection ---------------------------------------------------
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn

    def connection_lost(self, exc: Exception | None) -> None:
        for fwd in list(self.forwards):
            self._server._drop_route(fwd.route, fwd)
        self.forwards.clear()
        if self.cluster is not None:
            log.info(
                "tunnel closed: cluster=%s peer=%s (%s)", self.cluster, self.peer, exc or "eof"
            )

    # -- authentication: public key only, user = cluster name ----------
    async def begin_auth(self, username: str) -> bool:
        try:
            found = self._server.authorized_key(username)
            if inspect.isawaitable(found):
                found = await found
            self._key = ssh_public_key(found) if found is not None else None
        except Exception as e:
            log.warning(
                "tunnel refused: cluster=%s peer=%s reason=key lookup failed: %s",
                username,
                self.peer,
                e,
            )
            self._key = None
            return True
        if self._key is None:
            log.warning(
                "tunnel refused: cluster=%s peer=%s reason=unknown cluster", username, self.peer
            )
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        if self._key is None:
            return False  # already logged in begin_auth
        if key.public_data != self._key.public_data:
            log.warning(
                "tunnel refused: cluster=%s peer=%s reason=wrong key (%s)",
                username,
                self.peer,
                key.get_fingerprint(),
            )
            return False
        return True

    def auth_completed(self) -> None:
        assert self._conn is not None
        self.cluster = self._conn.get_extra_info("username")
        log.info("tunnel opened: cluster=%s peer=%s", self.cluster, self.peer)

    # -- what a client may ask for: remote TCP forwards only -------------
    def server_requested(self, listen_host: str, listen_port: int) -> Any:
        cluster = self.cluster or ""
        route = listen_host.lower()
        if not valid_route_for(cluster, route):
            log.warning(
                "tunnel forward refused: cluster=%s peer=%s route=%s "
                "reason=route name not <cluster>-<worker>",
                cluster,
                self.peer,
                route,
            )
            return False
        stale = self._server._route_owner.get(route)
        if stale is not None:
            # Only a holder of this cluster's key gets here: a worker whose
            # old connection died unnoticed is re-opening its own route.
            log.info(
                "tunnel route %s taken over by cluster=%s peer=%s (reconnect)",
                route,
                cluster,
                self.peer,
            )
            stale.close()
        if len(self.forwards) >= MAX_FORWARDS_PER_CONNECTION:
            log.warning(
                "tunnel forward refused: cluster=%s peer=%s route=%s reason=too many forwards",
                cluster,
                self.peer,
                route,
            )
            return False
        return self._open_forward(route)

    async def _open_forward(self, route: str) -> _Forward | bool:
        assert self._conn is not None
        if route in self._server._routes:
            return False
        # Listen on an ephemeral facility-internal port; each connection
        # there becomes a forwarded-tcpip channel to the worker for the
        # (route, port) it asked for.
        listener = await self._conn.forward_local_port(self._server.forward_host, 0, route, 0)
        fwd = _Forward(self._server, route, listener)
        self.forwards.append(fwd)
        self._server._add_route(route, (self._server.advertise_host, listener.get_port()), fwd)
        log.info(
            "tunnel route up: %s -> %s:%d (cluster=%s peer=%s)",
            route,
            self._server.advertise_host,
            listener.get_port(),
            self.cluster,
            self.peer,
        )
        return fwd


class TunnelServer:
    """asyncssh server for the reverse path.

    Parameters
    ----------
    authorized_key:
        ``authorized_key(cluster_name)`` -> that cluster's public key (SSHKey,
        X.509 cert PEM, key PEM or OpenSSH line) or ``None``; may be async.
    state_dir:
        Where the host key is generated once (0600) and then reused.
    listen_host, listen_port:
        Where the SSH server listens (Traefik's ``gridhub-tunnel`` route
        points here). Port 0: ephemeral; see :attr:`port` after start().
    forward_host:
        Bind address for route listeners (reachable by Traefik only).
    advertise_host:
        Host put in the route table (default: ``forward_host``; set it when
        binding to 0.0.0.0).
    on_change:
        Called with a copy of the route table after each change (may be
        async).
    proxy_protocol:
        Expect a PROXY protocol v1/v2 header from Traefik on each
        connection, so that logs show the worker's real address.
    keepalive_interval, keepalive_count_max:
        SSH keepalives: a silent worker's routes go after about
        interval * count_max seconds.
    """

    def __init__(
        self,
        authorized_key: KeyLookup,
        state_dir: str | os.PathLike[str],
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        forward_host: str = "127.0.0.1",
        advertise_host: str | None = None,
        on_change: Callable[[Routes], Any] | None = None,
        proxy_protocol: bool = False,
        keepalive_interval: float = 15.0,
        keepalive_count_max: int = 4,
        login_timeout: float = 30.0,
    ):
        self.authorized_key = authorized_key
        self.state_dir = Path(state_dir)
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.forward_host = forward_host
        self.advertise_host = advertise_host or forward_host
        self.on_change = on_change
        self.proxy_protocol = proxy_protocol
        self.keepalive_interval = keepalive_interval
        self.keepalive_count_max = keepalive_count_max
        self.login_timeout = login_timeout
        self._routes: Routes = {}
        self._route_owner: dict[str, _Forward] = {}
        self._sock: socket.socket | None = None
        self._accept_task: asyncio.Task | None = None
        self._conns: set[asyncssh.SSHServerConnection] = set()
        self._tasks: set[asyncio.Task] = set()
        self._options: asyncssh.SSHServerConnectionOptions | None = None
        self.port: int | None = None

    # -- lifecycle -------------------------------------------------------
    @property
    def address(self) -> str:
        """``host:port`` of the SSH listener (for Traefik's tunnel service)."""
        return f"{self.listen_host}:{self.port}"

    @property
    def routes(self) -> Routes:
        return dict(self._routes)

    @property
    def host_public_key(self) -> str:
        """The host key as an OpenSSH public key line: what workers pin
        (``GRIDHUB_TUNNEL_HOST_KEY``; the openssh client requires it)."""
        key = load_or_create_host_key(self.state_dir)
        return key.export_public_key().decode().strip()

    async def start(self) -> None:
        host_key = load_or_create_host_key(self.state_dir)
        self._options = asyncssh.SSHServerConnectionOptions(
            server_host_keys=[host_key],
            keepalive_interval=self.keepalive_interval,
            keepalive_count_max=self.keepalive_count_max,
            login_timeout=self.login_timeout,
            allow_scp=False,
            agent_forwarding=False,
            x11_forwarding=False,
            # Large windows: bulk Dask transfers go over these channels.
            window=CHANNEL_WINDOW,
            max_pktsize=MAX_PKTSIZE,
        )
        family = socket.AF_INET6 if ":" in self.listen_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.listen_host, self.listen_port))
        sock.listen(128)
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._accept_task = asyncio.create_task(self._accept_loop())
        log.info("tunnel server listening on %s (forwards on %s)", self.address, self.forward_host)

    async def stop(self) -> None:
        if self._accept_task:
            self._accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept_task
            self._accept_task = None
        if self._sock:
            self._sock.close()
            self._sock = None
        for t in list(self._tasks):
            t.cancel()
        for conn in list(self._conns):
            conn.close()
        for conn in list(self._conns):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 5)
        self._conns.clear()
        if self._routes:
            self._routes.clear()
            self._route_owner.clear()
            self._notify()

    async def __aenter__(self) -> TunnelServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- connections -----------------------------------------------------
    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        while True:
            try:
                sock, addr = await loop.sock_accept(self._sock)
            except OSError as e:  # e.g. EMFILE: back off, keep serving
                log.error("tunnel accept failed: %s", e)
                await asyncio.sleep(0.5)
                continue
            t = asyncio.create_task(self._handle(sock, addr))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _handle(self, sock: socket.socket, addr: Any) -> None:
        peer = f"{addr[0]}:{addr[1]}"
        try:
            if self.proxy_protocol:
                header = await asyncio.wait_for(read_proxy_header(sock), 10)
                peer = header or peer
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = await asyncssh.run_server(
                sock, options=self._options, server_factory=lambda: _Session(self, peer)
            )
        except Exception as e:
            log.warning("tunnel refused: peer=%s reason=%s", peer, _why(e))
            sock.close()
            return
        self._conns.add(conn)
        try:
            await conn.wait_closed()
        finally:
            self._conns.discard(conn)

    # -- routes ------------------------------------------------------------
    def _add_route(self, route: str, hostport: tuple[str, int], owner: _Forward) -> None:
        self._routes[route] = hostport
        self._route_owner[route] = owner
        self._notify()

    def _drop_route(self, route: str, owner: _Forward) -> None:
        if self._route_owner.get(route) is owner:
            del self._routes[route]
            del self._route_owner[route]
            log.info("tunnel route down: %s", route)
            self._notify()

    def _notify(self) -> None:
        if self.on_change is None:
            return
        try:
            r = self.on_change(dict(self._routes))
            if inspect.isawaitable(r):
                t = asyncio.ensure_future(r)
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)
        except Exception:
            log.exception("tunnel on_change callback failed")


def _why(e: BaseException) -> str:
    if isinstance(e, asyncssh.PermissionDenied):
        return "authentication failed"
    if isinstance(e, asyncssh.DisconnectError):
        return f"{type(e).__name__}: {e.reason}"
    if isinstance(e, asyncio.TimeoutError):
        return "timeout"
    return f"{type(e).__name__}: {e}"


async def read_proxy_header(sock: socket.socket) -> str | None:
    """Read a PROXY protocol v1 or v2 header (exactly its bytes) from
    ``sock``; return the original ``host:port`` or None (LOCAL/UNKNOWN)."""
    loop = asyncio.get_running_loop()

    async def recv_exact(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = await loop.sock_recv(sock, n - len(buf))
            if not chunk:
                raise ConnectionError("closed during PROXY header")
            buf += chunk
        return buf

    head = await recv_exact(12)
    if head == _PP2_SIG:
        ver_cmd, fam, length = struct.unpack("!BBH", await recv_exact(4))
        body = await recv_exact(length)
        if ver_cmd >> 4 != 2:
            raise ConnectionError("bad PROXY v2 version")
        if ver_cmd & 0xF == 0:  # LOCAL
            return None
        if fam >> 4 == 1 and length >= 12:
            return f"{ipaddress.IPv4Address(body[0:4])}:{struct.unpack('!H', body[8:10])[0]}"
        if fam >> 4 == 2 and length >= 36:
            return f"[{ipaddress.IPv6Address(body[0:16])}]:{struct.unpack('!H', body[32:34])[0]}"
        return None
    if head.startswith(b"PROXY "):
        line = head
        while not line.endswith(b"\r\n"):
            if len(line) > 107:
                raise ConnectionError("PROXY v1 header too long")
            line += await recv_exact(1)
        parts = line.decode("ascii").split()
        if len(parts) >= 6 and parts[1] in ("TCP4", "TCP6"):
            return f"{parts[2]}:{parts[4]}"
        return None
    raise ConnectionError("no PROXY protocol header")
