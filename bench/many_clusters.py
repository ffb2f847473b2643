"""Many clusters at once: C clusters from U users created together, each
scaled to one worker; time until all have their worker, failures, CPU and
memory of the gateway and the rest, and whether every DIRAC job ends once
the clusters are stopped (counted in DiracX).

    .venv/bin/python bench/many_clusters.py [--clusters 20] [--users 10] [--max-jobs 20]

Real processes as in bench/cluster_start.py: embedded DiracX, the local site
(--max-jobs jobs at a time), Traefik, dask-gateway with the DIRAC backend
(tests/integration/gateway_fixtures.py Facility). Each cluster is created by
its own thread through its user's dask_gateway client, as a notebook would.
Writes bench/results/many_clusters-<time>.json.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import tempfile
import threading
import time
from pathlib import Path

import common
import psutil
from gateway_fixtures import Facility, jobs_of
from gridhub.dirac import FINAL_STATES
from processes import EmbeddedDiracX, LocalSiteProcess, kill_processes_in


def one_cluster(facility: Facility, user: str, timeout: float, t0: float, out: dict) -> None:
    """Create, scale to 1, wait for the worker; the cluster stays up (out["cluster"])."""
    try:
        with facility.client(user) as gateway:
            out["cluster"] = cluster = gateway.new_cluster()
            out["name"] = cluster.name
            out["created"] = time.monotonic() - t0
            cluster.scale(1)
            with cluster.get_client(set_as_default=False) as client:
                client.wait_for_workers(1, timeout=timeout)
            out["first_worker"] = time.monotonic() - t0
    except Exception as exc:  # a failure is a result
        out["error"] = f"{type(exc).__name__}: {exc}"[:300]


def pids_of(process) -> list[int]:
    """The pid of a tests' helper process (EmbeddedDiracX, LocalSiteProcess wrap a Process)."""
    inner = getattr(process, "_proc", process)
    return [inner.proc.pid] if inner.proc and inner.proc.poll() is None else []


def main() -> None:
    common.on_sigterm_unwind()
    common.gc_off_the_loop()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clusters", type=int, default=20)
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--max-jobs", type=int, default=20, help="local site's parallel jobs")
    ap.add_argument("--timeout", type=float, default=300, help="per cluster, seconds")
    ap.add_argument(
        "--stop-timeout", type=float, default=180, help="seconds for every job to end after stop"
    )
    args = ap.parse_args()
    if min(args.clusters, args.users, args.max_jobs) < 1:
        ap.error("--clusters, --users and --max-jobs must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="gridhub-bench-many-"))
    load_before = common.loadavg()
    procs = []
    results = [{"user": f"user{i % args.users:02d}"} for i in range(args.clusters)]
    try:
        diracx = EmbeddedDiracX(work / "diracx").start(timeout=180)
        procs.append(diracx)
        site = LocalSiteProcess(
            diracx, work / "site", "--poll-interval", "0.2", "--max-jobs", str(args.max_jobs)
        ).start()
        procs.append(site)
        facility = Facility(work / "facility", diracx, site)
        procs.append(facility)
        clusters_dir = (work / "facility" / "clusters").resolve()

        def schedulers():  # the backend runs each in its cluster's directory
            return [p for p in psutil.process_iter() if _cwd(p).startswith(str(clusters_dir))]

        groups = {
            "gateway": lambda: [psutil.Process(p) for p in pids_of(facility.gateway)],
            "schedulers": schedulers,
            "local site + workers": lambda: [q for p in pids_of(site) for q in common.tree(p)],
            "diracx": lambda: [q for p in pids_of(diracx) for q in common.tree(p)],
            "traefik": lambda: [psutil.Process(p) for p in pids_of(facility.traefik)],
        }
        t0 = time.monotonic()
        with common.Usage(groups) as usage:
            threads = [
                threading.Thread(
                    target=one_cluster, args=(facility, r["user"], args.timeout, t0, r)
                )
                for r in results
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            all_up = time.monotonic() - t0
            # stop them all, then count their DIRAC jobs that have not ended
            t1 = time.monotonic()
            for r in results:
                if "cluster" in r:
                    r.pop("cluster").shutdown()
            gc.collect()  # here, not on the event loop's thread (common.gc_off_the_loop)
            names = [r["name"] for r in results if "name" in r]
            deadline = t1 + args.stop_timeout
            while True:
                jobs = [j for n in names for j in jobs_of(diracx, n)]
                alive = [j for j in jobs if j["Status"] not in FINAL_STATES]
                if not alive or time.monotonic() > deadline:
                    break
                time.sleep(1)
            all_ended = time.monotonic() - t1
            if alive:  # keep the evidence: the gateway's and the site's logs
                keep = common.ROOT / "artifacts" / f"bench-many-clusters-{time.strftime('%H%M%S')}"
                keep.mkdir(parents=True)
                shutil.copy(facility.gateway.logfile, keep / "gateway.log")
                shutil.copy(site._proc.logfile, keep / "site.log")
                print(f"jobs not ended: logs kept in {keep}")
    finally:
        for p in reversed(procs):
            p.stop()
        kill_processes_in(work)
        shutil.rmtree(work, ignore_errors=True)
    load_after = common.loadavg()

    failures = [r["error"] for r in results if "error" in r]
    first = common.summary(r["first_worker"] for r in results if "first_worker" in r)
    resources = usage.report()
    statuses = {s: sum(j["Status"] == s for j in jobs) for s in sorted({j["Status"] for j in jobs})}
    common.print_table(
        f"{args.clusters} clusters from {args.users} users at once ({len(failures)} failed)",
        ["measure", "value"],
        [
            ["create to first worker p50 s", first["p50"]],
            ["create to first worker p95 s", first["p95"]],
            ["all clusters with a worker s", all_up],
            ["DIRAC jobs submitted", len(jobs)],
            ["jobs not ended after stop", len(alive)],
            ["stop to all jobs ended s", all_ended],
        ],
    )
    common.print_resources_and_failures(resources, failures)
    print(f"job statuses after stop: {statuses}")
    print(f"load average before {load_before}, after {load_after}")
    common.write_result(
        "many_clusters",
        {
            "benchmark": "many clusters at once: create to first worker, then stop",
            "args": vars(args),
            "failures": len(failures),
            "errors": failures,
            "first_worker": first,
            "all_with_worker_seconds": all_up,
            "dirac_jobs": len(jobs),
            "jobs_not_ended": len(alive),
            "job_statuses": statuses,
            "jobs_after_stop": jobs,
            "stop_to_all_ended_seconds": all_ended,
            "resources": resources,
            "load_average": {"before": load_before, "after": load_after},
            "machine": common.machine(),
            "versions": common.versions("dask-gateway-server", "distributed", "diracx-core"),
            "clusters": results,
        },
    )


def _cwd(p: psutil.Process) -> str:
    try:
        return p.cwd()
    except psutil.Error:
        return ""


if __name__ == "__main__":
    main()
