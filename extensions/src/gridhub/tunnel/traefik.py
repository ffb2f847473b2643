"""Traefik v3 dynamic configuration for schedulers, dashboards and tunnels.

Traefik polls it (HTTP provider) from the gateway: :func:`make_traefik_handler`
wraps a ``get_config()`` callable as an aiohttp handler guarded by a bearer
token. The static side is images/traefik/traefik.yml.tmpl.
"""

from __future__ import annotations

import hmac
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

from .common import SNI_PREFIX, TUNNEL_SNI

#: Entrypoints of images/traefik/traefik.yml.tmpl.
DASK_ENTRYPOINT = "dask"
WEB_ENTRYPOINT = "websecure"
TUNNEL_ROUTER = "gridhub-tunnel"
#: Plain SSH (no TLS) to the same tunnel service on the same entrypoint.
TUNNEL_SSH_ROUTER = "gridhub-tunnel-ssh"
PROXY_PROTOCOL_TRANSPORT = "gridhub-proxy-protocol"
NO_ROUTE = "gridhub-no-route"

_SAFE = re.compile(r"[^A-Za-z0-9_-]")


def _key(kind: str, name: str) -> str:
    # Router/service names: no "@" or "." (Traefik uses them for providers).
    return f"{kind}-{_SAFE.sub('_', name)}"


def _hostport(addr: str | tuple[str, int]) -> str:
    if isinstance(addr, tuple):
        host, port = addr
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    for scheme in ("tls://", "tcp://", "gateway://"):
        if addr.startswith(scheme):
            return addr[len(scheme) :].split("/", 1)[0]
    return addr


def _url(addr: str | tuple[str, int]) -> str:
    if isinstance(addr, str) and addr.startswith(("http://", "https://")):
        return addr.rstrip("/")
    return f"http://{_hostport(addr)}"


def _sni_rule(name: str) -> str:
    return f"HostSNI(`{SNI_PREFIX}{name}`)"


def dynamic_config(
    scheduler_routes: Mapping[str, str | tuple[str, int]],
    dashboard_routes: Mapping[str, str | tuple[str, int]],
    tunnel_routes: Mapping[str, str | tuple[str, int]],
    tunnel_service_address: str | tuple[str, int] | None,
    *,
    gateway_prefix: str = "/services/dask-gateway",
    dask_entrypoint: str = DASK_ENTRYPOINT,
    web_entrypoint: str = WEB_ENTRYPOINT,
    cert_resolver: str | None = None,
    proxy_protocol: bool = False,
    plain_ssh: bool = True,
) -> dict[str, Any]:
    """Traefik v3 dynamic configuration (JSON-able dict).

    ``scheduler_routes``: ``{cluster: "tls://host:port" | "host:port" | (host, port)}``
    -> SNI ``daskgateway-<cluster>`` on the dask entrypoint, TLS passthrough.
    ``dashboard_routes``: ``{cluster: "http://host:port" | (host, port)}`` ->
    ``<gateway_prefix>/clusters/<cluster>/`` on the web entrypoint (prefix
    stripped, as dask-gateway's own proxy does).
    ``tunnel_routes``: ``{route: (host, port)}`` (TunnelServer.routes) -> SNI
    ``daskgateway-<route>``, TLS passthrough: Dask's mutual TLS stays end to
    end between scheduler/worker and the worker behind the tunnel.
    ``tunnel_service_address``: the TunnelServer's SSH listener; SNI
    ``gridhub-tunnel`` with TLS terminated by Traefik (None: no tunnel router).
    ``proxy_protocol``: send PROXY v2 to the tunnel service (then start the
    TunnelServer with ``proxy_protocol=True``) so it logs workers' addresses.
    ``plain_ssh``: also route plain SSH (no TLS) on the dask entrypoint to
    the tunnel service: a non-TLS ``HostSNI(`*`)`` router, which Traefik
    takes for a client that speaks first without a TLS ClientHello (SSH
    does); TLS connections keep their SNI routing.

    An SNI matching no router gets no route: Traefik closes the connection.
    """
    tcp_routers: dict[str, Any] = {}
    tcp_services: dict[str, Any] = {}
    http_routers: dict[str, Any] = {}
    http_services: dict[str, Any] = {}
    middlewares: dict[str, Any] = {}

    def passthrough(kind: str, name: str, addr: str | tuple[str, int]) -> None:
        key = _key(kind, name)
        tcp_routers[key] = {
            "entryPoints": [dask_entrypoint],
            "rule": _sni_rule(name),
            "service": key,
            "tls": {"passthrough": True},
        }
        tcp_services[key] = {"loadBalancer": {"servers": [{"address": _hostport(addr)}]}}

    for name, addr in sorted(scheduler_routes.items()):
        passthrough("dask", name, addr)
    for name, addr in sorted(tunnel_routes.items()):
        if name in scheduler_routes:  # a route may never shadow a scheduler
            continue
        passthrough("tunnel", name, addr)

    if tunnel_service_address:
        service: dict[str, Any] = {
            "loadBalancer": {"servers": [{"address": _hostport(tunnel_service_address)}]}
        }
        tcp_routers[TUNNEL_ROUTER] = {
            "entryPoints": [dask_entrypoint],
            "rule": f"HostSNI(`{TUNNEL_SNI}`)",
            "service": TUNNEL_ROUTER,
            "tls": {"certResolver": cert_resolver} if cert_resolver else {},
        }
        if proxy_protocol:
            service["loadBalancer"]["serversTransport"] = PROXY_PROTOCOL_TRANSPORT
        tcp_services[TUNNEL_ROUTER] = service
        if plain_ssh:
            # The SSH layer already encrypts, authenticates both ends (the
            # worker pins the host key) and carries the cluster key; the
            # outer TLS only served SNI routing and cost the most CPU per MB.
            tcp_routers[TUNNEL_SSH_ROUTER] = {
                "entryPoints": [dask_entrypoint],
                "rule": "HostSNI(`*`)",
                "service": TUNNEL_ROUTER,
            }

    # Without this, Traefik answers an unknown SNI itself (default
    # certificate, then HTTP 404). A lowest-priority passthrough router to a
    # service without servers makes it close the connection instead.
    tcp_routers[NO_ROUTE] = {
        "entryPoints": [dask_entrypoint],
        "rule": "HostSNI(`*`)",
        "priority": 1,
        "service": NO_ROUTE,
        "tls": {"passthrough": True},
    }
    tcp_services[NO_ROUTE] = {"loadBalancer": {"servers": []}}

    prefix = "/" + gateway_prefix.strip("/") if gateway_prefix.strip("/") else ""
    for name, addr in sorted(dashboard_routes.items()):
        key = _key("dashboard", name)
        path = f"{prefix}/clusters/{name}"
        middlewares[key] = {"stripPrefix": {"prefixes": [path]}}
        router: dict[str, Any] = {
            "entryPoints": [web_entrypoint],
            "rule": f"PathPrefix(`{path}/`)",
            "service": key,
            "middlewares": [key],
            "tls": {"certResolver": cert_resolver} if cert_resolver else {},
        }
        http_routers[key] = router
        http_services[key] = {"loadBalancer": {"servers": [{"url": _url(addr)}]}}

    config: dict[str, Any] = {}
    if tcp_routers:
        config["tcp"] = {"routers": tcp_routers, "services": tcp_services}
        if proxy_protocol and tunnel_service_address:
            config["tcp"]["serversTransports"] = {
                PROXY_PROTOCOL_TRANSPORT: {"proxyProtocol": {"version": 2}}
            }
    if http_routers:
        config["http"] = {
            "routers": http_routers,
            "services": http_services,
            "middlewares": middlewares,
        }
    return config


def make_traefik_handler(get_config: Callable[[], Any], token: str) -> Callable[..., Any]:
    """aiohttp handler serving ``get_config()`` (a dict, or awaitable of one)
    as JSON to Traefik's HTTP provider; requires ``Authorization: Bearer
    <token>`` (traefik.yml: ``providers.http.headers``)."""
    from aiohttp import web

    expected = f"Bearer {token}".encode()

    async def handler(request: web.Request) -> web.StreamResponse:
        got = request.headers.get("Authorization", "").encode()
        if not token or not hmac.compare_digest(got, expected):
            return web.json_response({"error": "unauthorized"}, status=401)
        config = get_config()
        if inspect.isawaitable(config):
            config = await config
        return web.json_response(config)

    return handler
