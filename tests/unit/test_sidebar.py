"""The Dask sidebar's server side (gridhub.hub.sidebar) and the dashboard links
the hub gives every server: the parts that need no server (integration:
test_cluster_progress, test_hub_iam; e2e: the compose facility)."""

from __future__ import annotations

import pytest
from gridhub.cluster import JobsReport
from gridhub.hub.sidebar import dashboard_base
from test_hub_config_build import build


@pytest.mark.parametrize(
    ("link", "base"),
    [
        ("/services/dask-gateway/clusters/abc/status", "/services/dask-gateway/clusters/abc"),
        (
            "https://h.example/services/dask-gateway/clusters/abc/",
            "https://h.example/services/dask-gateway/clusters/abc",
        ),
        ("/user/alice/proxy/8787/status", "/user/alice/proxy/8787"),
        # a dashboard at the root of a host and port: dask-labextension's own proxy
        ("http://127.0.0.1:8787/status", None),
        ("http://127.0.0.1:8787/", None),
        ("", None),
    ],
)
def test_dashboard_base(link, base):
    assert dashboard_base(link) == base


def test_every_server_gets_relative_dashboard_links_and_the_sidebar_extension(tmp_path):
    """The gateway's links are relative to the user's page, whatever the public URL
    (the default facility's gridhub.internal does not resolve in a browser)."""
    for env in (
        {},
        {"GRIDHUB_SPAWNER": "local"},
        {"GRIDHUB_PUBLIC_URL": "https://gridhub.internal:443"},
    ):
        c = build(env, tmp_path)
        assert c.Spawner.environment["DASK_GATEWAY__PUBLIC_ADDRESS"] == "/services/dask-gateway"
        assert "--ServerApp.jpserver_extensions=gridhub.hub.sidebar=True" in c.Spawner.args


def test_card_summary_counts_jobs_and_says_why_one_waits():
    def job(job_id, status, minor):
        return {"job_id": job_id, "worker": f"w{job_id}", "status": status,
                "minor_status": minor, "application_status": ""}  # fmt: skip

    jobs = [
        job(1, "Running", ""),
        job(2, "Waiting", "Pilot Agent Submission"),
        job(3, "Matched", "Assigned"),
    ]
    report = JobsReport("c", "RUNNING", jobs, ["job 0: Failed (exit 1)"])
    assert report.summary() == (
        "1 queued, 1 matched, 1 running (Waiting: Pilot Agent Submission); "
        "failed: job 0: Failed (exit 1)"
    )
    unknown = [job(1, "Running", ""), job(2, "Waiting", "Unknown")]
    assert JobsReport("c", "RUNNING", unknown).summary() == "1 queued, 1 running"
    assert JobsReport("c", "PENDING", []).summary() == "no jobs"
