"""Raw bytes through the reverse path, no Dask: where does the tunnel's time go?

    sudo .venv/bin/python bench/tunnel_raw.py [--mb 200] [--profile DIR]

A ``gridhub-worker`` in a network namespace runs, instead of ``dask worker``,
a tiny TLS server (the cluster's certificate, like a Dask worker) on the
forwarded port that sends N MB on each connection ("pull", like a gather) or
reads N MB ("push"). The host dials it through Traefik
(SNI ``daskgateway-<route>``, passthrough) -> TunnelServer -> SSH channel ->
gridhub-worker -> sink; the same sink directly on loopback ("direct"); and
through Traefik's SNI passthrough alone ("traefik": the floor any path
through the one front door pays). Prints MB/s and CPU milliseconds per MB per
process, "(..k)" the kernel part (Traefik, tunnel server, gridhub-worker,
sinks, this client).
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from gridhub.ports import free_port  # noqa: E402
from processes import wait_for  # noqa: E402
from tunnel_fixtures import Facility, Proc, start_networked_facility  # noqa: E402

SINK = r"""
import socket, ssl, sys, os, threading
args = sys.argv[1:]
addr = args[args.index("--listen-address") + 1]
host, port = addr.split("://")[1].rsplit(":", 1)
env = os.environ
ctx = ssl.create_default_context(
    ssl.Purpose.CLIENT_AUTH, cafile=env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"]
)
tls = "DASK_DISTRIBUTED__COMM__TLS__WORKER__"
ctx.load_cert_chain(env[tls + "CERT"], env[tls + "KEY"])
ctx.verify_mode = ssl.CERT_REQUIRED
ls = socket.create_server((host, int(port)))
buf = b"x" * (1 << 20)
def serve(c):
    try:
        s = ctx.wrap_socket(c, server_side=True)
        cmd = s.recv(64).decode().split()
        n = int(cmd[1])
        if cmd[0] == "pull":
            left = n
            while left > 0:
                k = min(left, len(buf))
                s.sendall(buf[:k])
                left -= k
        else:
            got = 0
            while got < n:
                d = s.recv(1 << 20)
                if not d:
                    break
                got += len(d)
            s.sendall(b"ok")
        s.close()
    except Exception as e:
        print("sink:", e, flush=True)
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def client_ctx(creds) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(creds.cert))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(creds.cert), str(creds.key))
    return ctx


def transfer(port: int, sni: str, ctx: ssl.SSLContext, mode: str, nbytes: int) -> float:
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with ctx.wrap_socket(raw, server_hostname=sni) as s:
            t = time.perf_counter()
            s.sendall(f"{mode} {nbytes}".ljust(64).encode())
            if mode == "pull":
                got = 0
                while got < nbytes:
                    d = s.recv(1 << 20)
                    if not d:
                        raise ConnectionError(f"short read {got}")
                    got += len(d)
            else:
                buf = b"y" * (1 << 20)
                left = nbytes
                while left > 0:
                    k = min(left, len(buf))
                    s.sendall(buf[:k])
                    left -= k
                assert s.recv(2) == b"ok"
            return nbytes / 2**20 / (time.perf_counter() - t)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime, stime) of one process, all its threads (seconds)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(f[11]) / tick, int(f[12]) / tick


def child_pid(pid: int) -> int:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return int(out.split()[0])


def sink_and_facility(tmp: Path) -> tuple[Path, int, Facility]:
    """The sink script (in ``tmp``), a free loopback port for it, and the
    facility, whose route "passthrough" is Traefik alone (SNI passthrough to
    that port): the floor any reverse path through Traefik pays."""
    sink = tmp / "sink.py"
    sink.write_text(SINK)
    dport = free_port()
    return (
        sink,
        dport,
        start_networked_facility(tmp / "facility", extra_routes={"passthrough": dport}),
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mb", type=int, default=200)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--gridhub-args", default="", help="extra gridhub-worker options")
    p.add_argument("--profile", help="py-spy record the tunnel server and gridhub-worker here")
    p.add_argument("--py-spy", default="py-spy")
    ns = p.parse_args()
    nbytes = ns.mb * 2**20
    with tempfile.TemporaryDirectory(prefix="gridhub-raw-") as tmp:
        tmp = Path(tmp)
        sink, dport, fac = sink_and_facility(tmp)
        try:
            alpha = fac.creds["alpha"]
            ctx = client_ctx(alpha)
            # direct sink on loopback
            env = {**os.environ, **alpha.worker_env()}
            direct = Proc(
                "sink-direct",
                [sys.executable, str(sink), "--listen-address", f"tls://127.0.0.1:{dport}"],
                tmp / "sink-direct.log",
                env=env,
            ).start()
            fac.procs.append(direct)
            os.environ["GRIDHUB_DASK_WORKER_CMD"] = f"{sys.executable} {sink}"
            w = fac.start_worker("raw", gridhub_args=tuple(ns.gridhub_args.split()))
            routes = fac.wait_tunnel_routes(1)
            rule = next(iter(routes.values()))["rule"]
            sni = rule.split("`")[1]
            wait_for(lambda: _ok(dport, "x", ctx), 10, "direct sink")
            procs = {
                "traefik": fac.traefik.pid,
                "tunnel": fac.tunnel.pid,
                "gridhub-worker": w.pid,
                "sink": wait_for(lambda: child_pid(w.pid), 10, "sink pid"),
                "sink-direct": direct.pid,
                "client": os.getpid(),
            }
            spies = []
            if ns.profile:
                Path(ns.profile).mkdir(parents=True, exist_ok=True)
                for name in ("tunnel", "gridhub-worker"):
                    spies.append(
                        subprocess.Popen(
                            [
                                ns.py_spy,
                                "record",
                                "-p",
                                str(procs[name]),
                                "-r",
                                "200",
                                "-f",
                                "speedscope",
                                "-o",
                                f"{ns.profile}/{name}.json",
                                "--nonblocking",
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                    )
                time.sleep(1)
            for mode in ("pull", "push"):
                for where, port, name in (
                    ("direct", dport, "x"),
                    ("traefik", fac.dask_port, "daskgateway-passthrough"),
                    ("reverse", fac.dask_port, sni),
                ):
                    best = 0.0
                    c0 = {k: cpu_seconds(v) for k, v in procs.items()}
                    t0 = time.perf_counter()
                    for _ in range(ns.repeat):
                        best = max(best, transfer(port, name, ctx, mode, nbytes))
                    wall = time.perf_counter() - t0
                    c1 = {k: cpu_seconds(v) for k, v in procs.items()}
                    du = {k: c1[k][0] - c0[k][0] for k in procs}
                    ds = {k: c1[k][1] - c0[k][1] for k in procs}
                    d = {k: du[k] + ds[k] for k in procs}
                    mb = ns.mb * ns.repeat
                    cpu = " ".join(
                        f"{k}={d[k] / mb * 1000:.1f}({ds[k] / mb * 1000:.1f}k)"
                        for k in procs
                        if d[k] > 0.02
                    )
                    print(
                        f"{mode:<5}{where:<8}{best:9.1f} MB/s  cpu ms/MB: {cpu}"
                        f"  total={sum(d.values()) / mb * 1000:.1f}  wall={wall:.2f}s",
                        flush=True,
                    )
            for s in spies:
                s.send_signal(2)
                s.wait(30)
        finally:
            fac.stop()


def _ok(port, sni, ctx) -> bool:
    try:
        return transfer(port, sni, ctx, "pull", 10) > 0
    except OSError:
        return False


if __name__ == "__main__":
    main()
