"""What a Jupyter server and a kernel cost to start: CPU seconds and wall time
to ready, with the venv's server extensions on, and with some of them off.

    .venv/bin/python bench/server_start_cost.py [--repeat 3]

Each variant starts `python -m jupyter_server` (the server every GridHub
user gets, without the hub's singleuser wrapper) on a free port with a fresh
HOME, waits for /api/status, and reads the process tree's CPU seconds
(psutil); variants take turns, --repeat times. The kernel row starts the
python3 kernel with jupyter_client and waits for its kernel_info reply. The
figures say which extensions are worth turning off for a masterclass; the
change itself would be a Spawner argument in the hub config. Writes
bench/results/server_start_cost-<time>.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import httpx

EXTENSIONS = [
    "jupyterlab",
    "dask_labextension",
    "jupyter_lsp",
    "jupyter_server_proxy",
    "jupyter_server_terminals",
    "notebook_shim",
]
# the Dask settings GridHub gives every server (gridhub.hub.config._dask_env)
DASK_ENV = {
    "DASK_LABEXTENSION__FACTORY__MODULE": "dask_gateway",
    "DASK_LABEXTENSION__FACTORY__CLASS": "GatewayCluster",
    "DASK_GATEWAY__ADDRESS": "https://127.0.0.1:9/services/dask-gateway",
    "DASK_GATEWAY__AUTH__TYPE": "jupyterhub",
}
# name: (extensions off, extra environment)
VARIANTS: dict[str, tuple[list[str], dict[str, str]]] = {
    "all extensions (as now)": ([], {}),
    "all, with GridHub's Dask env": ([], DASK_ENV),
    "without jupyter_lsp": (["jupyter_lsp"], {}),
    "without dask_labextension": (["dask_labextension"], {}),
    "without jupyter_server_proxy": (["jupyter_server_proxy"], {}),
    "JupyterLab only": ([e for e in EXTENSIONS if e != "jupyterlab"], {}),
}


def start_server(off: list[str], extra_env: dict[str, str], home: Path) -> tuple[float, float]:
    port = common.hub_fixtures.free_port()
    token = os.urandom(8).hex()
    argv = [sys.executable, "-m", "jupyter_server", f"--port={port}", "--ip=127.0.0.1"]
    argv += ["--no-browser", "--allow-root", f"--IdentityProvider.token={token}"]
    argv += [f"--ServerApp.jpserver_extensions={e}=False" for e in off]
    env = {**os.environ, **extra_env, "HOME": str(home), "JUPYTER_RUNTIME_DIR": str(home / "rt")}
    t0 = time.monotonic()
    log = home / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, cwd=home, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = t0 + 120
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
                if r.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"server exited {proc.returncode}:\n{log.read_text()[-2000:]}")
            time.sleep(0.05)
        else:
            raise TimeoutError("server not ready in 120 s")
        wall = time.monotonic() - t0
        cpu = sum(sum(p.cpu_times()[:2]) for p in common.tree(proc.pid))
        return wall, cpu
    finally:
        proc.terminate()
        proc.wait(20)


def start_kernel() -> tuple[float, float]:
    from jupyter_client import KernelManager

    t0 = time.monotonic()
    km = KernelManager(kernel_name="python3")
    km.start_kernel()
    try:
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        wall = time.monotonic() - t0
        cpu = sum(sum(p.cpu_times()[:2]) for p in common.tree(km.provisioner.pid))
        kc.stop_channels()
        return wall, cpu
    finally:
        km.shutdown_kernel(now=True)


def main() -> None:
    common.on_sigterm_unwind()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    load_before = common.loadavg()
    samples: dict[str, dict[str, list[float]]] = {
        v: {"wall": [], "cpu": []} for v in [*VARIANTS, "python3 kernel"]
    }
    home = Path(tempfile.mkdtemp(prefix="gridhub-bench-server-"))
    try:
        for _ in range(args.repeat):
            for name, (off, env) in VARIANTS.items():
                wall, cpu = start_server(off, env, home)
                samples[name]["wall"].append(wall)
                samples[name]["cpu"].append(cpu)
            wall, cpu = start_kernel()
            samples["python3 kernel"]["wall"].append(wall)
            samples["python3 kernel"]["cpu"].append(cpu)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    load_after = common.loadavg()
    result = {
        name: {"cpu_seconds": common.summary(s["cpu"]), "wall_seconds": common.summary(s["wall"])}
        for name, s in samples.items()
    }
    base = result["all extensions (as now)"]["cpu_seconds"]["p50"]
    common.print_table(
        f"start to ready, median of {args.repeat}",
        ["variant", "CPU s", "wall s", "CPU vs now"],
        [
            [n, r["cpu_seconds"]["p50"], r["wall_seconds"]["p50"], r["cpu_seconds"]["p50"] / base]
            for n, r in result.items()
        ],
    )
    print(f"load average before {load_before}, after {load_after}")
    common.write_result(
        "server_start_cost",
        {
            "benchmark": "Jupyter server and kernel start cost by server extensions",
            "args": vars(args),
            "variants_off": VARIANTS,
            "results": result,
            "raw": samples,
            "load_average": {"before": load_before, "after": load_after},
            "machine": common.machine(),
            "versions": common.versions(
                "jupyter_server", "jupyterlab", "ipykernel", *EXTENSIONS[1:]
            ),
        },
    )


if __name__ == "__main__":
    main()
