"""Every image builds from nothing, as on a fresh machine.

A warm cache once hid an image that could not be built from scratch (the
base image's pip could not install its lock). With GRIDHUB_COLD_BUILD=1
(.ci/run sets it) these tests run first in the e2e tier and build every image
on this session's fresh copy of the base image (dockerharness.cold_base): no
layer cached before the session can be used, so every step runs; steps the
images share run once, for the first image that has them. The base image
itself is the seeded debian:bookworm-slim (tests/e2e/prepare-host), what
`docker pull` gives a user. Build times and sizes: artifacts/build-times.json.
"""

from __future__ import annotations

import re

import pytest
from dockerharness import (
    ARTIFACTS,
    BUILD_TIMEOUT,
    COLD,
    COLD_BUILT,
    ROOT,
    build_image,
    cold_base,
    docker,
)

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
    tag = build_image(name)  # the session's first build of it, on the fresh base
    assert name in COLD_BUILT
    log = (ARTIFACTS / f"build-{name}-cold.log").read_text()
    # every stage starts from the fresh base or from an earlier stage, so no
    # step can have come from a cache older than this session (the classic
    # builder names the image a FROM resolved to on the line after it)
    _, base_id = cold_base()
    base_short = base_id.removeprefix("sha256:")
    stages: set[str] = set()
    froms = re.findall(
        r"^Step \d+/\d+ : FROM (\S+)(?: [Aa][Ss] (\S+))?\n ---> ([0-9a-f]+)$", log, re.M
    )
    assert froms, "no FROM step in the build log"
    for ref, stage, image in froms:
        assert ref in stages or base_short.startswith(image), (
            f"a stage starts FROM {ref} ({image}), not this session's base ({base_short[:12]})"
        )
        stages.add(stage)
    assert base_id in docker("history", "-q", "--no-trunc", tag).stdout.split()
    if name != "prometheus":  # (Debian's package alone: no Python, no lock)
        # its lock went in with the pinned installer, not the base image's pip:
        # the installer step ran in this session, in this build or in an
        # earlier one whose layer this build shares
        assert "RUN /opt/venv/bin/pip install --require-hashes -r /tmp/installer.txt" in log
        session = "".join((ARTIFACTS / f"build-{n}-cold.log").read_text() for n in COLD_BUILT)
        assert f"Successfully installed pip-{pinned_pip()}" in session
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
