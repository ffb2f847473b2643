"""One call for notebooks: the Dask cluster you already have, or a new one.

    from gridhub.cluster import get_cluster
    cluster, client, created = get_cluster(workers=2)

The gateway's address and authentication come from Dask's configuration
(the facility sets ``DASK_GATEWAY__*`` in every notebook server), exactly as
for ``dask_gateway.Gateway()``. A cluster made in the JupyterLab Dask sidebar
is found with ``Gateway.list_clusters()`` and connected to; otherwise a new
one is started. Its workers are DIRAC grid jobs, so the first ones take a
little while; ``wait`` waits for at least one.
"""

from __future__ import annotations

import os
import time


def get_cluster(workers: int = 2, *, wait: float = 300.0, adapt: bool = False):
    """(cluster, client, created). Scales a cluster it created to ``workers``;
    a running one (from the sidebar) is scaled up if it has fewer."""
    from dask_gateway import Gateway

    gateway = Gateway()
    running = gateway.list_clusters()  # running and pending ones
    created = not running
    cluster = gateway.connect(running[0].name) if running else gateway.new_cluster()
    if adapt and created:
        cluster.adapt(minimum=1, maximum=workers)
    elif created or len(cluster.scheduler_info.get("workers", {})) < workers:
        cluster.scale(workers)
    client = cluster.get_client(set_as_default=True)
    client.wait_for_workers(1, timeout=wait)
    # give the others up to a minute, but do not insist: work starts on the first
    deadline = time.monotonic() + min(wait, 60.0)
    while len(client.scheduler_info()["workers"]) < workers and time.monotonic() < deadline:
        time.sleep(1)
    return cluster, client, created


def dashboard_link(client) -> str:
    """The dashboard URL as the browser sees it (through the facility)."""
    link = client.dashboard_link
    prefix = os.environ.get("JUPYTERHUB_PUBLIC_URL", "")
    return link if link.startswith("http") or not prefix else prefix.rstrip("/") + link
