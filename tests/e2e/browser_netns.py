"""A network namespace of its own for the browser of the compose tests.

Chromium aborts every request in flight (ERR_NETWORK_CHANGED) when a network
interface of its namespace comes or goes. On the Docker host every container
the facility starts (a pool seat, a scheduler, a grid job) adds one, so a
browser there lost logins, JupyterLab's first requests and its kernel
connection at random. A user's browser is on another machine and never
sees the facility's interfaces: this puts the test's browser there too.

The namespace is linked to the host by one veth pair with a /30 of
10.251.0.0/16; the facility publishes its ports on the host's end, which the
browser (in the namespace) and the tests' HTTP clients (on the host) both
reach. Nothing else is routed: the browser reaches the facility only.
Chromium runs in it through a wrapper (`ip netns exec`); Playwright talks to
it over a pipe, which a namespace does not touch.
"""

from __future__ import annotations

import ipaddress
import random
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

POOL = ipaddress.ip_network("10.251.0.0/16")


@dataclass(frozen=True)
class BrowserNamespace:
    name: str
    host_address: str  # the host's end: where the facility publishes its ports
    chromium: Path  # runs the real chromium inside the namespace


def _ip(*args: str) -> str:
    return subprocess.run(
        ["ip", *args], check=True, capture_output=True, text=True, timeout=30
    ).stdout


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 of POOL that no address of the host is in (parallel runs each take one)."""
    used = [
        ipaddress.ip_interface(word).network
        for line in _ip("-o", "-4", "addr", "show").splitlines()
        for word in line.split()[3:4]
    ]
    subnets = list(POOL.subnets(new_prefix=30))
    for subnet in random.sample(subnets, 64):
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise RuntimeError(f"no free /30 in {POOL} for the browser's namespace")


@contextmanager
def browser_namespace(tag: str, chromium: str, workdir: Path) -> Iterator[BrowserNamespace]:
    """Create the namespace and its link; remove both on exit (the veth pair
    goes with the namespace)."""
    name = f"gridhub-browser-{tag}"
    # interface names: at most 15 characters
    host_if, ns_if = f"ghb{tag[:8]}h", f"ghb{tag[:8]}n"
    subnet = _free_subnet()
    host_ip, ns_ip = (str(a) for a in list(subnet.hosts())[:2])
    _ip("netns", "add", name)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", name)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", name, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        _ip("-n", name, "link", "set", ns_if, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        wrapper = workdir / "chromium-in-netns"
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {name} {chromium} "$@"\n')
        wrapper.chmod(0o755)
        yield BrowserNamespace(name, host_ip, wrapper)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)
