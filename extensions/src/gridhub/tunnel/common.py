"""Names and key handling shared by the worker and the facility side."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
from collections.abc import Coroutine
from typing import Any, TypeVar

import asyncssh
import asyncssh.connection
from cryptography import x509
from cryptography.hazmat.primitives import serialization

#: SNI the worker's SSH-over-TLS leg uses; Traefik terminates this TLS.
TUNNEL_SNI = "gridhub-tunnel"
#: Prefix dask-gateway puts before the path of a gateway:// address.
SNI_PREFIX = "daskgateway-"
# A DNS label is at most 63 characters; "daskgateway-<route>" must fit when
# the cluster name is one label (dask-gateway's names are 32 hex digits).
_MAX_LABEL = 63
_SUFFIX_OK = re.compile(r"[^a-z0-9]+")
T = TypeVar("T")

# SSH channel flow control for bulk Dask transfers (both sides): an 8 MiB
# window keeps a stage of the pipeline busy while the next one is descheduled;
# 256 KiB packets keep the per-packet Python work small per byte.
CHANNEL_WINDOW = 8 * 1024 * 1024
MAX_PKTSIZE = 256 * 1024
#: AES-GCM first: AES-NI through OpenSSL, and no separate MAC pass (asyncssh
#: has no "none" cipher; the SSH layer stays encrypted and authenticated).
CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"]


def route_name(cluster: str, worker: str | None = None) -> str:
    """The route name of one worker of ``cluster``: ``<cluster>-<suffix>``.

    The suffix comes from the worker name (lower-cased, only ``[a-z0-9]``),
    cut so that ``daskgateway-<route>`` stays a valid DNS label, plus a short
    random part so that a restarted worker never collides with its old route.
    """
    cluster = cluster.lower()
    last_label = (SNI_PREFIX + cluster).rsplit(".", 1)[-1]
    room = _MAX_LABEL - len(last_label) - 1  # minus the "-"
    rand = secrets.token_hex(3)
    base = _SUFFIX_OK.sub("", (worker or "").lower())
    if room < len(rand):
        raise ValueError(f"cluster name {cluster!r} too long for a worker route")
    keep = max(0, room - len(rand) - 1)
    suffix = f"{base[:keep]}-{rand}" if base and keep else rand
    return f"{cluster}-{suffix}"


def valid_route_for(cluster: str, route: str) -> bool:
    """A route name ``cluster`` may register: ``<cluster>-<something>``."""
    prefix = cluster.lower() + "-"
    rest = route[len(prefix) :]
    return (
        route.startswith(prefix)
        and bool(rest)
        and re.fullmatch(r"[a-z0-9][a-z0-9-]*", rest) is not None
        and len(SNI_PREFIX + route) <= 253
    )


def ssh_public_key(value: object) -> asyncssh.SSHKey:
    """An SSH public key from what the gateway keeps for a cluster.

    Accepts an :class:`asyncssh.SSHKey`, or bytes/str holding an X.509
    certificate PEM (dask-gateway's ``tls_cert``), a private key PEM
    (``tls_key``), a PEM public key or an OpenSSH public key line.
    """
    if isinstance(value, asyncssh.SSHKey):
        return value.convert_to_public() if value.public_data else value
    data = value.encode() if isinstance(value, str) else bytes(value)  # type: ignore[call-overload]
    if b"BEGIN CERTIFICATE" in data:
        cert = x509.load_pem_x509_certificate(data)
        data = cert.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return asyncssh.import_public_key(data)
    if b"PRIVATE KEY" in data:
        return asyncssh.import_private_key(data).convert_to_public()
    return asyncssh.import_public_key(data)


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, on uvloop when it is installed.

    The reverse path's bulk data crosses asyncssh in this process; uvloop's
    C transports cut the per-read/per-write cost. ``GRIDHUB_TUNNEL_LOOP=asyncio``
    forces the standard loop.
    """
    factory = None
    if os.environ.get("GRIDHUB_TUNNEL_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
