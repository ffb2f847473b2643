"""``python -m gridhub.tunnel``: a stand-alone facility side.

Runs a :class:`TunnelServer` and serves Traefik's dynamic configuration for
fixed schedulers plus the live tunnel routes. The gateway backend embeds the
same pieces; this runner is for tests, benchmarks and small setups::

    python -m gridhub.tunnel --state-dir /var/lib/gridhub/tunnel \\
        --listen 127.0.0.1:0 --config-listen 127.0.0.1:8099 --token-file tok \\
        --cluster NAME=tls://127.0.0.1:8786,/path/NAME.crt [--ready-file f.json]

``--cluster`` registers a scheduler route and the cluster's key (from its
certificate). The ready file gets ``{"tunnel": "host:port", "config":
"http://host:port/traefik"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
from pathlib import Path

from aiohttp import web

from .common import run_event_loop
from .server import TunnelServer
from .traefik import dynamic_config, make_traefik_handler


def _hostport(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


def _write_ready(path: str, data: dict) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


async def serve(
    ns: argparse.Namespace, schedulers: dict[str, str], keys: dict[str, bytes], token: str
) -> None:

    host, port = _hostport(ns.listen)
    server = TunnelServer(
        keys.get,
        ns.state_dir,
        listen_host=host,
        listen_port=port,
        forward_host=ns.forward_host,
        proxy_protocol=ns.proxy_protocol,
        keepalive_interval=ns.keepalive,
    )
    await server.start()

    def config() -> dict:
        return dynamic_config(
            schedulers, {}, server.routes, server.address, proxy_protocol=ns.proxy_protocol
        )

    app = web.Application()
    app.router.add_get("/traefik", make_traefik_handler(config, token))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    chost, cport = _hostport(ns.config_listen)
    site = web.TCPSite(runner, chost, cport)
    await site.start()
    cport = runner.addresses[0][1]
    if ns.ready_file:
        _write_ready(
            ns.ready_file,
            {"tunnel": server.address, "config": f"http://{chost}:{cport}/traefik"},
        )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await server.stop()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m gridhub.tunnel")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--listen", default="127.0.0.1:0", help="SSH listener host:port")
    p.add_argument("--forward-host", default="127.0.0.1", help="bind host of route listeners")
    p.add_argument("--config-listen", default="127.0.0.1:0", help="Traefik provider host:port")
    p.add_argument("--token-file", required=True)
    p.add_argument("--cluster", action="append", default=[], metavar="NAME=ADDR,CERT")
    p.add_argument("--proxy-protocol", action="store_true")
    p.add_argument("--keepalive", type=float, default=15.0)
    p.add_argument("--ready-file")
    ns = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    schedulers: dict[str, str] = {}
    keys: dict[str, bytes] = {}
    for spec in ns.cluster:
        name, _, rest = spec.partition("=")
        addr, _, cert = rest.partition(",")
        schedulers[name] = addr
        keys[name] = Path(cert).read_bytes()
    token = Path(ns.token_file).read_text().strip()
    run_event_loop(serve(ns, schedulers, keys, token))


if __name__ == "__main__":
    main()
