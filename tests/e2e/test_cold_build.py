"""Every image builds from an empty layer cache, as on a fresh machine.

A warm cache once hid an image that could not be built from scratch (the
base image's pip could not install its lock). With GRIDHUB_COLD_BUILD=1
(.ci/run sets it) these tests run first in the e2e tier and build each image
with --no-cache; every later build in the session reuses those layers. The
base image itself is the seeded debian:bookworm-slim (tests/e2e/prepare-host),
what `docker pull` gives a user. Build times and sizes: artifacts/build-times.json.
"""

from __future__ import annotations

import re

import pytest
from dockerharness import ARTIFACTS, BUILD_TIMEOUT, COLD, COLD_BUILT, ROOT, build_image, docker

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not COLD, reason="cold builds run with GRIDHUB_COLD_BUILD=1 (.ci/run)"),
]

IMAGES = ("traefik", "hub", "gateway", "dirac", "notebook", "prometheus", "xrootd")


def pinned_pip() -> str:
    m = re.search(r"^pip==(\S+)", (ROOT / "images" / "installer.txt").read_text(), re.M)
    assert m, "images/installer.txt pins no pip"
    return m[1]


@pytest.mark.timeout(BUILD_TIMEOUT)
@pytest.mark.parametrize("name", IMAGES)
def test_image_builds_from_an_empty_cache(name: str):
    tag = build_image(name)  # the session's first build of it: --no-cache
    assert name in COLD_BUILT
    log = (ARTIFACTS / f"build-{name}-cold.log").read_text()
    assert "Using cache" not in log, "a cold build used the layer cache"
    if name != "prometheus":  # (Debian's package alone: no Python, no lock)
        # its lock went in with the pinned installer, not the base image's pip
        assert f"Successfully installed pip-{pinned_pip()}" in log
        assert log.count("Successfully installed") >= 2, "no lock was installed"
    # the image runs: its Python environment is complete (pip check passed in
    # the build for the Python images; here the entry points exist)
    probe = {
        "traefik": ["traefik", "version"],
        "hub": ["jupyterhub", "--version"],
        "gateway": ["dask-gateway-server", "--version"],
        "dirac": ["python", "-c", "import diracx.routers, moto, gridhub.localsite"],
        "prometheus": ["prometheus", "--version"],
        "notebook": [
            "python",
            "-c",
            "import coffea, dask_awkward, dask_histogram, gridhub, XRootD.client, fsspec_xrootd",
        ],
        # Debian's xrootd and the datasets the build installed
        "xrootd": [
            "sh",
            "-c",
            "test -x /usr/bin/xrootd && test -s /srv/lake/data/public/samples/fileset.json",
        ],
    }[name]
    docker("run", "--rm", "--network", "none", "--entrypoint", probe[0], tag, *probe[1:])
