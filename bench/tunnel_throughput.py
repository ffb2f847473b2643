"""Reverse path vs direct loopback: task throughput and bandwidth, same run.

    sudo .venv/bin/python bench/tunnel_throughput.py [--tasks 10000] [--mb 200]

Direct: two plain ``dask worker`` processes on loopback talk TLS straight to
the scheduler and to each other. Reverse path: two ``gridhub-worker``
processes, each in its own network namespace, reach the scheduler through
Traefik (SNI passthrough) and are reached back through Traefik + the asyncssh
tunnel. Same scheduler, same client, same machine. Prints a table and writes
JSON to bench/results/. Needs root (network namespaces, nftables).
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from distributed import wait

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from tunnel_fixtures import (  # noqa: E402
    VENV_BIN,
    Network,
    Proc,
    start_facility,
    wait_for,
)


def measure(client, n_tasks: int, mb: int) -> dict[str, float]:
    workers = sorted(client.scheduler_info()["workers"])
    assert len(workers) == 2, workers
    out: dict[str, float] = {}

    # warm-up (connections, imports)
    client.gather(client.map(operator.neg, range(200), pure=False))

    t = time.perf_counter()
    futs = client.map(operator.neg, range(n_tasks), pure=False)
    client.gather(futs)
    out["tasks_per_s"] = n_tasks / (time.perf_counter() - t)
    del futs

    n = mb * 2**20 // 8
    big = client.submit(np.ones, n, workers=[workers[0]], pure=False)
    wait(big)
    t = time.perf_counter()
    arr = big.result()
    out["gather_MB_per_s"] = arr.nbytes / 2**20 / (time.perf_counter() - t)
    del arr

    # worker-to-worker: a task on the other worker needs the 200 MB array
    t = time.perf_counter()
    nbytes = client.submit(
        operator.attrgetter("nbytes"), big, workers=[workers[1]], pure=False
    ).result()
    out["w2w_MB_per_s"] = nbytes / 2**20 / (time.perf_counter() - t)
    del big
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--mb", type=int, default=200)
    p.add_argument("--repeat", type=int, default=2, help="best of N")
    ns = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")

    from distributed import Client

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="gridhub-bench-") as tmp:
        fac = start_facility(Path(tmp) / "facility")
        fac.network = Network(fac.dask_port)
        try:
            fac.network.setup()
            alpha = fac.creds["alpha"]
            sched = f"tls://127.0.0.1:{fac.scheduler_port}"

            # --- direct, loopback
            direct = []
            for i in range(2):
                env = {**os.environ, **alpha.worker_env()}
                w = Proc(
                    f"direct-{i}",
                    [
                        str(VENV_BIN / "dask"),
                        "worker",
                        sched,
                        "--name",
                        f"d{i}",
                        "--nthreads",
                        "1",
                        "--memory-limit",
                        "0",
                        "--no-dashboard",
                        "--no-nanny",
                        "--host",
                        "127.0.0.1",
                    ],
                    Path(tmp) / f"direct-{i}.log",
                    env=env,
                ).start()
                direct.append(w)
                fac.procs.append(w)
            with Client(sched, security=alpha.security()) as c:
                c.wait_for_workers(2, timeout=60)
                runs = [measure(c, ns.tasks, ns.mb) for _ in range(ns.repeat)]
            results["direct"] = {k: max(r[k] for r in runs) for k in runs[0]}
            for w in direct:
                w.stop()

            # --- Traefik + reverse path, workers in namespaces
            fac.start_worker("t0")
            fac.start_worker("t1")
            fac.wait_tunnel_routes(2)
            with fac.client() as c:
                c.wait_for_workers(2, timeout=60)
                wait_for(lambda: len(c.scheduler_info()["workers"]) == 2, 30, "2 workers")
                runs = [measure(c, ns.tasks, ns.mb) for _ in range(ns.repeat)]
            results["reverse_path"] = {k: max(r[k] for r in runs) for k in runs[0]}
        finally:
            fac.stop()

    ratio = {k: results["reverse_path"][k] / results["direct"][k] for k in results["direct"]}
    goal = {"tasks_per_s": 0.8, "gather_MB_per_s": 0.7, "w2w_MB_per_s": 0.7}
    print(f"{'metric':<18}{'direct':>12}{'reverse path':>14}{'ratio':>8}{'goal':>6}")
    for k in results["direct"]:
        print(
            f"{k:<18}{results['direct'][k]:>12.1f}{results['reverse_path'][k]:>14.1f}"
            f"{ratio[k]:>8.2f}{goal[k]:>6.1f}"
        )
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    out = out_dir / f"tunnel_throughput-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "when": stamp,
                "host": platform.node(),
                "cpus": os.cpu_count(),
                "tasks": ns.tasks,
                "gather_mb": ns.mb,
                "repeat": ns.repeat,
                "results": results,
                "ratio": ratio,
                "goal": goal,
            },
            indent=2,
        )
    )
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
