"""The schedulers' preload gridhub.gateway.named_addresses keeps host names in
gateway:// addresses (dask_gateway's own backend resolves them to IPs)."""

from __future__ import annotations

import subprocess
import sys

RESOLVE = """
import dask_gateway.comm  # registers dask_gateway's backend, as in a scheduler
{preload}
from distributed.comm import resolve_address
print(resolve_address("gateway://localhost:8786/abc-123"))
"""


def resolved(preload: str = "") -> str:
    code = RESOLVE.format(preload=preload)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()


def test_dask_gateway_alone_resolves_the_name():
    assert resolved() == "gateway://127.0.0.1:8786/abc-123"


def test_the_preload_keeps_the_name():
    assert resolved("import gridhub.gateway.named_addresses") == "gateway://localhost:8786/abc-123"
