"""DiracBackend.on_cluster_heartbeat: a worker whose DIRAC job has already
ended is not counted as active, so its replacement is not stopped as surplus."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from dask_gateway_server.backends.db_base import DBBackendBase, JobStatus
from dask_gateway_server.utils import FrozenAttrDict
from gridhub.gateway.backend import DiracBackend


def worker(name: str, status: JobStatus, target: JobStatus) -> SimpleNamespace:
    return SimpleNamespace(name=name, status=status, target=target)


@pytest.fixture
def backend(monkeypatch):
    seen: list[dict] = []

    async def base_heartbeat(self, cluster_name, msg):
        seen.append(msg)

    monkeypatch.setattr(DBBackendBase, "on_cluster_heartbeat", base_heartbeat)
    b = DiracBackend()
    workers = {
        "dead": worker("dead", JobStatus.SUBMITTED, JobStatus.FAILED),  # job ended
        "stopped": worker("stopped", JobStatus.STOPPED, JobStatus.STOPPED),
        "alive": worker("alive", JobStatus.RUNNING, JobStatus.RUNNING),
        "replacement": worker("replacement", JobStatus.SUBMITTED, JobStatus.RUNNING),
    }
    cluster = SimpleNamespace(
        name="c1", username="u", count=2, workers=workers, config=FrozenAttrDict(CONFIG)
    )
    b.db = SimpleNamespace(
        get_cluster=lambda name: cluster if name == "c1" else None,
        list_clusters=lambda username: [cluster, *OTHERS],
    )
    return b, seen


CONFIG = {"worker_cores": 2, "user_limits": {}}
OTHERS: list[SimpleNamespace] = []  # the user's other clusters


def heartbeat(active: list[str]) -> dict:
    return {"count": 2, "active_workers": active, "closing_workers": [], "closed_workers": []}


def test_ended_workers_are_reported_closed(backend) -> None:
    b, seen = backend
    asyncio.run(b.on_cluster_heartbeat("c1", heartbeat(["dead", "stopped", "alive"])))
    (msg,) = seen
    assert msg["active_workers"] == ["alive"]
    assert msg["closed_workers"] == ["dead", "stopped"]
    assert msg["count"] == 2


def test_live_workers_and_unknown_clusters_pass_unchanged(backend) -> None:
    b, seen = backend
    asyncio.run(b.on_cluster_heartbeat("c1", heartbeat(["alive"])))
    asyncio.run(b.on_cluster_heartbeat("other", heartbeat(["dead"])))
    assert [m["active_workers"] for m in seen] == [["alive"], ["dead"]]


def test_a_heartbeat_asking_more_than_the_owner_limits_leave_is_held(backend, monkeypatch):
    b, seen = backend
    # the user may hold 10 cores; another cluster of theirs has 3 one-core workers
    limits = {"clusters": None, "workers": None, "cores": 10, "source": "class"}
    monkeypatch.setitem(CONFIG, "user_limits", limits)
    other = SimpleNamespace(name="c0", count=3, config=FrozenAttrDict({"worker_cores": 1}))
    OTHERS.append(other)
    try:
        asyncio.run(b.on_cluster_heartbeat("c1", {**heartbeat(["alive"]), "count": 8}))
    finally:
        OTHERS.clear()
    (msg,) = seen
    assert msg["count"] == 3  # (10 - 3) cores // 2 cores per worker
