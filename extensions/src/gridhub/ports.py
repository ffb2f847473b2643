"""Free ports: the one way GridHub (and its tests) pick a port to listen on."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1", kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port free on ``host`` now (the kernel's pick; bound by its user soon after).

    ``kind``: ``SOCK_DGRAM`` for a UDP port.
    """
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
