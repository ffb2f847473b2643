"""What a scheduler container of its own costs: cluster create to first
worker in the compose facility, schedulers in containers vs in the gateway.

    .venv/bin/python bench/scheduler_isolation.py [--runs 5] [--rounds 2]

One compose facility (the e2e test's: tests/e2e/test_compose_facility.py
Facility, images built with the layer cache), one student's server. From a
Python in that server, as the student: `Gateway().new_cluster()`, scale(1),
`wait_for_workers(1)` (the worker is a DIRAC job of the stand-in site),
then shutdown. The gateway runs alternately as shipped (a container per
scheduler, gridhub/gateway/containers.py) and with the schedulers as its
own processes (the pre-issue-15 layout: bench/process-schedulers.yml
recreates only the gateway, from bench/process-schedulers.Dockerfile: the
gateway image with the notebook environment for its schedulers, as it was
then), `--rounds` times each, so both see the same machine and start the
same scheduler (dashboard, preload, imports). Goal (issue 15): the isolation
costs at most 1.5 s at p50. As shipped, the gateway keeps warm scheduler
containers (GRIDHUB_GATEWAY_SCHEDULER_POOL, default 1); `--pool N` sets it
(0: each cluster's container started when it is created).
Prints a table; writes bench/results/scheduler_isolation-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from dockerharness import TAG, build_image, docker, image_tag  # noqa: E402
from test_compose_facility import (  # noqa: E402
    IMAGES,
    Facility,
    _login,
    _python_in,
)

PROCESS_LAYOUT = ROOT / "bench" / "process-schedulers.yml"
PROCESS_GATEWAY = f"gridhub/gateway-process-schedulers:{TAG}"

TIMED = """
import json, time
from dask_gateway import Gateway
g = Gateway()
out = []
for _ in range({runs}):
    t0 = time.perf_counter()
    c = g.new_cluster()
    t1 = time.perf_counter()
    c.scale(1)
    client = c.get_client()
    client.wait_for_workers(1, timeout=300)
    t2 = time.perf_counter()
    client.close()
    c.shutdown()
    out.append({{"created": t1 - t0, "first_worker": t2 - t0}})
    time.sleep(2)
print("TIMES " + json.dumps(out))
"""


def gateway_layout(f: Facility, processes: bool) -> None:
    """Recreate only the gateway, as shipped or with process schedulers."""
    files = ["-f", "docker-compose.yml", "-f", "docker-compose.override.yml"]
    if processes:
        files += ["-f", str(PROCESS_LAYOUT)]
    f.compose(*files, "up", "-d", "--no-build", "--no-deps", "gateway", timeout=300)
    f.wait_healthy(300)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5, help="clusters per round")
    ap.add_argument("--rounds", type=int, default=2, help="rounds per layout")
    ap.add_argument(
        "--pool", type=int, default=None, help="warm scheduler containers (default: as shipped)"
    )
    args = ap.parse_args()
    tags = {name: build_image(name, image_tag(name)) for name in IMAGES}
    docker(
        "build",
        "-f",
        str(ROOT / "bench" / "process-schedulers.Dockerfile"),
        "--build-arg",
        f"GATEWAY={tags['gateway']}",
        "--build-arg",
        f"NOTEBOOK={tags['notebook']}",
        "-t",
        PROCESS_GATEWAY,
        str(ROOT / "bench"),
        timeout=900,
    )
    f = Facility(Path(tempfile.mkdtemp(prefix="gridhub-bench-")), tags)
    f.env["BENCH_PROCESS_GATEWAY_IMAGE"] = PROCESS_GATEWAY
    if args.pool is not None:
        f.env["GRIDHUB_GATEWAY_SCHEDULER_POOL"] = str(args.pool)
    times: dict[str, list[dict]] = {"containers": [], "processes": []}
    load = [common.loadavg()]
    try:
        f.compose("up", "-d", "--no-build", timeout=600)
        f.wait_healthy()
        code = f.exec("hub", "gridhub-access-code").strip()
        student, r = _login(f, "bench", code)
        assert r.status_code == 302, r.status_code
        xsrf = {"X-XSRFToken": student.cookies.get("_xsrf", path="/hub/") or ""}
        name = student.get("/hub/api/user", headers=xsrf).json()["name"]
        student.post(f"/hub/api/users/{name}/server", headers=xsrf)
        deadline = time.monotonic() + 300
        while not f.server_of(name):
            assert time.monotonic() < deadline, "no server"
            time.sleep(2)
        time.sleep(5)
        (server,) = f.server_of(name)
        for _ in range(args.rounds):
            for layout in ("containers", "processes"):
                gateway_layout(f, processes=layout == "processes")
                out = _python_in(server, TIMED.format(runs=args.runs), timeout=1800)
                times[layout] += json.loads(out.split("TIMES ", 1)[1].splitlines()[0])
                load.append(common.loadavg())
                print(layout, times[layout][-args.runs :], flush=True)
    finally:
        f.teardown()

    pool = "shipped default" if args.pool is None else args.pool
    rows = []
    result = {
        "runs": args.runs,
        "rounds": args.rounds,
        "scheduler_pool": pool,
        "load": load,
        "times": times,
    }
    for key in ("created", "first_worker"):
        p50 = {k: statistics.median(x[key] for x in v) for k, v in times.items()}
        s = {k: common.summary(x[key] for x in v) for k, v in times.items()}
        result[key] = s
        result[f"{key}_p50_cost_seconds"] = round(p50["containers"] - p50["processes"], 2)
        for layout in ("processes", "containers"):
            rows.append([key, layout, s[layout]["p50"], s[layout]["p95"], s[layout]["n"]])
    common.print_table(
        "cluster create -> first worker (s)", ["phase", "schedulers", "p50", "p95", "n"], rows
    )
    print(
        "isolation cost at p50: created",
        result["created_p50_cost_seconds"],
        "s, first worker",
        result["first_worker_p50_cost_seconds"],
        "s (goal <= 1.5 s)",
    )
    common.write_result("scheduler_isolation", {**common.machine(), **result})


if __name__ == "__main__":
    main()
