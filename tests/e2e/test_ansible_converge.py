"""ansible/site.yml takes a bare Debian 12 host to a running facility.

The host is a container standing in for a VM (tests/e2e/ansible/Dockerfile:
systemd as PID 1, Python, sudo). The playbook reaches it with the
community.docker.docker connection and does everything a VM needs: installs
docker.io and docker-compose from Debian, writes daemon.json, loads the
firewall, deploys docker-compose.yml + .env, starts the services. Docker runs
inside the container ("docker in docker"), with /var/lib/docker on a volume so
overlay2 works there.

No registry: the five images built from images/ reach the host as one
`docker save` archive mounted read-only (gridhub_facility_image_source=archive,
the path an air-gapped site takes); the role loads it.

Steps: converge (timed) -> https login page through Traefik, from outside the
host -> second run changed=0 -> --check --diff changed=0 -> upgrade (new image
tags: services recreated, data and secrets kept) -> misspelled variables stop
the play before it changes anything, with the argument-spec message.
Results: artifacts/ansible-converge.json.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from dockerharness import (
    ARTIFACTS,
    ROOT,
    TAG,
    build_args,
    build_image,
    docker,
    facility_services,
    image_tag,
    running_containers,
)

pytestmark = pytest.mark.e2e

ANSIBLE = ROOT / "ansible"
HERE = Path(__file__).parent
IMAGES = ("hub", "gateway", "dirac", "traefik", "notebook", "prometheus", "xrootd")
TARGET_IMAGE = "gridhub/ansible-target:test"
FACILITY_NAME = "Ansible Converge Facility"
PLAYBOOK_TIMEOUT = 900
RESULTS: dict = {}
# Capabilities for systemd and a Docker engine inside the target: --privileged
# is not possible on this host's Docker (it cannot grant CAP_SYS_RESOURCE), so
# every other capability, no seccomp/AppArmor profile, all devices. A private
# cgroup namespace and its own /sys/fs/cgroup tmpfs: systemd mounts its
# hierarchies there, never into the host's cgroup tree.
CAPS = (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP"
    " LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER"
    " SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE"
    " SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE"
    " MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ"
).split()
# inside the target: wait until something listens on 127.0.0.1:9999
LOOPBACK_PROBE = (
    "import socket, sys, time\n"
    "for _ in range(100):\n"
    "    try:\n"
    "        socket.create_connection(('127.0.0.1', 9999), 1).close()\n"
    "        sys.exit(0)\n"
    "    except OSError:\n"
    "        time.sleep(0.2)\n"
    "sys.exit(1)\n"
)
RECAP = re.compile(r"^target\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def _save_results() -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "ansible-converge.json").write_text(json.dumps(RESULTS, indent=2) + "\n")


class Target:
    """The stand-in host and the playbook runs against it."""

    def __init__(self, cid: str, inventory: Path) -> None:
        self.cid = cid
        self.inventory = inventory
        self.ip = docker(
            "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", cid
        ).stdout.strip()

    def sh(self, script: str, timeout: float = 120, check: bool = True) -> str:
        return docker("exec", self.cid, "sh", "-c", script, timeout=timeout, check=check).stdout

    def playbook(self, *args: str, name: str) -> tuple[int, dict[str, int], str]:
        """Run site.yml; return (exit code, recap counts, output). Output kept in artifacts."""
        env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCAL_TEMP": str(self.inventory.parent / "ansible-tmp"),
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        }
        cmd = [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            str(ANSIBLE / "inventory" / "example" / "hosts.yml"),
            "-i",
            str(self.inventory),
            "--limit",
            "target",
            "site.yml",
            *args,
        ]
        t0 = time.monotonic()
        p = subprocess.run(
            cmd,
            cwd=ANSIBLE,
            env=env,
            capture_output=True,
            text=True,
            timeout=PLAYBOOK_TIMEOUT,
            check=False,
        )
        RESULTS.setdefault("runs", {})[name] = {
            "seconds": round(time.monotonic() - t0, 1),
            "exit": p.returncode,
        }
        out = p.stdout + p.stderr
        (ARTIFACTS / "ansible").mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "ansible" / f"{name}.log").write_text(out)
        m = RECAP.search(out)
        counts = (
            dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m.groups()), strict=True))
            if m
            else {}
        )
        RESULTS["runs"][name].update(counts)
        _save_results()
        return p.returncode, counts, out

    def login_page(self) -> str:
        """GET /hub/login from outside the host, through its published port."""
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the facility's self-signed certificate
        with urllib.request.urlopen(f"https://{self.ip}/hub/login", context=ctx, timeout=30) as r:
            assert r.status == 200
            return r.read().decode()

    def container(self, service: str) -> dict:
        cid = self.sh(
            f"docker ps -q --filter label=com.docker.compose.service={service}"
            " --filter label=com.docker.compose.project=gridhub"
        ).split()
        assert len(cid) == 1, f"{service}: {cid}"
        return json.loads(self.sh(f"docker inspect {cid[0]}"))[0]

    def secrets_digest(self) -> str:
        """Digest of every generated secret, for 'never rotated': the shared
        `secrets` volume and the hub's and the gateway's own."""
        return self.sh(
            "cd /var/lib/docker/volumes"
            " && find gridhub_secrets/_data gridhub_hub-state/_data/secrets"
            " gridhub_gateway-state/_data/secrets -type f -not -name '.*'"
            " | sort | xargs sha256sum | sha256sum"
        ).split()[0]


@pytest.fixture(scope="module")
def image_archive(notebook_image: str, tmp_path_factory) -> Path:
    """The facility images as one `docker save` archive (shared layers once)."""
    tags = [notebook_image] + [build_image(n) for n in IMAGES if n != "notebook"]
    d = tmp_path_factory.mktemp("images")
    t0 = time.monotonic()
    docker("save", "-o", str(d / "gridhub-images.tar"), *tags, timeout=900)
    RESULTS["image_archive"] = {
        "seconds": round(time.monotonic() - t0, 1),
        "mb": round((d / "gridhub-images.tar").stat().st_size / 1e6),
    }
    return d


@pytest.fixture(scope="module")
def target(image_archive: Path, tmp_path_factory):
    subprocess.run(
        [
            "docker",
            "build",
            *build_args(),
            "-q",
            "-t",
            TARGET_IMAGE,
            str(Path(__file__).parent / "ansible"),
        ],
        check=True,
        capture_output=True,
        timeout=900,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    tmp = tmp_path_factory.mktemp("ansible")
    with running_containers() as c:
        cid = c.run(
            TARGET_IMAGE,
            docker_args=(
                *[a for cap in CAPS for a in ("--cap-add", cap)],
                "--security-opt=seccomp=unconfined",
                "--security-opt=apparmor=unconfined",
                "--device-cgroup-rule=a *:* rwm",
                "--cgroupns=private",
                "--tmpfs=/sys/fs/cgroup",
                "--tmpfs=/run",
                "--tmpfs=/run/lock",
                "--volume=/var/lib/docker",  # anonymous: removed with the container
                f"--volume={image_archive}:/srv/images:ro",
                "--hostname=gridhub-target",
            ),
        )
        deadline = time.monotonic() + 120
        state = ""
        while time.monotonic() < deadline:
            state = docker(
                "exec", cid, "systemctl", "is-system-running", check=False
            ).stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(1)
        assert state in ("running", "degraded"), f"systemd in the target: {state}"
        inventory = tmp / "inventory.yml"
        inventory.write_text(
            json.dumps(
                {
                    "gridhub": {
                        "hosts": {
                            "target": {
                                "ansible_connection": "community.docker.docker",
                                "ansible_host": cid,
                                "ansible_python_interpreter": "/usr/bin/python3",
                                "gridhub_facility_public_host": "gridhub.internal",
                                "gridhub_facility_image_source": "archive",
                                "gridhub_facility_image_archive": "/srv/images/gridhub-images.tar",
                                "gridhub_facility_image_tag": TAG,
                                "gridhub_facility_settings": {
                                    "facility_name": FACILITY_NAME,
                                    "worker_mem_limit": "2G",
                                    "localsite_max_jobs": 2,
                                },
                            }
                        }
                    }
                },
                indent=2,
            )
        )
        yield Target(cid, inventory)


@pytest.fixture(scope="module")
def converged(target: Target) -> Target:
    rc, counts, out = target.playbook(name="converge")
    assert rc == 0 and counts.get("failed") == 0, out[-8000:]
    RESULTS["converge_seconds"] = RESULTS["runs"]["converge"]["seconds"]
    RESULTS["secrets_digest_after_converge"] = target.secrets_digest()
    _save_results()
    return target


def test_converge_serves_the_login_page(converged: Target):
    t = converged
    html = t.login_page()
    assert 'id="gridhub-facility"' in html and FACILITY_NAME in html, html[:2000]
    assert 'id="password_input"' in html  # masterclass mode: the access code field
    # the deployment as documented: the repository's compose file, a private .env,
    # Debian's docker-compose 1.29, every service healthy
    for name in ("docker-compose.yml", "docker-compose.override.yml"):
        assert t.sh(f"cat /opt/gridhub/{name}") == (ROOT / name).read_text()
    assert t.sh("stat -c '%a %U' /opt/gridhub/.env").split() == ["600", "root"]
    assert "docker-compose version 1.29" in t.sh("docker-compose version")
    for service in facility_services():
        assert t.container(service)["State"]["Health"]["Status"] == "healthy", service
    # the host firewall: a service on a port not in gridhub_firewall_tcp_ports
    # answers on the host's loopback but not from outside
    docker("exec", "-d", t.cid, "python3", "-m", "http.server", "9999")
    docker("exec", t.cid, "python3", "-c", LOOPBACK_PROBE)
    with pytest.raises(OSError):
        socket.create_connection((t.ip, 9999), timeout=3).close()


def test_second_run_and_check_mode_change_nothing(converged: Target):
    t = converged
    rc, counts, out = t.playbook(name="second-run")
    assert rc == 0 and counts.get("changed") == 0 and counts.get("failed") == 0, out[-8000:]
    rc, counts, out = t.playbook("--check", "--diff", name="check-diff")
    assert rc == 0 and counts.get("changed") == 0 and counts.get("failed") == 0, out[-8000:]
    assert t.secrets_digest() == RESULTS["secrets_digest_after_converge"]


def test_upgrade_rolls_services_and_keeps_data(converged: Target):
    t = converged
    before = {s: t.container(s) for s in ("hub", "gateway")}
    t.sh(
        "docker exec -u 0 $(docker ps -q --filter label=com.docker.compose.service=hub)"
        " sh -c 'echo kept > /srv/gridhub/state/upgrade-marker'"
    )
    # "new versions": the same builds under a new tag, as a release would bring
    t.sh(
        f"docker tag {image_tag('hub')} gridhub/hub:next"
        f" && docker tag {image_tag('gateway')} gridhub/gateway:next"
    )
    images = {n: image_tag(n) for n in IMAGES} | {
        "hub": "gridhub/hub:next",
        "gateway": "gridhub/gateway:next",
    }
    rc, counts, out = t.playbook(
        "-e", json.dumps({"gridhub_facility_images": images}), name="upgrade"
    )
    assert rc == 0 and counts.get("changed", 0) > 0 and counts.get("failed") == 0, out[-8000:]
    for service, old in before.items():
        new = t.container(service)
        assert new["Config"]["Image"] == f"gridhub/{service}:next"
        assert new["Id"] != old["Id"], f"{service} not recreated"
    assert t.container("dirac")["Config"]["Image"] == image_tag("dirac")  # untouched
    assert t.sh("cat /var/lib/docker/volumes/gridhub_hub-state/_data/upgrade-marker") == "kept\n"
    assert t.secrets_digest() == RESULTS["secrets_digest_after_converge"]
    assert FACILITY_NAME in t.login_page()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        # a misspelled key inside the settings: the role's argument spec refuses it
        (
            {"gridhub_facility_settings": {"defualt_url": "/lab"}},
            "Role gridhub_facility: gridhub_facility_settings.defualt_url."
            " Supported parameters include:",
        ),
        # a misspelled variable name: no argument spec sees it, the site check does
        (
            {"gridhub_facility_https_prot": 8443},
            "Unknown variable(s) gridhub_facility_https_prot: not an option of",
        ),
        # a wrong type
        (
            {"gridhub_facility_https_port": "https"},
            "Role gridhub_facility: argument 'gridhub_facility_https_port' is of type str and"
            " we were unable to convert to int",
        ),
        # a value the role refuses (checked up front too)
        (
            {"gridhub_facility_public_host": "localhost"},
            "gridhub_facility_public_host=localhost must be a DNS name and not localhost",
        ),
    ],
    ids=["misspelled-settings-key", "misspelled-variable", "wrong-type", "bad-value"],
)
def test_wrong_variable_fails_before_any_change(converged: Target, extra: dict, message: str):
    rc, counts, out = converged.playbook("-e", json.dumps(extra), name=f"wrong-{next(iter(extra))}")
    assert rc != 0 and counts.get("failed") == 1, out[-4000:]
    assert message in out, out[-4000:]
    assert counts.get("changed") == 0
