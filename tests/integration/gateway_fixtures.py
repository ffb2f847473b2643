"""The facility's Dask side as real processes: embedded DiracX, the local
site, Traefik, and dask-gateway-server with the gridhub DIRAC backend.

Use the ``dirac_facility`` fixture (module scope): ``.client(user)`` gives a
dask_gateway.Gateway whose clusters' workers are DIRAC jobs.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

import pytest
from dask_gateway import BasicAuth, Gateway
from processes import (
    dask_gateway_server,
    free_port,
    gateway_config,
    self_signed_cert,
    start_traefik,
)

PASSWORD = secrets.token_hex(8)


class Facility:
    def __init__(self, work: Path, diracx, site) -> None:
        self.site = site
        self.work = work
        self.diracx = diracx
        self.cert, self.key = self_signed_cert(
            work / "tls", ["localhost", "127.0.0.1", "gridhub-tunnel"]
        )
        self.gw_port = free_port()
        self.provider_token = secrets.token_hex(16)
        self.traefik = start_traefik(
            work / "traefik",
            provider_url=f"http://127.0.0.1:{self.gw_port}/api/v1/traefik",
            provider_token=self.provider_token,
            cert=self.cert,
            key=self.key,
        )
        self.encrypt_key = base64.b64encode(os.urandom(32)).decode()
        self.gateway = self.start_gateway()

    def config(self, **overrides: object) -> str:
        values: dict[str, object] = {
            "DaskGateway__address": f"127.0.0.1:{self.gw_port}",
            "DaskGateway__backend_class": "gridhub.gateway.backend.DiracBackend",
            "DaskGateway__authenticator_class": "dask_gateway_server.auth.SimpleAuthenticator",
            "SimpleAuthenticator__password": PASSWORD,
            "Proxy__externally_managed": True,
            "DiracBackend__api_url": f"http://127.0.0.1:{self.gw_port}/api",
            "DiracBackend__db_url": f"sqlite:///{self.work / 'gateway.sqlite'}",
            "DiracBackend__db_encrypt_keys": [self.encrypt_key],
            "DiracBackend__stop_clusters_on_shutdown": False,
            "DiracBackend__diracx_url": self.diracx.url,
            "DiracBackend__diracx_embedded_state_dir": str(self.diracx.state_dir),
            "DiracBackend__public_dask_address": f"127.0.0.1:{self.traefik.dask_port}",
            "DiracBackend__facility_ca_file": str(self.cert),
            "DiracBackend__traefik_token": self.provider_token,
            "DiracBackend__state_dir": str(self.work / "gateway-state"),
            "DiracBackend__clusters_directory": str(self.work / "clusters"),
            "DiracBackend__worker_status_period": 1.0,
            "DiracBackend__cluster_status_period": 1.0,
            "DiracBackend__cluster_heartbeat_period": 2,
            "DiracClusterConfig__worker_memory": "1 G",
            "DiracClusterConfig__idle_timeout": 0.0,
        }
        values.update(overrides)
        return gateway_config(**values)

    def start_gateway(self):
        return dask_gateway_server(
            self.work / "gateway", self.config(), f"127.0.0.1:{self.gw_port}"
        )

    def client(self, user: str = "alice") -> Gateway:
        return Gateway(
            address=self.gateway.url,
            proxy_address=f"gateway://127.0.0.1:{self.traefik.dask_port}",
            auth=BasicAuth(user, PASSWORD),
        )

    def logs(self) -> str:
        return "\n".join(
            f"--- {name} ---\n{log}"
            for name, log in [
                ("gateway", self.gateway.log()),
                ("local site", self.site.log()),
                ("traefik", self.traefik.log()),
            ]
        )

    def stop(self) -> None:
        for p in (self.gateway, self.traefik):
            p.stop()


@pytest.fixture(scope="module")
def dirac_facility(tmp_path_factory, diracx_server, diracx_local_site):
    f = Facility(tmp_path_factory.mktemp("facility"), diracx_server, diracx_local_site)
    yield f
    f.stop()
