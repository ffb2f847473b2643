"""gridhub.tunnel's coalesced asyncssh input: same bytes, any chunking.

The SSH stream is relayed through a TCP proxy that cuts it into small,
odd-sized pieces (as TLS records through Traefik arrive), so packets are
split across many ``data_received`` calls; 8 MB go through an SSH channel
and back, and keepalives still work across a long partial packet.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random

import asyncssh
import pytest
from gridhub.tunnel.common import CHANNEL_WINDOW, MAX_PKTSIZE, coalesce_ssh_input


class _Echo(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False  # no auth needed: this tests the packet layer only


async def _echo_session(process: asyncssh.SSHServerProcess) -> None:
    try:
        while True:
            data = await process.stdin.read(1 << 20)
            if not data:
                break
            process.stdout.write(data)
        await process.stdout.drain()
    finally:
        process.exit(0)


async def _dribble_proxy(target_port: int) -> asyncio.base_events.Server:
    rng = random.Random(4)  # noqa: S311 (chunk sizes, not secrets)

    async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(1 << 16):
                i = 0
                while i < len(data):
                    n = rng.choice((1, 7, 100, 1500, 16384 + 29, 40000))
                    w.write(data[i : i + n])
                    i += n
                    await w.drain()
                    if rng.random() < 0.3:
                        await asyncio.sleep(0)
        finally:
            w.close()

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pump(cr, sw), pump(sr, cw), return_exceptions=True)

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_bytes_survive_any_chunking(loop_kind: str) -> None:
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    else:
        runner = asyncio.Runner()
    coalesce_ssh_input()
    assert asyncssh.connection.SSHConnection._gridhub_coalesce
    with runner:
        runner.run(_roundtrip())


async def _roundtrip() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[key],
        server_factory=_Echo,
        process_factory=_echo_session,
        encoding=None,
        window=CHANNEL_WINDOW,
        max_pktsize=MAX_PKTSIZE,
        keepalive_interval=0.2,
        keepalive_count_max=3,
    )
    port = server.sockets[0].getsockname()[1]
    proxy = await _dribble_proxy(port)
    pport = proxy.sockets[0].getsockname()[1]
    payload = os.urandom(8 * 1024 * 1024)
    try:
        async with asyncssh.connect(
            "127.0.0.1",
            pport,
            known_hosts=None,
            username="x",
            client_keys=None,
            agent_path=None,
            config=None,
            window=CHANNEL_WINDOW,
            max_pktsize=MAX_PKTSIZE,
            encryption_algs=["aes128-gcm@openssh.com"],
        ) as conn:
            proc = await conn.create_process(encoding=None)
            got = bytearray()

            async def reader() -> None:
                while chunk := await proc.stdout.read(1 << 20):
                    got.extend(chunk)

            rt = asyncio.create_task(reader())
            for i in range(0, len(payload), 300_001):
                proc.stdin.write(payload[i : i + 300_001])
                await proc.stdin.drain()
            proc.stdin.write_eof()
            await asyncio.wait_for(rt, 120)
            await proc.wait()
            assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
            # the connection is still healthy: keepalives answered while idle
            await asyncio.sleep(1.0)
            assert (await conn.run("x", encoding=None, input=b"ok")).stdout == b"ok"
    finally:
        proxy.close()
        server.close()
