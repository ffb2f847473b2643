"""gridhub-worker's OpenSSH data path: ``ssh -N -R`` as a child process.

Why: the asyncssh client inside TLS to Traefik costs ~25 ms of CPU per MB
over all processes; OpenSSH's client with no outer TLS (plain SSH to the
facility's Dask port, which Traefik routes to the same tunnel server)
costs about half (docs/reverse-path.md, "Candidate data paths"). Without
the TLS leg nothing checks the facility's certificate, so the server's SSH
host key must be pinned: this path is only used with one.

Secrets stay off the command line: the cluster key is re-exported in
OpenSSH format to a 0600 file in a private (0700) temporary directory that
is removed when the tunnel closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import tempfile
from pathlib import Path

import asyncssh

from ..files import write_private
from .common import TUNNEL_SNI

log = logging.getLogger("gridhub.tunnel.worker")

#: ssh's INFO line once the server accepted the remote forward (listen port 0).
_READY = re.compile(r"Allocated port (\d+) for remote forward")
#: Same preference as the asyncssh client (AES-GCM: AES-NI, no MAC pass).
SSH_CIPHERS = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com"
_KEEP_STDERR = 20


class OpenSSHError(Exception):
    """ssh could not open the reverse path (its last messages attached)."""


def ssh_binary() -> str | None:
    return shutil.which("ssh")


def known_hosts_line(alias: str, host_key: str) -> str:
    """``<alias> <type> <base64>`` from an OpenSSH public key line (checked)."""
    key = asyncssh.import_public_key(host_key.strip())
    kind, b64 = key.export_public_key("openssh").decode().split()[:2]
    return f"{alias} {kind} {b64}\n"


def ssh_command(
    ssh: str,
    host: str,
    port: int,
    user: str,
    forward: str,
    identity: Path,
    known_hosts: Path,
    *,
    keepalive: float,
    connect_timeout: float,
    alias: str = TUNNEL_SNI,
) -> list[str]:
    """The ``ssh`` argv: no user or system config (``-F /dev/null``), key
    only, pinned host key, no agent/X11/tty, exit if the forward fails."""
    opts = {
        "BatchMode": "yes",
        "IdentitiesOnly": "yes",
        "IdentityAgent": "none",
        "PreferredAuthentications": "publickey",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "HostbasedAuthentication": "no",
        "ForwardAgent": "no",
        "ForwardX11": "no",
        "UserKnownHostsFile": str(known_hosts),
        "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": "yes",
        # the known_hosts entry names the service, not host:port, so the
        # same pin holds whatever address the job got for the facility
        "HostKeyAlias": alias,
        "CheckHostIP": "no",
        "UpdateHostKeys": "no",
        "ExitOnForwardFailure": "yes",
        "ServerAliveInterval": str(max(1, round(keepalive))),
        "ServerAliveCountMax": "4",
        "ConnectTimeout": str(max(1, round(connect_timeout))),
        "Ciphers": SSH_CIPHERS,
        "Compression": "no",
        # INFO prints "Allocated port N for remote forward": our ready signal
        "LogLevel": "INFO",
    }
    argv = [ssh, "-F", "/dev/null", "-N", "-T", "-i", str(identity), "-l", user, "-p", str(port)]
    for k, v in opts.items():
        argv += ["-o", f"{k}={v}"]
    return [*argv, "-R", forward, host]


class OpenSSHTunnel:
    """A running ``ssh -N -R``: ``close()`` / ``await wait_closed()`` like an
    asyncssh connection, so gridhub-worker supervises both the same way."""

    def __init__(self, proc: asyncio.subprocess.Process, workdir: str):
        self.proc = proc
        self._workdir = workdir
        self._lines: list[str] = []
        self._drain: asyncio.Task | None = None

    async def wait_ready(self) -> int:
        """Wait for the allocated facility port; raise if ssh exits first."""
        assert self.proc.stderr is not None
        while raw := await self.proc.stderr.readline():
            line = raw.decode(errors="replace").rstrip()
            self._remember(line)
            m = _READY.search(line)
            if m:
                self._drain = asyncio.ensure_future(self._log_rest())
                return int(m.group(1))
            log.debug("ssh: %s", line)
        code = await self.proc.wait()
        self._cleanup()
        raise OpenSSHError(f"ssh exited with {code}: {self.last()}")

    def _remember(self, line: str) -> None:
        self._lines = [*self._lines[-(_KEEP_STDERR - 1) :], line]

    def last(self) -> str:
        return " | ".join(line for line in self._lines if line) or "(no message)"

    async def _log_rest(self) -> None:
        assert self.proc.stderr is not None
        while raw := await self.proc.stderr.readline():
            line = raw.decode(errors="replace").rstrip()
            self._remember(line)
            log.warning("ssh: %s", line)

    def close(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()

    async def wait_closed(self) -> None:
        await self.proc.wait()
        if self._drain is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._drain, 2)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = ""


async def open_openssh(
    *,
    ssh: str,
    host: str,
    port: int,
    user: str,
    route: str,
    local_port: int,
    key_file: str,
    host_key: str,
    keepalive: float,
    connect_timeout: float,
) -> OpenSSHTunnel:
    """Start ``ssh -N -R <route>:0:127.0.0.1:<local_port>`` to ``host:port``
    (plain SSH) and return once the server has allocated the route's port.

    The route name goes in the bind-address field: the tunnel server reads
    it as the route (``<cluster>-<worker>``) and picks the port itself.
    """
    workdir = tempfile.mkdtemp(prefix="gridhub-ssh-")  # mode 0700
    try:
        identity = write_private(
            Path(workdir) / "id",
            asyncssh.read_private_key(key_file).export_private_key("openssh"),
            replace=False,
        )
        known = write_private(
            Path(workdir) / "known_hosts", known_hosts_line(TUNNEL_SNI, host_key), replace=False
        )
        argv = ssh_command(
            ssh,
            host,
            port,
            user,
            f"{route}:0:127.0.0.1:{local_port}",
            identity,
            known,
            keepalive=keepalive,
            connect_timeout=connect_timeout,
        )
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    tunnel = OpenSSHTunnel(proc, workdir)
    try:
        async with asyncio.timeout(connect_timeout):
            await tunnel.wait_ready()
    except BaseException as exc:
        tunnel.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(tunnel.wait_closed(), 5)
        tunnel._cleanup()
        if isinstance(exc, TimeoutError):
            raise OpenSSHError(
                f"ssh: no forward after {connect_timeout:.0f} s; {tunnel.last()}"
            ) from None
        raise
    return tunnel
