"""The Traefik image's entrypoint (images/traefik/entrypoint.sh): the static
configuration it renders in each certificate mode, and the settings it refuses.

The containers run with no network: an ACME attempt cannot leave the machine.
The routes themselves are tested on the template in the integration tier
(test_security: HSTS with ACME, none with the self-signed certificate).
"""

from __future__ import annotations

import secrets
import time

import pytest
import yaml
from dockerharness import RUN_ID, TEST_LABEL, build_image, docker

pytestmark = pytest.mark.timeout(300, func_only=True)

TOKEN = secrets.token_hex(8)
ACME = {
    "FACILITY_PUBLIC_HOST": "gridhub.example.org",
    "FACILITY_ACME_EMAIL": "ops@example.org",
    # nothing answers there (and the container has no network)
    "FACILITY_ACME_CA_SERVER": "https://127.0.0.1:9/directory",
}


@pytest.fixture(scope="module")
def traefik_image() -> str:
    return build_image("traefik")


@pytest.fixture
def dynamic_dir(tmp_path):
    # what gridhub-init writes into the proxy volume (Traefik waits for tls.yml)
    d = tmp_path / "dynamic"
    d.mkdir()
    (d / "tls.yml").write_text("tls: {}\n")
    d.chmod(0o755)
    return d


def rendered_config(image: str, dynamic_dir, env: dict[str, str], containers) -> dict:
    """Start the image as compose does; return the configuration Traefik runs with."""
    flags = [f"-e{k}={v}" for k, v in {**env, "GRIDHUB_TRAEFIK_PROVIDER_TOKEN": TOKEN}.items()]
    cid = containers.run(
        image,
        docker_args=("--network", "none", "-v", f"{dynamic_dir}:/etc/traefik/dynamic:ro", *flags),
    )
    deadline = time.monotonic() + 60
    while True:
        p = docker("exec", cid, "cat", "/tmp/traefik/traefik.yml", check=False)  # noqa: S108
        if p.returncode == 0 and p.stdout:
            return yaml.safe_load(p.stdout)
        assert time.monotonic() < deadline, f"no rendered config in 60 s:\n{containers.logs(cid)}"
        time.sleep(0.5)


def test_default_is_the_self_signed_certificate_without_hsts(
    traefik_image, dynamic_dir, containers
):
    config = rendered_config(traefik_image, dynamic_dir, {}, containers)
    assert config["entryPoints"]["websecure"]["http"] == {"tls": {}}
    assert "certificatesResolvers" not in config


def test_acme_email_turns_on_acme_for_the_public_host_and_hsts(
    traefik_image, dynamic_dir, containers
):
    config = rendered_config(traefik_image, dynamic_dir, ACME, containers)
    http = config["entryPoints"]["websecure"]["http"]
    assert http["tls"] == {
        "certResolver": "letsencrypt",
        "domains": [{"main": "gridhub.example.org"}],
    }
    assert http["middlewares"] == ["gridhub-hsts@file"]
    acme = config["certificatesResolvers"]["letsencrypt"]["acme"]
    assert acme["email"] == "ops@example.org"
    assert acme["caServer"] == ACME["FACILITY_ACME_CA_SERVER"]
    assert acme["storage"] == "/var/lib/traefik/acme.json"  # the acme volume
    assert "tlsChallenge" in acme


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("FACILITY_PUBLIC_HOST", "localhost", "PUBLIC_HOST"),
        ("FACILITY_PUBLIC_HOST", "192.0.2.7", "PUBLIC_HOST"),
        ("FACILITY_PUBLIC_HOST", 'evil"host.org', "PUBLIC_HOST"),
        ("FACILITY_ACME_EMAIL", "ops@", "ACME_EMAIL"),
        ("FACILITY_ACME_EMAIL", 'ops@x.org"\n  x: y', "ACME_EMAIL"),
        ("FACILITY_ACME_CA_SERVER", "http://ca.example.org/directory", "ACME_CA_SERVER"),
    ],
)
def test_bad_acme_settings_stop_traefik_naming_the_setting(traefik_image, setting, value, named):
    # refused before anything else: no token, no tls.yml needed
    p = docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--label",
        f"{TEST_LABEL}={RUN_ID}",
        *[f"-e{k}={v}" for k, v in {**ACME, setting: value}.items()],
        traefik_image,
        timeout=60,
        check=False,
    )
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert named in p.stderr, p.stderr
