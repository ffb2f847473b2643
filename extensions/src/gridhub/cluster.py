"""One call for notebooks: the Dask cluster you already have, or a new one.

    from gridhub.cluster import get_cluster
    cluster, client, created = get_cluster(workers=2)
    cluster, client, created = get_cluster(name="gridhub.abc123")  # one of several

The gateway's address and authentication come from Dask's configuration
(the facility sets ``DASK_GATEWAY__*`` in every notebook server), exactly as
for ``dask_gateway.Gateway()``. A cluster made in the JupyterLab Dask sidebar
is found with ``Gateway.list_clusters()`` and connected to; otherwise a new
one is started. Its workers are DIRAC grid jobs, so the first ones take a
little while: while they start, ``get_cluster`` prints how many worker jobs
are queued, matched and running in DIRAC and why the waiting ones wait
(``worker_jobs(cluster)`` gives the same summary at any time).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .refusals import release

#: DIRAC job states before a site took the job, and once it matched it.
QUEUED = frozenset({"Submitting", "Received", "Checking", "Waiting", "Staging"})
MATCHED = frozenset({"Matched"})
RUNNING = frozenset({"Running", "Completing"})


@dataclass
class JobsReport:
    """A cluster's worker jobs in DIRAC, as the gateway reports them."""

    cluster: str
    status: str  # the gateway's state of the cluster (SUBMITTED, RUNNING, FAILED, ...)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # why the latest failed jobs ended
    connected: int | None = None  # workers connected to the scheduler, when known

    def count(self, states: frozenset[str]) -> int:
        return sum(j["status"] in states for j in self.jobs)

    @property
    def queued(self) -> int:
        return self.count(QUEUED)

    @property
    def matched(self) -> int:
        return self.count(MATCHED)

    @property
    def running(self) -> int:
        return self.count(RUNNING)

    def summary(self) -> str:
        """One short line (the sidebar's card is narrow): the counts that are
        not zero, why the first waiting job waits, the last failure."""
        counts = {"queued": self.queued, "matched": self.matched, "running": self.running}
        line = ", ".join(f"{n} {state}" for state, n in counts.items() if n) or "no jobs"
        waiting = next((j for j in self.jobs if j["status"] in QUEUED | MATCHED), None)
        if waiting and waiting["minor_status"] and waiting["minor_status"] != "Unknown":
            line += f" ({waiting['status']}: {waiting['minor_status']})"
        if self.failures:
            line += f"; failed: {self.failures[-1]}"
        return line

    def __str__(self) -> str:
        line = (
            f"{self.cluster}: {len(self.jobs)} worker job(s) in DIRAC: {self.queued} queued, "
            f"{self.matched} matched, {self.running} running"
        )
        if self.connected is not None:
            line += f"; {self.connected} worker(s) connected"
        lines = [line]
        for j in self.jobs:
            if j["status"] in RUNNING and not j["application_status"]:
                continue
            # DIRAC's default application status says nothing
            why = " / ".join(
                s for s in (j["minor_status"], j["application_status"]) if s and s != "Unknown"
            )
            lines.append(f"  job {j['job_id']} ({j['worker']}): {j['status']}, {why or '-'}")
        lines += [f"  failed: {f}" for f in self.failures]
        return "\n".join(lines)


def worker_jobs(cluster: Any) -> JobsReport:
    """The worker jobs of a dask_gateway.GatewayCluster with their DIRAC status,
    minor status and application status (GridHub's gateway API extension)."""
    gateway = cluster.gateway
    return gateway.sync(fetch_worker_jobs, gateway, cluster.name)


async def fetch_worker_jobs(gateway: Any, name: str) -> JobsReport:
    """worker_jobs for cluster ``name`` through a dask_gateway.Gateway's own
    session (its auth and TLS), from inside its event loop."""
    url = f"{gateway.address}/api/v1/clusters/{name}/jobs"
    resp = await gateway._request("GET", url)
    data = await resp.json()
    return JobsReport(data["cluster"], data["status"], data["jobs"], data["failures"])


def _choose(gateway: Any, name: str | None) -> str | None:
    """The name of the cluster to connect to, or None to create one."""
    running = gateway.list_clusters()  # running and pending ones
    names = [c.name for c in running]
    if name is not None:
        if name not in names:
            listed = ", ".join(names) or "none"
            raise ValueError(f"no cluster named {name!r}; your clusters: {listed}")
        return name
    if len(running) > 1:
        listed = "\n".join(f"  {c.name} ({c.status.name.lower()})" for c in running)
        raise ValueError(
            f"you have {len(running)} clusters; say which one with get_cluster(name=...):\n{listed}"
        )
    return names[0] if names else None


def get_cluster(
    workers: int = 2,
    *,
    name: str | None = None,
    wait: float = 300.0,
    adapt: bool = False,
    progress: Callable[[str], None] | None = print,
    poll: float = 2.0,
):
    """(cluster, client, created).

    ``name``: connect to that cluster of yours. Without it: your only cluster
    (e.g. from the Dask sidebar), else a new one; with several, a ValueError
    lists them. Scales a cluster it created to ``workers``; a running one is
    scaled up if it has fewer. Waits up to ``wait`` seconds for the first
    worker, reporting the worker jobs through ``progress`` (each time the
    summary changes; None: quiet), then gives the others up to a minute.
    """
    from dask_gateway import Gateway

    gateway = Gateway()
    chosen = _choose(gateway, name)
    created = chosen is None
    try:
        cluster = gateway.new_cluster() if created else gateway.connect(chosen)
    except Exception as exc:  # e.g. a limit: nothing of it may hang the kernel later
        release(exc)
        raise
    if adapt and created:
        cluster.adapt(minimum=1, maximum=workers)
    elif created or len(cluster.scheduler_info.get("workers", {})) < workers:
        cluster.scale(workers)
    client = cluster.get_client(set_as_default=True)
    try:
        _wait_for_workers(cluster, client, 1, wait, progress, poll, insist=True)
        # the others get up to a minute more, but work starts on the first
        _wait_for_workers(cluster, client, workers, min(wait, 60.0), progress, poll, insist=False)
    except TimeoutError as exc:
        client.close()
        # Jobs may queue for long on the grid: keep the cluster (not stopped
        # when this object is garbage collected) and say how to come back.
        cluster.shutdown_on_close = False
        raise TimeoutError(
            f"{exc}\nThe cluster keeps its jobs queued: get_cluster(name={cluster.name!r}) "
            "waits again; cluster.shutdown() stops it."
        ) from None
    except BaseException:
        client.close()
        raise
    return cluster, client, created


def _wait_for_workers(
    cluster: Any,
    client: Any,
    n: int,
    timeout: float,
    progress: Callable[[str], None] | None,
    poll: float,
    *,
    insist: bool,
) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    report = None
    while True:
        connected = len(client.scheduler_info()["workers"])
        if connected >= n:
            break
        report = worker_jobs(cluster)
        report.connected = connected
        if report.status == "FAILED":
            raise RuntimeError(f"cluster {cluster.name} failed:\n{report}")
        if progress is not None and str(report) != last:
            last = str(report)
            progress(last)
        if time.monotonic() > deadline:
            if insist:
                raise TimeoutError(f"no worker connected within {timeout:.0f} s:\n{report}")
            return
        time.sleep(poll)
    if progress is not None and report is not None:
        progress(f"{cluster.name}: {connected} worker(s) connected")
