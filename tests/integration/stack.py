"""The deployed shape on loopback: ONE Traefik in front of the hub and the gateway.

Traefik runs from the compose facility's own static configuration
(images/traefik/traefik.yml.tmpl, rendered as images/traefik/entrypoint.sh does,
with loopback addresses and free ports), reading the hub's routes from the file
provider directory (``rules.toml``, written by the hub with
``proxy_should_start=false``) and the gateway's from its HTTP provider. The hub
runs hub_config/jupyterhub_config.py, the gateway the gridhub DIRAC backend
(gateway_fixtures.Facility). Traefik can be killed and started again with the
same configuration (``restart_traefik``).

Use: ``from stack import stack_fixture`` in a test module (a fixture), then
request the module-scoped ``stack``.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
from gateway_fixtures import Facility
from gridhub import init as gridhub_init
from hub_fixtures import REPO, Hub
from processes import VENV_BIN, Traefik, facility_tls, free_port, wait_for

TEMPLATE = REPO / "images" / "traefik" / "traefik.yml.tmpl"
HUB_ENTRYPOINTS = (
    "c = get_config()  # noqa: F821\n"
    # as images/hub/jupyterhub_config.d/50-compose.py: Traefik runs on its own
    'c.TraefikFileProviderProxy.traefik_entrypoint = "websecure"\n'
    'c.TraefikFileProviderProxy.traefik_api_entrypoint = "auth_api"\n'
)


def render_traefik_config(
    *,
    http: int,
    https: int,
    dask: int,
    api: int,
    ping: int,
    metrics: int,
    provider_url: str,
    token: str,
    dynamic_dir: Path,
    acme: Acme | None = None,
) -> str:
    """The compose template with this run's values; loopback only. ``acme``:
    the template's ACME mode (ACME_EMAIL set), else its self-signed one."""
    text = TEMPLATE.read_text()
    for placeholder, value in {
        "@HTTP_PORT@": str(http),
        "@HTTPS_PORT@": str(https),
        "@DASK_PORT@": str(dask),
        "@PROVIDER_URL@": provider_url,
        "@PROVIDER_TOKEN@": token,
        "@LOG_LEVEL@": "INFO",  # the deployed level
        "@PUBLIC_HOST@": acme.public_host if acme else "",
        "@ACME_EMAIL@": acme.email if acme else "",
        "@ACME_CA_SERVER@": acme.ca_server if acme else "",
    }.items():
        assert placeholder in text, f"{TEMPLATE} lost its {placeholder}"
        text = text.replace(placeholder, value)
    # entrypoint.sh: `sed -e "s|^##$mode ||" -e "/^##/d"`
    mode = "##acme " if acme else "##self-signed "
    assert f"\n{mode}" in text, f"{TEMPLATE} has no {mode.strip()} lines"
    text = "".join(
        line.removeprefix(mode)
        for line in text.splitlines(keepends=True)
        if line.startswith(mode) or not line.startswith("##")
    )
    # fixed ports and paths of the container, free ports and run dirs here;
    # every entrypoint on loopback
    fixed_here = {
        '":8099"': f'":{api}"',
        '"127.0.0.1:8082"': f'"127.0.0.1:{ping}"',
        '":8083"': f'":{metrics}"',
        "/etc/traefik/dynamic": str(dynamic_dir),
    }
    if acme:
        fixed_here["/var/lib/traefik/acme.json"] = str(acme.storage)
    for fixed, here in fixed_here.items():
        assert fixed in text, f"{TEMPLATE} no longer has {fixed}: update tests/integration/stack.py"
        text = text.replace(fixed, here)
    return text.replace('address: ":', 'address: "127.0.0.1:')


@dataclass
class Acme:
    """The compose facility's ACME settings (ACME_EMAIL, PUBLIC_HOST, ACME_CA_SERVER)."""

    public_host: str
    email: str
    ca_server: str
    storage: Path


class Stack(Facility):
    """Facility (gateway + DiracX + local site) behind the deployed Traefik, plus the hub."""

    def __init__(self, work: Path, diracx, site) -> None:
        # Facility.__init__ with the deployed Traefik instead of the minimal one
        self.site, self.work, self.diracx = site, work, diracx
        tls = facility_tls()
        self.cert, self.key = tls.cert, tls.key
        self.gw_port = free_port()
        self.provider_token = secrets.token_hex(16)
        self.encrypt_key = base64.b64encode(os.urandom(32)).decode()
        self.users: set[str] = set()
        self.hub = None  # Facility's HubLink: the gateway keeps its simple test auth
        self.jupyterhub: Hub | None = None
        self.traefik = self._traefik()
        try:
            self.gateway = self.start_gateway()
        except BaseException:
            self.traefik.stop()
            raise

    def _traefik(self) -> Traefik:
        self.dynamic_dir = self.work / "traefik" / "dynamic"
        self.dynamic_dir.mkdir(parents=True, exist_ok=True)
        # what gridhub-init writes next to the hub's rules.toml
        (self.dynamic_dir / "headers.yml").write_text(gridhub_init.HEADERS_YML)
        (self.dynamic_dir / "tls.yml").write_text(
            "tls:\n  stores:\n    default:\n      defaultCertificate:\n"
            f"        certFile: {self.cert}\n        keyFile: {self.key}\n"
            "  options:\n    default:\n      minVersion: VersionTLS12\n"
        )
        self.api_port = free_port()
        return self.start_traefik(self.work / "traefik", api_port=self.api_port)

    def start_traefik(self, d: Path, *, api_port: int | None = None, acme: Acme | None = None):
        """A Traefik from the deployed template on the stack's routes (the same
        dynamic directory and gateway provider); the caller stops it."""
        d.mkdir(parents=True, exist_ok=True)
        https, dask = free_port(), free_port()
        config = d / "traefik.yml"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the token
        with os.fdopen(fd, "w") as fh:
            fh.write(
                render_traefik_config(
                    http=free_port(),
                    https=https,
                    dask=dask,
                    api=api_port or free_port(),
                    ping=free_port(),
                    metrics=free_port(),  # two Traefiks of a test must not share one
                    provider_url=f"http://127.0.0.1:{self.gw_port}/api/v1/traefik",
                    token=self.provider_token,
                    dynamic_dir=self.dynamic_dir,
                    acme=acme,
                )
            )
        t = Traefik([str(VENV_BIN / "traefik"), f"--configFile={config}"], d / "traefik.log")
        t.https_port, t.dask_port = https, dask
        t.start()
        self._wait_traefik(t)
        return t

    def _wait_traefik(self, t: Traefik) -> None:
        wait_for(
            lambda: socket.create_connection(("127.0.0.1", t.dask_port), 1).close() is None,
            20,
            "traefik",
            t.logfile,
            alive=t.running,
        )

    def restart_traefik(self) -> None:
        """SIGKILL Traefik (a crash: nothing is cleaned up), then start it
        again with the same configuration, as a container restart policy does."""
        assert self.traefik.proc is not None
        os.killpg(self.traefik.proc.pid, signal.SIGKILL)
        self.traefik.proc.wait(10)
        self.traefik.start()
        self._wait_traefik(self.traefik)

    # -- the hub ----------------------------------------------------------

    @property
    def hub_url(self) -> str:
        return f"https://127.0.0.1:{self.traefik.https_port}"

    def start_hub(self, workdir: Path, env: dict[str, str] | None = None) -> Hub:
        hub = Hub(
            workdir,
            {
                "GRIDHUB_PUBLIC_URL": self.hub_url,
                "GRIDHUB_PROXY_SHOULD_START": "false",
                "GRIDHUB_PROXY_API_URL": f"http://127.0.0.1:{self.api_port}",
                "GRIDHUB_TRAEFIK_DYNAMIC_CONFIG_FILE": str(self.dynamic_dir / "rules.toml"),
                "GRIDHUB_GATEWAY_URL": f"http://127.0.0.1:{self.gw_port}",
                "SSL_CERT_FILE": os.environ["SSL_CERT_FILE"],
                **(env or {}),
            },
            name="stack-hub",
        )
        (hub.extra / "40-traefik-entrypoints.py").write_text(HUB_ENTRYPOINTS)
        # the hub is reached through Traefik only
        hub.port = self.traefik.https_port
        hub.public_url = self.hub_url
        hub.api = self.hub_url + "/hub/api"
        self.jupyterhub = hub.start(timeout=180)  # a loaded 2-core machine: minutes
        return hub

    def logs(self) -> str:
        hub = self.jupyterhub
        hub = f"\n--- hub ---\n{hub.log()[-6000:]}" if hub else ""
        return super().logs() + hub

    def stop(self) -> None:
        try:
            super().stop()  # clusters, gateway, Traefik
        finally:
            if self.jupyterhub is not None:
                self.jupyterhub.stop()


@pytest.fixture(scope="module", name="stack")
def stack_fixture(tmp_path_factory, diracx_server, diracx_local_site):
    # (no user server is spawned: no test_unix_user, whose teardown kills its processes)
    work = tmp_path_factory.mktemp("stack")
    s = Stack(work, diracx_server, diracx_local_site)
    try:
        s.start_hub(work / "hub")
        yield s
    finally:
        s.stop()


# -- DiracX with an identity provider (the production identity path) -------


def configure_diracx_idp(
    state_dir: Path, issuer: str, client_id: str, users: dict[str, tuple[str, list[str]]]
) -> None:
    """Make the embedded DiracX's CS (in ``state_dir``, before it starts) trust
    ``issuer`` as its VO's identity provider, the way a production DiracX
    trusts IAM (``Registry/<vo>/IdP``: URL and the OIDC client DiracX uses
    there), and know ``users``: IdP subject -> (DIRAC user name, DIRAC groups),
    each group created with ``NormalUser`` only (DiracX 0.7 registers no user
    by itself: a VO's registry lists them)."""
    import yaml
    from diracx.core.config.schema import Config
    from git import Repo
    from gridhub.embedded import CS_DIR, ensure_state, load_facility

    state = ensure_state(state_dir)
    vo = load_facility(state).vo
    path = state / CS_DIR / "default.yml"
    data = yaml.safe_load(path.read_text())
    registry = data["Registry"][vo]
    registry["IdP"] = {"URL": issuer, "ClientID": client_id}
    for sub, (name, groups) in users.items():
        registry["Users"][sub] = {"PreferedUsername": name, "Email": None}
        for group in groups:
            g = registry["Groups"].setdefault(group, {"Properties": ["NormalUser"], "Users": []})
            g["Users"] = [*g["Users"], sub]
    path.write_text(Config.model_validate(data).model_dump_json(by_alias=True, exclude_unset=True))
    repo = Repo(state / CS_DIR)
    repo.index.add(["default.yml"])
    repo.index.commit(f"IdP {issuer} and its users")
