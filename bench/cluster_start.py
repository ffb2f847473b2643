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

It also breaks each DIRAC run into phases, from the timestamps the parts
log (gateway, local site, the job's gridhub-worker and dask worker) and the
client's clock, and samples the CPU seconds of the scheduler (when the
client has the cluster) and of the job's processes (when the worker is
connected): on a loaded machine, compare phases and CPU, not wall times.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import common
import httpx
import psutil
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


def time_to_first_worker(gateway: Gateway, phases: DiracPhases | None = None) -> float:
    t0 = time.perf_counter()
    wall0 = time.time()
    cluster = gateway.new_cluster()
    try:
        if phases:
            phases.created(cluster.name, wall0)
        cluster.scale(1)
        with cluster.get_client(set_as_default=False) as client:
            client.wait_for_workers(1, timeout=120)
        elapsed = time.perf_counter() - t0
        if phases:
            phases.connected()
        return elapsed
    finally:
        cluster.shutdown()
        del cluster
        gc.collect()  # here, not on the event loop's thread (common.gc_off_the_loop)


def _stamp(log: str, pattern: str) -> float | None:
    """Time of the first line matching ``pattern`` (the parts log local time,
    "2026-01-02 03:04:05.678" or with a comma)."""
    for line in log.splitlines():
        if re.search(pattern, line):
            m = re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[.,]\d+", line)
            if m:
                when = dt.datetime.strptime(m.group().replace(",", "."), "%Y-%m-%d %H:%M:%S.%f")
                return when.timestamp()
    return None


def _cpu(procs) -> float:
    total = 0.0
    for p in procs:
        try:
            c = p.cpu_times()
            total += c.user + c.system
        except psutil.Error:
            continue
    return total


class DiracPhases:
    """Per-run phases of the DIRAC path, each ending at a logged event."""

    # (phase, source, pattern of the event that ends it); {c}: cluster, {j}: job id
    EVENTS = [
        ("API to backend", "gateway", r"Submitting cluster {c}"),
        ("scheduler start", "gateway", r"Cluster {c} is running"),
        ("client has cluster (Traefik route)", "client", "created"),
        ("scale to JDL submitted", "gateway", r"of cluster {c} .*is DIRAC job"),
        ("site picks up (poll) to Running", "site", r"Job {j}: .*-> Running"),
        ("JDL + sandbox fetch, job spawn", "site", r"Job {j}: started"),
        ("gridhub-worker start + tunnel", "job", r"reverse path .* open"),
        ("dask worker start + register", "job", r"Registered to"),
        ("client sees worker", "client", "connected"),
    ]

    def __init__(self, facility: Facility, site: LocalSiteProcess) -> None:
        self.facility, self.site = facility, site
        self.runs: list[dict[str, float | None]] = []

    def created(self, cluster: str, t0: float) -> None:
        self.cluster, self.t0, self.t_created = cluster, t0, time.time()
        clusters = self.facility.work / "clusters" / cluster
        self.cpu_scheduler = _cpu(common.working_in(clusters))

    def connected(self) -> None:
        t_connected = time.time()
        jobs = common.working_in(self.site.jobs_dir)
        cpu_job = _cpu(jobs)
        gateway = self.facility.gateway.logfile.read_text(errors="replace")
        m = re.search(rf"of cluster {self.cluster} .*is DIRAC job (\d+)", gateway)
        job = int(m.group(1)) if m else -1
        workdir = self.site.jobs_dir / str(job)
        logs = {
            "gateway": gateway,
            "site": self.site.logfile.read_text(errors="replace"),
            "job": "".join(
                (workdir / f).read_text(errors="replace")
                for f in ("std.err", "std.out")
                if (workdir / f).exists()
            ),
        }
        clock = {"created": self.t_created, "connected": t_connected}
        run: dict[str, float | None] = {}
        prev: float | None = self.t0
        for phase, source, pattern in self.EVENTS:
            if source == "client":
                at = clock[pattern]
            else:
                at = _stamp(logs[source], pattern.format(c=self.cluster, j=job))
            run[phase] = at - prev if at is not None and prev is not None else None
            prev = at
        run["CPU s: scheduler"] = self.cpu_scheduler
        run["CPU s: job (gridhub-worker + dask worker)"] = cpu_job
        self.runs.append(run)

    def table(self) -> dict[str, float | None]:
        keys = list(self.runs[0]) if self.runs else []
        out = {}
        for k in keys:
            xs = [r[k] for r in self.runs if r[k] is not None]
            out[k] = statistics.median(xs) if xs else None
        return out


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


@contextlib.contextmanager
def dirac_and_local(work: Path, *site_args: str) -> Iterator[tuple]:
    """(facility, local site, DIRAC gateway client, LocalBackend gateway client)
    side by side in ``work``; everything stopped and ``work`` removed after."""
    procs = []
    try:
        diracx = EmbeddedDiracX(work / "diracx").start(timeout=180)
        procs.append(diracx)
        site = LocalSiteProcess(diracx, work / "site", "--poll-interval", "0.2", *site_args)
        procs.append(site.start())
        facility = Facility(work / "facility", diracx, site)
        procs.append(facility)
        local_gw, local = local_backend(work / "gw-local")
        procs.append(local_gw)
        dirac = facility.client("bench")
        try:
            yield facility, site, dirac, local
        finally:
            dirac.close()
            local.close()
    finally:
        for p in reversed(procs):
            p.stop()
        kill_processes_in(work)  # schedulers and workers of interrupted runs
        shutil.rmtree(work, ignore_errors=True)


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
    times: dict[str, list[float]] = {"local": [], "dirac": []}
    with dirac_and_local(work) as (facility, site, dirac, local):
        time_to_first_worker(dirac), time_to_first_worker(local)  # warm caches
        phases = DiracPhases(facility, site)
        for i in range(args.runs):  # interleaved, so both see the same noise
            for label, gw in (("local", local), ("dirac", dirac))[:: 1 if i % 2 else -1]:
                times[label].append(time_to_first_worker(gw, phases if label == "dirac" else None))
    load_after = common.loadavg()
    stats = {k: common.summary(v) for k, v in times.items()}
    ratio = stats["dirac"]["p50"] / stats["local"]["p50"]
    common.print_table(
        f"cluster create to first worker connected, {args.runs} runs each",
        ["backend", "p50 s", "p95 s", "min s", "max s"],
        [[k, s["p50"], s["p95"], s["min"], s["max"]] for k, s in stats.items()],
    )
    print(f"ratio dirac/local (p50): {ratio:.2f}  (goal <= 2; DIRAC p50 goal < 10 s)")
    breakdown = phases.table()
    common.print_table(
        "DIRAC phases, median s",
        ["phase", "s"],
        [[k, v] for k, v in breakdown.items()],
    )
    print(f"load average before {load_before}, after {load_after}")
    common.write_result(
        "cluster_start",
        {
            "benchmark": "cluster create to first worker connected",
            "runs": args.runs,
            **stats,
            "ratio_p50": ratio,
            "raw": times,
            "dirac_phases": {"median": breakdown, "runs": phases.runs},
            "load_average": {"before": load_before, "after": load_after},
            "machine": common.machine(),
            "versions": common.versions("dask-gateway-server", "distributed", "diracx-core"),
        },
    )


if __name__ == "__main__":
    main()
