"""Cluster create to first worker connected: DIRAC backend vs LocalBackend.

    .venv/bin/python bench/cluster_start.py [--runs 10]

Both gateways run side by side in the same run on this machine. DIRAC: the
gridhub backend, workers are DIRAC jobs of the embedded DiracX run by the
local site, reached through Traefik and the reverse path. Baseline:
dask-gateway's own LocalBackend (workers are local processes, its Go proxy).
Prints a table and writes JSON to bench/results/cluster_start.json; the
figure that matters is the ratio of medians (goal: <= 2).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import secrets
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

import httpx  # noqa: E402
from dask_gateway import BasicAuth, Gateway  # noqa: E402
from processes import (  # noqa: E402
    EmbeddedDiracX,
    LocalSiteProcess,
    dask_gateway_server,
    free_port,
    gateway_config,
    kill_processes_in,
    self_signed_cert,
    start_traefik,
    wait_for,
)

PASSWORD = secrets.token_hex(8)


def time_to_first_worker(gateway: Gateway) -> float:
    t0 = time.perf_counter()
    cluster = gateway.new_cluster()
    try:
        cluster.scale(1)
        with cluster.get_client(set_as_default=False) as client:
            client.wait_for_workers(1, timeout=60)
        return time.perf_counter() - t0
    finally:
        cluster.shutdown()


def summary(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {
        "median": statistics.median(xs),
        "p95": xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))],
        "min": xs[0],
        "max": xs[-1],
    }


def main() -> None:
    # SIGTERM unwinds like Ctrl-C, so the finally below stops every process.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gridhub-bench-"))
    procs = []
    try:
        diracx = EmbeddedDiracX(work / "diracx")
        diracx.start(timeout=180)
        procs.append(diracx)
        site = LocalSiteProcess(diracx, work / "site", "--poll-interval", "0.2").start()
        procs.append(site)

        cert, key = self_signed_cert(work / "tls", ["localhost", "127.0.0.1", "gridhub-tunnel"])
        gw_port, token = free_port(), secrets.token_hex(16)
        traefik = start_traefik(
            work / "traefik",
            provider_url=f"http://127.0.0.1:{gw_port}/api/v1/traefik",
            provider_token=token,
            cert=cert,
            key=key,
        )
        procs.append(traefik)
        common = {
            "DaskGateway__authenticator_class": "dask_gateway_server.auth.SimpleAuthenticator",
            "SimpleAuthenticator__password": PASSWORD,
        }
        dirac_gw = dask_gateway_server(
            work / "gw-dirac",
            gateway_config(
                **common,
                DaskGateway__address=f"127.0.0.1:{gw_port}",
                DaskGateway__backend_class="gridhub.gateway.backend.DiracBackend",
                Proxy__externally_managed=True,
                DiracBackend__api_url=f"http://127.0.0.1:{gw_port}/api",
                DiracBackend__db_url=f"sqlite:///{work / 'gw.sqlite'}",
                DiracBackend__db_encrypt_keys=[base64.b64encode(os.urandom(32)).decode()],
                DiracBackend__diracx_url=diracx.url,
                DiracBackend__diracx_embedded_state_dir=str(diracx.state_dir),
                DiracBackend__public_dask_address=f"127.0.0.1:{traefik.dask_port}",
                DiracBackend__facility_ca_file=str(cert),
                DiracBackend__traefik_token=token,
                DiracBackend__state_dir=str(work / "gw-state"),
                DiracBackend__worker_status_period=1.0,
                DiracBackend__clusters_directory=str(work / "clusters-dirac"),
                DiracClusterConfig__worker_memory="1 G",
            ),
            f"127.0.0.1:{gw_port}",
        )
        procs.append(dirac_gw)
        local_port, local_proxy = free_port(), free_port()
        local_gw = dask_gateway_server(
            work / "gw-local",
            gateway_config(
                **common,
                DaskGateway__address=f"127.0.0.1:{local_port}",
                DaskGateway__backend_class="dask_gateway_server.backends.local.UnsafeLocalBackend",
                Proxy__address=f"127.0.0.1:{local_proxy}",
                UnsafeLocalBackend__clusters_directory=str(work / "clusters-local"),
                LocalClusterConfig__scheduler_cmd=[
                    sys.executable,
                    "-m",
                    "distributed.cli.dask_scheduler",
                ],
                LocalClusterConfig__worker_cmd=[
                    sys.executable,
                    "-m",
                    "distributed.cli.dask_worker",
                ],
                LocalClusterConfig__worker_memory="1 G",
            ),
            f"127.0.0.1:{local_port}",
        )
        procs.append(local_gw)
        # Its Go proxy learns the API route from the gateway a moment later.
        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{local_proxy}/api/health").status_code == 200,
            30,
            "LocalBackend's proxy",
        )

        dirac = Gateway(
            address=dirac_gw.url,
            proxy_address=f"gateway://127.0.0.1:{traefik.dask_port}",
            auth=BasicAuth("bench", PASSWORD),
        )
        local = Gateway(
            address=f"http://127.0.0.1:{local_proxy}",
            auth=BasicAuth("bench", PASSWORD),
        )
        times: dict[str, list[float]] = {"dirac": [], "local": []}
        time_to_first_worker(dirac), time_to_first_worker(local)  # warm caches
        for _ in range(args.runs):  # interleaved, so both see the same noise
            times["local"].append(time_to_first_worker(local))
            times["dirac"].append(time_to_first_worker(dirac))
        result = {
            "benchmark": "cluster create to first worker connected",
            "runs": args.runs,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "dirac": summary(times["dirac"]),
            "local": summary(times["local"]),
            "raw": times,
        }
        result["ratio_median"] = result["dirac"]["median"] / result["local"]["median"]
        print(f"{'backend':<10}{'median s':>10}{'p95 s':>10}{'min s':>10}{'max s':>10}")
        for k in ("local", "dirac"):
            s = result[k]
            print(f"{k:<10}{s['median']:>10.2f}{s['p95']:>10.2f}{s['min']:>10.2f}{s['max']:>10.2f}")
        print(f"ratio dirac/local (median): {result['ratio_median']:.2f}  (goal <= 2)")
        out = ROOT / "bench" / "results" / "cluster_start.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")
        dirac.close()
        local.close()
    finally:
        for p in reversed(procs):
            p.stop()
        kill_processes_in(work)  # schedulers and workers of interrupted runs


if __name__ == "__main__":
    main()
