"""Nobody but the cluster's own workers and clients gets in; refusals are logged."""

from __future__ import annotations

import asyncio

import asyncssh
import pytest
from dask_gateway_server.tls import new_keypair
from distributed import Client
from gridhub.tunnel.worker import EXIT_TUNNEL, SSH_OPTIONS, TLSTunnel, facility_ssl_context
from processes import wait_for
from tunnel_fixtures import (  # noqa: F401
    ClusterCreds,
    Facility,
    facility_fixture,
    tls_probe,
)

pytestmark = pytest.mark.timeout(120)


def _ssh(facility: Facility, user: str, key_file, plain: bool = False):
    """asyncssh to the tunnel service through Traefik: inside TLS (SNI
    gridhub-tunnel) or, ``plain``, as plain SSH to the same port."""
    tunnel = None if plain else TLSTunnel(facility_ssl_context(str(facility.facility_crt)))
    return asyncssh.connect(
        "127.0.0.1",
        facility.dask_port,
        tunnel=tunnel,
        username=user,
        client_keys=[asyncssh.read_private_key(str(key_file))],
        known_hosts=None,
        agent_path=None,
        config=None,
        **SSH_OPTIONS,
    )


@pytest.mark.parametrize("ssh_client", ["asyncssh", "openssh"])
def test_worker_with_another_clusters_key_is_refused(facility: Facility, ssh_client: str):
    w = facility.start_worker("intruder", cluster="alpha", key_of="beta", client=ssh_client)
    wait_for(lambda: not w.alive(), 30, "refused worker to exit")
    assert w.popen.returncode == EXIT_TUNNEL
    assert "cannot open the reverse path" in w.text()
    if ssh_client == "openssh":  # ssh's own reason reaches the job's log
        assert "Permission denied (publickey)" in w.text()
    log = facility.tunnel.text()
    assert "tunnel refused: cluster=alpha" in log and "reason=wrong key" in log
    # the worker's real address, through Traefik's PROXY protocol header
    assert f"peer={w.node.ns_ip}:" in log


def test_openssh_worker_refuses_a_wrong_host_key(facility: Facility):
    """Plain SSH has no TLS certificate to check: the pinned host key is
    what keeps a worker from handing its route to an impostor."""
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    w = facility.start_worker("pinned", client="openssh", host_key=other)
    wait_for(lambda: not w.alive(), 30, "worker to exit")
    assert w.popen.returncode == EXIT_TUNNEL
    assert "Host key verification failed" in w.text()
    assert "tunnel route up" not in facility.tunnel.text()
    # auto with the same wrong pin: the TLS fallback pins it too
    w2 = facility.start_worker("pinned2", client="auto", host_key=other)
    wait_for(lambda: not w2.alive(), 60, "worker to exit")
    assert w2.popen.returncode == EXIT_TUNNEL
    assert "trying asyncssh over TLS" in w2.text()
    assert "tunnel route up" not in facility.tunnel.text()


@pytest.mark.parametrize("plain", [False, True], ids=["tls", "plain"])
def test_stale_key_unknown_cluster_and_foreign_route_are_refused(
    facility: Facility, tmp_path, plain: bool
):
    stale = ClusterCreds("alpha", tmp_path / "stale.crt", tmp_path / "stale.pem")
    cert, key = new_keypair("daskgateway-alpha")  # alpha's name, not alpha's key
    stale.cert.write_bytes(cert)
    stale.key.write_bytes(key)
    beta = facility.creds["beta"]

    async def attempts():
        with pytest.raises(asyncssh.PermissionDenied):
            await _ssh(facility, "alpha", stale.key, plain)
        with pytest.raises(asyncssh.PermissionDenied):
            await _ssh(facility, "gamma", beta.key, plain)
        async with await _ssh(facility, "beta", beta.key, plain) as conn:
            with pytest.raises(asyncssh.ChannelListenError):
                await conn.forward_remote_port("alpha-evil", 0, "127.0.0.1", 9)
            # its own route name is fine
            listener = await conn.forward_remote_port("beta-ok", 0, "127.0.0.1", 9)
            assert listener.get_port() > 0
            # but no shell, exec or local forwarding
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.run("id", check=True)
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.open_connection("127.0.0.1", facility.scheduler_port)

    asyncio.run(attempts())
    log = facility.tunnel.text()
    assert "tunnel refused: cluster=alpha" in log and "reason=wrong key" in log
    assert "tunnel refused: cluster=gamma" in log and "reason=unknown cluster" in log
    assert "route=alpha-evil reason=route name not <cluster>-<worker>" in log
    assert "tunnel route up: beta-ok" in log
    wait_for(lambda: "tunnel route down: beta-ok" in facility.tunnel.text(), 10, "route down")


def test_stranger_client_and_unknown_sni_get_nothing(facility: Facility, tmp_path):
    stranger = ClusterCreds("alpha", tmp_path / "s.crt", tmp_path / "s.pem")
    cert, key = new_keypair("daskgateway-alpha")
    stranger.cert.write_bytes(cert)
    stranger.key.write_bytes(key)
    with pytest.raises((OSError, TimeoutError)):
        Client(facility.scheduler_address, security=stranger.security(), timeout=8)
    wait_for(
        lambda: "TLS handshake failed" in facility.scheduler.text(), 10, "scheduler refusal log"
    )
    # TLS without any client certificate: the scheduler refuses the handshake
    assert not _talks_tls(facility, "daskgateway-alpha")
    # an SNI with no route: Traefik closes the connection (the non-TLS
    # catch-all for plain SSH takes only connections without a ClientHello)
    assert "gridhub-tunnel-ssh" in facility.routes()["tcp"]["routers"]
    assert not tls_probe(facility.dask_port, "daskgateway-nonexistent")
    # the real cluster's client works (sanity)
    with facility.client() as c:
        assert c.scheduler_info()["type"] == "Scheduler"


def _talks_tls(facility: Facility, sni: str) -> bool:
    """Handshake and read one byte: mutual TLS refusals show at the first read
    in TLS 1.3."""
    import socket
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", facility.dask_port), timeout=5) as s:
        try:
            with ctx.wrap_socket(s, server_hostname=sni) as t:
                t.sendall(b"\0" * 8)
                return bool(t.recv(1))
        except (ssl.SSLError, OSError):
            return False
