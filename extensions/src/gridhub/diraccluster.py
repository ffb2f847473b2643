"""``DiracCluster``: a Dask cluster of DIRAC grid jobs, the way dask-jobqueue
(and dask-dirac) clusters are used, on top of GridHub's gateway.

    from gridhub import DiracCluster
    from dask.distributed import Client

    cluster = DiracCluster(cores=1, memory="2GB")
    cluster.scale(jobs=10)          # or cluster.adapt(minimum_jobs=0, maximum_jobs=20)
    client = Client(cluster)

In a GridHub notebook the gateway's address and your identity come from the
server's environment. Outside (a script, a laptop), give the facility's URL
and a JupyterHub API token of yours: ``DiracCluster(facility="https://host",
token=...)`` (or GRIDHUB_URL and JUPYTERHUB_API_TOKEN in the environment).

dask-dirac's own credentials (``user_proxy``, ``cert_path``, ``owner_group``,
``submission_url``) do not apply: the facility submits every job with your
own DIRAC identity and runs the scheduler; they are refused naming what
replaces them. ``scheduler_options`` is accepted and ignored (the facility's
gateway places the scheduler).
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from dask.utils import parse_bytes
from dask_gateway import GatewayCluster, JupyterHubAuth

from .refusals import release

#: dask-dirac arguments GridHub replaces, and by what
REPLACED = {
    "user_proxy": "your DIRAC identity is the facility's doing (facility= and token=)",
    "cert_path": "TLS to the facility uses the system's CA store (SSL_CERT_FILE)",
    "owner_group": "your DIRAC group follows your hub groups",
    "submission_url": "facility= (the hub's URL)",
}


def connection(facility: str, token: str) -> dict[str, Any]:
    """Gateway address, Dask proxy address and auth of the facility at ``facility``."""
    url = facility.rstrip("/")
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"facility must be the hub's URL (https://...), got {facility!r}")
    host = urlsplit(url).hostname
    return {
        "address": f"{url}/services/dask-gateway",
        "proxy_address": f"gateway://{host}:8786",
        "auth": JupyterHubAuth(api_token=token),
    }


def cluster_options(
    cores: int | None,
    memory: str | float | None,
    nthreads: int | None,
    dirac_site: str | list[str] | None,
    container: str | None,
) -> dict[str, Any]:
    """dask-jobqueue/dask-dirac arguments as GridHub cluster options."""
    if cores is not None and nthreads is not None and cores != nthreads:
        raise ValueError(f"cores={cores} and nthreads={nthreads}: a worker's threads are its cores")
    options: dict[str, Any] = {"worker_cores": cores or nthreads or 1}
    if memory is not None:
        size = parse_bytes(memory) if isinstance(memory, str) else float(memory) * 2**30
        options["worker_memory"] = round(size / 2**30, 3)  # GiB, as the option is
    sites = [dirac_site] if isinstance(dirac_site, str) else list(dirac_site or [])
    if len(sites) > 1:
        raise ValueError(f"one DIRAC site per cluster (or none: any site), got {sites}")
    if sites:
        options["site"] = sites[0]
    if container:
        options["worker_image"] = container
    return options


class DiracCluster(GatewayCluster):
    """A GridHub Dask cluster whose workers are DIRAC jobs (see the module)."""

    def __init__(
        self,
        cores: int | None = None,
        memory: str | float | None = None,
        *,
        nthreads: int | None = None,
        dirac_site: str | list[str] | None = None,
        dirac_sites: str | list[str] | None = None,
        container: str | None = None,
        facility: str | None = None,
        token: str | None = None,
        scheduler_options: dict | None = None,  # accepted, not used (see the module)
        **kwargs: Any,
    ) -> None:
        for name in REPLACED:
            if name in kwargs:
                raise TypeError(f"DiracCluster: {name} does not apply in GridHub: {REPLACED[name]}")
        options = cluster_options(cores, memory, nthreads, dirac_site or dirac_sites, container)
        facility = facility or os.environ.get("GRIDHUB_URL")
        if facility and "address" not in kwargs:
            token = token or os.environ.get("JUPYTERHUB_API_TOKEN")
            if not token:
                raise ValueError("DiracCluster(facility=...) needs token= (a JupyterHub token)")
            kwargs.update(connection(facility, token))
        try:
            super().__init__(**kwargs, **options)
        except Exception as exc:
            # the refused cluster's own Gateway: closed here, in the caller's
            # thread, never by the collector on the IO loop (gridhub.refusals)
            # (re-raised, the error holds this frame and so this cluster again)
            release(exc)
            self.__dict__.pop("gateway", None)
            raise

    def scale(self, n: int | None = None, jobs: int | None = None, **kwargs: Any) -> Any:
        """Scale to ``n`` workers; ``jobs=`` as in dask-jobqueue (one worker per job)."""
        if (n is None) == (jobs is None):
            raise TypeError("scale() takes the number of workers, or jobs=")
        return super().scale(jobs if n is None else n, **kwargs)

    def adapt(
        self,
        minimum: int | None = None,
        maximum: int | None = None,
        *,
        minimum_jobs: int | None = None,
        maximum_jobs: int | None = None,
        **kwargs: Any,
    ) -> Any:
        """Adaptive scaling; ``minimum_jobs``/``maximum_jobs`` as in dask-jobqueue."""
        return super().adapt(
            minimum=minimum if minimum_jobs is None else minimum_jobs,
            maximum=maximum if maximum_jobs is None else maximum_jobs,
            **kwargs,
        )
