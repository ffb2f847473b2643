"""DiracCluster's arguments: dask-dirac's, mapped to GridHub cluster options."""

import secrets

import pytest
from gridhub.diraccluster import DiracCluster, cluster_options, connection


def test_dask_dirac_arguments_become_cluster_options():
    assert cluster_options(8, "24GB", None, "LCG.UKI-SOUTHGRID-RALPP.uk", None) == {
        "worker_cores": 8,
        "worker_memory": round(24e9 / 2**30, 3),
        "site": "LCG.UKI-SOUTHGRID-RALPP.uk",
    }
    # dask-dirac's other snippet: nthreads, a site list of one, a container
    assert cluster_options(None, None, 5, ["LCG.A.uk"], "docker://x/y:z") == {
        "worker_cores": 5,
        "site": "LCG.A.uk",
        "worker_image": "docker://x/y:z",
    }
    assert cluster_options(None, 2, None, None, None) == {"worker_cores": 1, "worker_memory": 2.0}


def test_contradictions_are_refused_naming_them():
    with pytest.raises(ValueError, match="cores=2 and nthreads=4"):
        cluster_options(2, None, 4, None, None)
    with pytest.raises(ValueError, match="one DIRAC site per cluster"):
        cluster_options(1, None, None, ["LCG.A.uk", "LCG.B.uk"], None)


@pytest.mark.parametrize("name", ["user_proxy", "cert_path", "owner_group", "submission_url"])
def test_dask_dirac_credentials_are_refused_with_what_replaces_them(name):
    with pytest.raises(TypeError, match=f"{name} does not apply in GridHub: "):
        DiracCluster(cores=1, memory="2GB", **{name: "x509up_u1"})


def test_a_facility_url_and_token_locate_the_gateway(monkeypatch):
    token = secrets.token_hex(8)
    c = connection("https://gridhub.example.org/", token)
    assert c["address"] == "https://gridhub.example.org/services/dask-gateway"
    assert c["proxy_address"] == "gateway://gridhub.example.org:8786"
    assert c["auth"].api_token == token
    with pytest.raises(ValueError, match="the hub's URL"):
        connection("gridhub.example.org", token)
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    with pytest.raises(ValueError, match="needs token="):
        DiracCluster(facility="https://gridhub.example.org")
