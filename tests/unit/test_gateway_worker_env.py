"""A grid job carries only what a worker needs (issue 15, point 4): not the
cluster's gateway API token, which lets its holder stop the cluster."""

from __future__ import annotations

from types import SimpleNamespace

from gridhub.gateway.backend import DiracBackend, DiracClusterConfig

TOKEN = "cluster-api-token-0123456789abcdef"  # noqa: S105  (a test value)


def test_grid_job_carries_no_cluster_api_token() -> None:
    b = DiracBackend(api_url="http://gateway:8000/api")
    b.public_dask_address = "facility:8786"
    cluster = SimpleNamespace(
        name="c0ffee", username="alice", token=TOKEN, config=DiracClusterConfig(), state={}
    )
    env = b.worker_env(cluster)
    assert "DASK_GATEWAY_API_TOKEN" not in env
    assert "DASK_GATEWAY_API_URL" not in env
    assert TOKEN not in " ".join(env.values())
    assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
    assert env["GRIDHUB_CLUSTER_NAME"] == "c0ffee"
