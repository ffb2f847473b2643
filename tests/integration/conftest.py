"""Shared integration fixtures.

DiracX (owner: the embedded-DIRAC work):
  ``diracx_server``  session: a real DiracX 0.7 (gridhub.embedded) subprocess on a
                     free loopback port, state in a tmp dir; ``.url``, ``.state_dir``,
                     ``.token_source()``, ``.client()``, ``.stop()``, ``.start()``
                     (restartable on the same port with the same state), ``.log()``.
  ``diracx_local_site`` session: a gridhub.localsite subprocess running the
                     facility's jobs from ``diracx_server``; ``.jobs_dir`` (job N runs in
                     jobs_dir/N), ``.work_dir``, ``.log()``.

The Dask side (gateway_fixtures.py):
  ``dirac_facility`` module: Traefik + dask-gateway-server with the DIRAC backend on
                     top of the two above; ``.client(user)`` -> dask_gateway.Gateway.
"""

from __future__ import annotations

import signal

from processes import EmbeddedDiracX, LocalSiteProcess, facility_tls

facility_tls()  # before anything imports aiohttp (see FacilityTLS)

# A run started in the background (nohup, `cmd &` in a script, some CI runners)
# ignores SIGINT, and every process it starts inherits that. JupyterHub stops
# its services and servers with SIGINT and waits 10 s for each before SIGTERM:
# a hub's shutdown took 30 s, on every hub stop of the tier. Handling SIGINT
# here gives the processes the tests start the default again.
signal.signal(signal.SIGINT, signal.default_int_handler)

import pytest  # noqa: E402
from gateway_fixtures import dirac_facility, held_facility  # noqa: E402, F401 - shared fixtures
from lake_fixtures import lake_dir  # noqa: E402, F401 - shared fixture


@pytest.fixture(scope="session")
def diracx_server(tmp_path_factory):
    server = EmbeddedDiracX(tmp_path_factory.mktemp("diracx") / "state")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def diracx_local_site(diracx_server, tmp_path_factory):
    site = LocalSiteProcess(diracx_server, tmp_path_factory.mktemp("localsite") / "jobs")
    site.start()
    yield site
    site.stop()
