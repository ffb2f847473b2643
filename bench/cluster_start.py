"""Cluster create to first worker connected: DIRAC backend vs LocalBackend.

    .venv/bin/python bench/cluster_start.py [--runs 10]

Both gateways run side by side in the same run on this machine, and the
runs alternate, so both see the same load. DIRAC: the facility as the tests
build it (tests/integration/gateway_fixtures.py Facility: the gridhub
backend, its API through Traefik over HTTPS, workers are DIRAC jobs of the
embedded DiracX run by the local site, connecting through Traefik and the
reverse path). Baseline: dask-gateway's own LocalBackend (workers are local
processes, its Go proxy). Prints a table and writes
bench/results/cluster_start-<time>.json; goals: DIRAC p50 under 10 s, and
at most 2x the baseline's.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

import common
import httpx
from dask_gateway import BasicAuth, Gateway
from gateway_fixtures import PASSWORD, Facility
from processes import (
    EmbeddedDiracX,
    LocalSiteProcess,
    dask_gateway_server,
    free_port,
    gateway_config,
    kill_processes_in,
    wait_for,
)


def time_to_first_worker(gateway: Gateway) -> float:
    t0 = time.perf_counter()
    cluster = gateway.new_cluster()
    try:
        cluster.scale(1)
        with cluster.get_client(set_as_default=False) as client:
            client.wait_for_workers(1, timeout=120)
        return time.perf_counter() - t0
    finally:
        cluster.shutdown()
        del cluster
        gc.collect()  # here, not on the event loop's thread (common.gc_off_the_loop)


def local_backend(work: Path):
    """dask-gateway's LocalBackend behind its own proxy: the baseline."""
    port, proxy = free_port(), free_port()
    gw = dask_gateway_server(
        work,
        gateway_config(
            DaskGateway__address=f"127.0.0.1:{port}",
            DaskGateway__authenticator_class="dask_gateway_server.auth.SimpleAuthenticator",
            SimpleAuthenticator__password=PASSWORD,
            DaskGateway__backend_class="dask_gateway_server.backends.local.UnsafeLocalBackend",
            Proxy__address=f"127.0.0.1:{proxy}",
            UnsafeLocalBackend__clusters_directory=str(work / "clusters"),
            LocalClusterConfig__scheduler_cmd=[
                sys.executable,
                "-m",
                "distributed.cli.dask_scheduler",
            ],
            LocalClusterConfig__worker_cmd=[sys.executable, "-m", "distributed.cli.dask_worker"],
            LocalClusterConfig__worker_memory="1 G",
        ),
        f"127.0.0.1:{port}",
    )
    # Its Go proxy learns the API route from the gateway a moment later.
    url = f"http://127.0.0.1:{proxy}"
    wait_for(lambda: httpx.get(url + "/api/health").status_code == 200, 30, "LocalBackend proxy")
    return gw, Gateway(address=url, auth=BasicAuth("bench", PASSWORD))


def main() -> None:
    common.on_sigterm_unwind()
    common.gc_off_the_loop()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="gridhub-bench-cluster-"))
    load_before = common.loadavg()
    procs, times = [], {"local": [], "dirac": []}
    try:
        diracx = EmbeddedDiracX(work / "diracx").start(timeout=180)
        procs.append(diracx)
        site = LocalSiteProcess(diracx, work / "site", "--poll-interval", "0.2").start()
        procs.append(site)
        facility = Facility(work / "facility", diracx, site)
        procs.append(facility)
        local_gw, local = local_backend(work / "gw-local")
        procs.append(local_gw)
        dirac = facility.client("bench")
        time_to_first_worker(dirac), time_to_first_worker(local)  # warm caches
        for i in range(args.runs):  # interleaved, so both see the same noise
            for label, gw in (("local", local), ("dirac", dirac))[:: 1 if i % 2 else -1]:
                times[label].append(time_to_first_worker(gw))
        dirac.close()
        local.close()
    finally:
        for p in reversed(procs):
            p.stop()
        kill_processes_in(work)  # schedulers and workers of interrupted runs
        shutil.rmtree(work, ignore_errors=True)
    load_after = common.loadavg()
    stats = {k: common.summary(v) for k, v in times.items()}
    ratio = stats["dirac"]["p50"] / stats["local"]["p50"]
    common.print_table(
        f"cluster create to first worker connected, {args.runs} runs each",
        ["backend", "p50 s", "p95 s", "min s", "max s"],
        [[k, s["p50"], s["p95"], s["min"], s["max"]] for k, s in stats.items()],
    )
    print(f"ratio dirac/local (p50): {ratio:.2f}  (goal <= 2; DIRAC p50 goal < 10 s)")
    print(f"load average before {load_before}, after {load_after}")
    common.write_result(
        "cluster_start",
        {
            "benchmark": "cluster create to first worker connected",
            "runs": args.runs,
            **stats,
            "ratio_p50": ratio,
            "raw": times,
            "load_average": {"before": load_before, "after": load_after},
            "machine": common.machine(),
            "versions": common.versions("dask-gateway-server", "distributed", "diracx-core"),
        },
    )


if __name__ == "__main__":
    main()
