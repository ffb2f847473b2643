"""Worker-to-worker bandwidth: same site (direct peers), across sites (the
relay) and direct loopback, same scheduler, same client, same run.

    sudo .venv/bin/python bench/site_peers_throughput.py [--mb 200] [--rounds 3]

Workers: two plain ``dask worker`` processes on loopback (direct, the
yardstick), two gridhub-workers on one site's LAN (namespaces behind a
router, tests/integration/tunnel_fixtures.Network.add_site) and one at a
second site; the reverse paths use the openssh client. Each round moves
``--mb`` MB once per pair (direct, same site, cross site; the order rotates
from round to round), after a warm-up transfer per pair (connections and
the direct-peer choice are made then). Ratios are per round against that
round's direct figure; the site uplinks' byte counters show which path
carried the bytes. Each round also moves plain TCP (no TLS, no Dask) over
loopback and over the site LAN: the network's own ceiling for the
same-site ratio. Prints the load average around each transfer and writes
JSON to bench/results/. Needs root (network namespaces, nftables) and
``ssh``.
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from distributed import wait

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from processes import free_port  # noqa: E402
from tunnel_fixtures import VENV_BIN, Proc, ssh_children, start_networked_facility  # noqa: E402
from tunnel_throughput import CPU, children  # noqa: E402

MB = 2**20
PAIRS = {"direct": ("d0", "d1"), "same_site": ("x1", "x2"), "cross_site": ("x1", "y1")}
GOAL = {"same_site": 0.9, "cross_site": 0.23}


def transfer(client, src: str, dst: str, mb: int) -> float:
    """MB/s of one worker-to-worker transfer of ``mb`` MB, src -> dst."""
    big = client.submit(np.ones, mb * MB // 8, workers=[src], pure=False)
    wait(big)
    t = time.perf_counter()
    nbytes = client.submit(operator.attrgetter("nbytes"), big, workers=[dst], pure=False).result()
    elapsed = time.perf_counter() - t
    del big
    return nbytes / MB / elapsed


SINK = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); c, _ = s.accept(); buf = bytearray(1 << 20)
while c.recv_into(buf): pass
"""
SOURCE = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2]))); data = b"x" * (1 << 20)
t = time.perf_counter()
for _ in range(int(sys.argv[3])): c.sendall(data)
c.shutdown(socket.SHUT_WR); c.recv(1); print(int(sys.argv[3]) / (time.perf_counter() - t))
"""


def raw_tcp(sink_ns: list[str], source_ns: list[str], host: str, mb: int) -> float:
    """MB/s of plain TCP (no TLS, no Dask) between two Python processes:
    what the network itself allows (the site LAN vs loopback)."""
    port = free_port()
    sink = subprocess.Popen([*sink_ns, sys.executable, "-c", SINK, host, str(port)])
    try:
        time.sleep(0.5)
        out = subprocess.run(
            [*source_ns, sys.executable, "-c", SOURCE, host, str(port), str(mb)],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        sink.wait(30)
    return float(out.stdout)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mb", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    ns = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="gridhub-bench-") as tmp:
        fac = start_networked_facility(Path(tmp) / "facility")
        try:
            alpha = fac.creds["alpha"]
            sched = f"tls://127.0.0.1:{fac.scheduler_port}"
            procs: dict[str, Proc] = {}
            for name in PAIRS["direct"]:
                procs[name] = Proc(
                    name,
                    [
                        *(str(VENV_BIN / "dask"), "worker", sched, "--name", name),
                        *("--nthreads", "1", "--memory-limit", "0", "--no-dashboard"),
                        *("--no-nanny", "--host", "127.0.0.1"),
                    ],
                    Path(tmp) / f"{name}.log",
                    env={**os.environ, **alpha.worker_env()},
                ).start()
                fac.procs.append(procs[name])
            x = fac.network.add_site("LCG.X.bench")
            y = fac.network.add_site("LCG.Y.bench")
            for name, site in (("x1", x), ("x2", x), ("y1", y)):
                procs[name] = fac.start_worker(name, site=site, client="openssh")
            fac.wait_tunnel_routes(3)
            uplinks = {"x": x, "y": y}
            with fac.client() as c:
                c.wait_for_workers(5, timeout=120)
                addr = {w["name"]: a for a, w in c.scheduler_info()["workers"].items()}
                for src, dst in PAIRS.values():  # warm-up: connections, choices
                    transfer(c, addr[src], addr[dst], 1)
                dask_pids = {
                    pair: [
                        k
                        for n in names
                        for k in (
                            [procs[n].pid]
                            if pair == "direct"
                            else set(children(procs[n].pid)) - set(ssh_children(procs[n].pid))
                        )
                    ]
                    for pair, names in PAIRS.items()
                }
                for r in range(ns.rounds):
                    order = list(PAIRS)[r % 3 :] + list(PAIRS)[: r % 3]  # no place favoured
                    for pair in order:
                        src, dst = PAIRS[pair]
                        cpu = CPU(
                            {
                                "dask-workers": dask_pids[pair],
                                "traefik": [fac.traefik.pid],
                                "tunnel-server": [fac.tunnel.pid],
                            }
                        )
                        up0 = {k: s.uplink_bytes() for k, s in uplinks.items()}
                        c0, load0 = cpu.snap(), os.getloadavg()[0]
                        rate = transfer(c, addr[src], addr[dst], ns.mb)
                        c1, load1 = cpu.snap(), os.getloadavg()[0]
                        up = {k: (s.uplink_bytes() - up0[k]) / MB for k, s in uplinks.items()}
                        rows.append(
                            {
                                "round": r,
                                "pair": pair,
                                "MB_per_s": rate,
                                "uplink_MB": up,
                                "cpu_ms_per_MB": {k: (c1[k] - c0[k]) * 1000 / ns.mb for k in c1},
                                "load_1min_before_after": (load0, load1),
                            }
                        )
                        print(
                            f"round {r} {pair:<11}{rate:8.1f} MB/s  uplinks x/y "
                            f"{up['x']:.1f}/{up['y']:.1f} MB  load {load0:.1f}/{load1:.1f}",
                            flush=True,
                        )
                    x1, x2 = procs["x1"].node, procs["x2"].node
                    for pair, argv in (
                        ("raw_loopback", ([], [], "127.0.0.1")),
                        ("raw_site_lan", (x2.cmd(), x1.cmd(), x2.ns_ip)),
                    ):
                        load0 = os.getloadavg()[0]
                        rate = raw_tcp(*argv, ns.mb * 2)
                        rows.append(
                            {
                                "round": r,
                                "pair": pair,
                                "MB_per_s": rate,
                                "load_1min_before_after": (load0, os.getloadavg()[0]),
                            }
                        )
                        print(f"round {r} {pair:<11}{rate:8.1f} MB/s", flush=True)
        finally:
            fac.stop()

    ratios: dict[str, list[float]] = {k: [] for k in (*GOAL, "raw_site_lan")}
    for r in range(ns.rounds):
        by = {row["pair"]: row for row in rows if row["round"] == r}
        for k in GOAL:
            ratios[k].append(by[k]["MB_per_s"] / by["direct"]["MB_per_s"])
        ratios["raw_site_lan"].append(
            by["raw_site_lan"]["MB_per_s"] / by["raw_loopback"]["MB_per_s"]
        )
    print(f"\n{'path':<14}{'ratio per round':<36}{'median':>8}{'goal':>6}")
    for k, v in ratios.items():
        each = " ".join(f"{x:.2f}" for x in v)
        print(f"{k:<14}{each:<36}{statistics.median(v):>8.2f}{GOAL.get(k, ''):>6}")
    stamp = time.strftime("%Y%m%dT%H%M%S")
    out = ROOT / "bench" / "results" / f"site_peers_throughput-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "when": stamp,
                "host": platform.node(),
                "cpus": os.cpu_count(),
                "mb": ns.mb,
                "rounds": ns.rounds,
                "rows": rows,
                "ratios": ratios,
                "goal": GOAL,
            },
            indent=2,
        )
    )
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
