"""Build and run the images under images/ for the e2e tier.

`build_image(name)` builds images/<name>/Dockerfile with the repository root
as context and returns the tag. The Dockerfiles are the standard ones a user
builds with plain internet; what this machine needs to reach PyPI and Debian
from inside a build is passed here, never written into a Dockerfile:

- `--network host`: the build uses the host's resolver and routes.
- `EXTRA_CA_CERTS`: the locally added CA certificates of this host
  (/usr/local/share/ca-certificates, Debian's place for them; or the file in
  $GRIDHUB_BUILD_CA_FILE). A TLS-intercepting egress proxy signs with such a
  CA. Dockerfiles trust it in their build stage only.
- `PIP_INDEX_URL`, `PIP_EXTRA_INDEX_URL` from the environment or /etc/pip.conf,
  and the standard proxy variables (Docker keeps those out of the image
  history) when the host has them.

Docker here may lack buildx, so builds use the classic builder: no
`RUN --mount=type=secret`; the CA travels as a build argument of a build
stage that the final image does not inherit.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import time
import tomllib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
BUILD_TIMEOUT = int(os.environ.get("GRIDHUB_BUILD_TIMEOUT", "2400"))
SCREENSHOTS = ARTIFACTS / "screenshots"
TEST_LABEL = "org.gridhub.test"
# Containers of this test run carry TEST_LABEL=RUN_ID (parallel runs do not mix).
RUN_ID = uuid.uuid4().hex[:12]
# Tag of the images the tests build (gridhub/<name>:<TAG>); two checkouts
# testing at once on one daemon set different tags.
TAG = os.environ.get("GRIDHUB_IMAGE_TAG", "test")


def image_tag(name: str) -> str:
    return f"gridhub/{name}:{TAG}"


def facility_services() -> list[str]:
    """The long-running services of the facility with the embedded DIRAC
    (docker-compose.yml and its override; not the one-shot image builds)."""
    import yaml

    names: dict[str, bool] = {}
    for f in ("docker-compose.yml", "docker-compose.override.yml"):
        for name, svc in yaml.safe_load((ROOT / f).read_text())["services"].items():
            if svc.get("restart", names.get(name)) != "no":
                names[name] = True
            else:
                names.pop(name, None)
    return sorted(names)


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI; raise with its stderr on failure."""
    p = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and p.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])}... failed ({p.returncode}):\n{p.stderr}")
    return p


def _extra_ca_pem() -> str:
    path = os.environ.get("GRIDHUB_BUILD_CA_FILE")
    files = (
        [Path(path)] if path else sorted(Path("/usr/local/share/ca-certificates").rglob("*.crt"))
    )
    return "\n".join(f.read_text().strip() for f in files if f.is_file())


def _pip_settings() -> dict[str, str]:
    out: dict[str, str] = {}
    cfg = configparser.ConfigParser()
    cfg.read(["/etc/pip.conf", os.path.expanduser("~/.config/pip/pip.conf")])
    for key in ("index-url", "extra-index-url"):
        if cfg.has_option("global", key):
            out["PIP_" + key.upper().replace("-", "_")] = cfg.get("global", key).strip()
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        if os.environ.get(var):
            out[var] = os.environ[var]
    return out


def package_version() -> str:
    """GridHub's version: extensions/pyproject.toml is its one place."""
    with (ROOT / "extensions" / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]["version"]


def build_args() -> list[str]:
    """The machine-specific `docker build` flags (see the module docstring)."""
    args = ["--network", "host"]
    pem = _extra_ca_pem()
    if pem:
        args += ["--build-arg", f"EXTRA_CA_CERTS={pem}"]
    for k, v in _pip_settings().items():
        args += ["--build-arg", f"{k}={v}"]
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        if os.environ.get(var):
            args += ["--build-arg", var]  # value taken from the environment
    return args


# GRIDHUB_COLD_BUILD=1 (.ci/run sets it): every image of this test session is
# built on a fresh copy of the base image (cold_base()), an image ID no layer
# in Docker's cache was ever built on. So every step of every Dockerfile runs
# in this session, as on a fresh machine, while what the images have in common
# (their identical first steps) is built once and shared, as a user's
# `docker compose build` shares it. (--no-cache per image proved the same, building the shared
# steps once per image: the CI run ran out of time.)
COLD = os.environ.get("GRIDHUB_COLD_BUILD") == "1"
COLD_BUILT: dict[str, float] = {}  # image name -> seconds of its cold build
BASE_IMAGE = os.environ.get("BASE_IMAGE", "debian:bookworm-slim")  # the Dockerfiles' default
COLD_BASE_REPO = "gridhub/cold-base"
_cold_base: dict[str, str] = {}  # "tag", "id": this session's copy of the base


def cold_base() -> tuple[str, str]:
    """(tag, image ID) of this session's copy of BASE_IMAGE: the same files and
    settings, `docker import`ed once, so its ID (which holds its creation time)
    is new. Copies left by earlier sessions are untagged first."""
    if not _cold_base:
        for old in docker(
            "images", "--format", "{{.Repository}}:{{.Tag}}", COLD_BASE_REPO
        ).stdout.split():
            docker("rmi", old, check=False)  # untags; layers in use stay until pruned
        # the images the previous run's tags pointed at, dangling since. Old
        # ones only: a build running now (another checkout's) has dangling
        # stage images of its own.
        docker("image", "prune", "-f", "--filter", "until=6h", timeout=600)
        cfg = json.loads(docker("image", "inspect", BASE_IMAGE).stdout)[0]["Config"]
        changes = [f"ENV {e}" for e in cfg.get("Env") or []]
        if cfg.get("Cmd"):
            changes.append(f"CMD {json.dumps(cfg['Cmd'])}")
        tag = f"{COLD_BASE_REPO}:{RUN_ID}"
        cid = docker("create", BASE_IMAGE).stdout.strip()
        try:
            export = subprocess.Popen(["docker", "export", cid], stdout=subprocess.PIPE)
            imported = subprocess.run(
                ["docker", "import", *(a for c in changes for a in ("--change", c)), "-", tag],
                stdin=export.stdout,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            export.wait(timeout=60)
        finally:
            docker("rm", "-f", cid, check=False)
        if imported.returncode != 0 or export.returncode != 0:
            raise RuntimeError(f"copying {BASE_IMAGE} to {tag} failed: {imported.stderr}")
        _cold_base.update(
            tag=tag, id=docker("image", "inspect", "-f", "{{.Id}}", tag).stdout.strip()
        )
    return _cold_base["tag"], _cold_base["id"]


def build_image(name: str, tag: str | None = None, *, timeout: int = BUILD_TIMEOUT) -> str:
    """Build images/<name>/Dockerfile (context: repo root); return the tag.

    The build log goes to artifacts/build-<name>.log (a cold build's to
    build-<name>-cold.log) and the wall time and size to
    artifacts/build-times.json. Docker's layer cache makes a rebuild of an
    unchanged image take seconds; nothing depends on that cache (see COLD).
    """
    tag = tag or image_tag(name)
    dockerfile = ROOT / "images" / name / "Dockerfile"
    if not dockerfile.is_file():
        raise FileNotFoundError(dockerfile)
    ARTIFACTS.mkdir(exist_ok=True)
    cold = COLD and name not in COLD_BUILT
    log = ARTIFACTS / f"build-{name}{'-cold' if cold else ''}.log"
    cmd = [
        "docker",
        "build",
        *build_args(),
        *(("--build-arg", f"BASE_IMAGE={cold_base()[0]}") if COLD else ()),
        # the image's version label, as a release build gives it
        *("--build-arg", f"VERSION={package_version()}"),
        "-f",
        str(dockerfile),
        "-t",
        tag,
        str(ROOT),
    ]
    t0 = time.monotonic()
    with log.open("w") as f:
        p = subprocess.run(
            cmd,
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
        )
    took = time.monotonic() - t0
    if p.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"building {tag} failed (exit {p.returncode}), log {log}:\n{tail}")
    times = ARTIFACTS / "build-times.json"
    record = json.loads(times.read_text()) if times.exists() else {}
    size = int(docker("image", "inspect", "-f", "{{.Size}}", tag).stdout)
    record[name] = {**record.get(name, {}), "seconds": round(took, 1), "size_bytes": size}
    if cold:
        COLD_BUILT[name] = took
        record[name]["cold_seconds"] = round(took, 1)
    times.write_text(json.dumps(record, indent=2) + "\n")
    return tag


class Containers:
    """Starts containers for a test and removes every one of them afterwards."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def run(
        self, image: str, *args: str, docker_args: tuple[str, ...] = (), timeout: float = 120
    ) -> str:
        """`docker run -d`; return the container id."""
        name = f"gridhub-test-{uuid.uuid4().hex[:8]}"
        cid = docker(
            "run",
            "-d",
            "--name",
            name,
            "--label",
            f"{TEST_LABEL}={RUN_ID}",
            *docker_args,
            image,
            *args,
            timeout=timeout,
        ).stdout.strip()
        self.ids.append(cid)
        return cid

    def logs(self, cid: str) -> str:
        p = docker("logs", cid, check=False)
        return p.stdout + p.stderr

    def port(self, cid: str, container_port: int) -> int:
        out = docker("port", cid, f"{container_port}/tcp").stdout.split()[0]
        return int(out.rsplit(":", 1)[1])

    def remove_all(self) -> None:
        for cid in reversed(self.ids):
            p = docker("logs", cid, check=False, timeout=30)
            (ARTIFACTS / "containers").mkdir(parents=True, exist_ok=True)
            (ARTIFACTS / "containers" / f"{cid[:12]}.log").write_text(p.stdout + p.stderr)
            docker("rm", "-f", "-v", cid, check=False, timeout=60)
        self.ids.clear()


@contextmanager
def running_containers() -> Iterator[Containers]:
    """Context manager: a Containers whose containers are removed on exit."""
    c = Containers()
    try:
        yield c
    finally:
        c.remove_all()


def leftover_test_containers() -> list[str]:
    return docker("ps", "-aq", "--filter", f"label={TEST_LABEL}={RUN_ID}").stdout.split()


def screenshot(pg, name: str) -> Path:  # type: ignore[no-untyped-def]
    """Full-page screenshot of a Playwright page into artifacts/screenshots/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / (re.sub(r"[^\w.-]+", "_", name) + ".png")
    pg.screenshot(path=str(path), full_page=True)
    return path
