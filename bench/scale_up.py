"""scale(N) to N workers connected: DIRAC backend vs LocalBackend (issue 16).

    .venv/bin/python bench/scale_up.py [--sizes 1,10,40] [--runs 2]

Both gateways run side by side in the same run, alternating, as in
bench/cluster_start.py (whose set-up this reuses): DIRAC is the facility as
the tests build it (bulk submission to the embedded DiracX, the local site
running every job at once, workers through Traefik and the reverse path);
the baseline is dask-gateway's LocalBackend. The cluster is created before
the clock starts; the time is from `scale(N)` to the client seeing N
workers. Goal for N = 40: DIRAC at most 2x LocalBackend. Writes
bench/results/scale_up-<time>.json.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import common
from cluster_start import dirac_and_local
from dask_gateway import Gateway


def scale_time(gateway: Gateway, n: int, timeout: float) -> float:
    cluster = gateway.new_cluster()
    try:
        with cluster.get_client(set_as_default=False) as client:
            t0 = time.perf_counter()
            cluster.scale(n)
            client.wait_for_workers(n, timeout=timeout)
            return time.perf_counter() - t0
    finally:
        cluster.shutdown()
        del cluster
        gc.collect()  # here, not on the event loop's thread (common.gc_off_the_loop)


def main() -> None:
    common.on_sigterm_unwind()
    common.gc_off_the_loop()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,10,40", help="comma-separated worker counts")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=600, help="seconds to wait for N workers")
    args = ap.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    if args.runs < 1 or min(sizes) < 1:
        ap.error("--runs and every size must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="gridhub-bench-scale-"))
    load_before = common.loadavg()
    times: dict[int, dict[str, list[float]]] = {n: {"local": [], "dirac": []} for n in sizes}
    with dirac_and_local(work, "--max-jobs", str(max(sizes))) as (_, _, dirac, local):
        scale_time(dirac, 1, args.timeout), scale_time(local, 1, args.timeout)  # warm caches
        for n in sizes:
            for i in range(args.runs):  # interleaved, so both see the same noise
                for label, gw in (("local", local), ("dirac", dirac))[:: 1 if i % 2 else -1]:
                    times[n][label].append(scale_time(gw, n, args.timeout))
                    print(f"N={n} {label}: {times[n][label][-1]:.1f} s", flush=True)
    load_after = common.loadavg()
    rows, result = [], {}
    for n in sizes:
        stats = {k: common.summary(v) for k, v in times[n].items()}
        ratio = stats["dirac"]["p50"] / stats["local"]["p50"]
        rows.append([n, stats["local"]["p50"], stats["dirac"]["p50"], ratio])
        result[str(n)] = {**stats, "ratio_p50": ratio, "raw": times[n]}
    common.print_table(
        f"scale(N) to N workers connected, {args.runs} runs each (p50 s)",
        ["N", "local", "dirac", "dirac/local"],
        rows,
    )
    print(
        f"goal: dirac/local <= 2 at N = 40; load average before {load_before}, after {load_after}"
    )
    common.write_result(
        "scale_up",
        {
            "benchmark": "scale(N) to N workers connected",
            "runs": args.runs,
            "sizes": result,
            "load_average": {"before": load_before, "after": load_after},
            "machine": common.machine(),
            "versions": common.versions("dask-gateway-server", "distributed", "diracx-core"),
        },
    )


if __name__ == "__main__":
    main()
