"""Spawn latency: N users log in together and start their servers; seconds
from the login POST to JupyterLab loaded (p50/p95), GridHub vs a bare JupyterHub.

    .venv/bin/python bench/spawn_latency.py [--users 10] [--rounds 1] [--skip-bare]

Real processes: JupyterHub (hub_config/jupyterhub_config.py, masterclass
mode) with its Traefik terminating HTTPS, servers started by the same
SharedAccountSpawner as an unprivileged account; each user is an httpx
client that logs in with the access code, follows the spawn-pending progress
stream and loads /user/<name>/lab (OAuth included). The bare hub is the tests'
BARE_CONFIG (same spawner, shared-password auth, Traefik). The two take turns
(order alternates by round), so both see the same machine. Also the CPU
seconds of the servers' processes per user (psutil). Writes
bench/results/spawn_latency-<time>.json.
"""

from __future__ import annotations

import argparse
import shutil
import time

import common
from processes import kill_processes_in


def main() -> None:
    common.on_sigterm_unwind()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=10, help="users logging in together")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300, help="per user, seconds")
    ap.add_argument("--skip-bare", action="store_true", help="GridHub only")
    args = ap.parse_args()
    if args.users < 1 or args.rounds < 1:
        ap.error("--users and --rounds must be at least 1")

    common.bench_account()  # the servers run as it
    work = common.workdir("gridhub-bench-spawn-")
    load_before = common.loadavg()
    runs: dict[str, list[dict]] = {"gridhub": []}
    hubs: dict[str, common.HttpsHub] = {}
    try:
        with common.server_python(None) as python:
            hubs["gridhub"] = common.gridhub(work / "gridhub", python, "bench-spawn-gridhub")
            if not args.skip_bare:
                hubs["bare"] = common.bare_hub(work / "bare", python, "bench-spawn-bare")
                runs["bare"] = []
            for hub in hubs.values():
                hub.start(timeout=120)
            for r in range(args.rounds):
                order = list(hubs) if r % 2 == 0 else list(reversed(hubs))
                for label in order:
                    names = [f"s{r}u{i}" for i in range(args.users)]
                    hub, t0 = hubs[label], time.monotonic()
                    servers = {"servers": lambda: common.working_in(work)}
                    with common.Usage({"hub": hub.hub_only, **servers}) as usage:
                        results = common.crowd(hub, names, args.timeout)
                    wall = time.monotonic() - t0
                    failed = [x for x in results if "error" in x]
                    print(f"round {r} {label}: {len(failed)} failed, all done in {wall:.0f} s")
                    runs[label].append(
                        {"wall_seconds": wall, "resources": usage.report(), "students": results}
                    )
                    hubs[label].stop_servers(names)
    finally:
        for hub in hubs.values():
            hub.stop()
        kill_processes_in(work)  # this run's only: not the whole account's
        shutil.rmtree(work, ignore_errors=True)

    load_after = common.loadavg()
    table, result = [], {}
    for label, rounds in runs.items():
        students = [s for r in rounds for s in r["students"]]
        ready = common.summary(s["server_ready"] for s in students if "server_ready" in s)
        failures = [s["error"] for s in students if "error" in s]
        cpu = sum(r["resources"]["servers"]["cpu_seconds"] for r in rounds) / len(students)
        result[label] = {
            "login_to_lab": ready,
            "failures": len(failures),
            "errors": failures,
            "server_cpu_seconds_each": round(cpu, 2),
        }
        table.append([label, len(students), len(failures), ready["p50"], ready["p95"], cpu])
    common.print_table(
        f"login to JupyterLab, {args.users} users together, {args.rounds} round(s)",
        ["hub", "users", "failed", "p50 s", "p95 s", "server CPU s each"],
        table,
    )
    if "bare" in result and result["bare"]["login_to_lab"]["p50"]:
        ratio = result["gridhub"]["login_to_lab"]["p50"] / result["bare"]["login_to_lab"]["p50"]
        result["ratio_p50_gridhub_over_bare"] = ratio
        print(f"GridHub / bare (p50): {ratio:.2f}")
    print(f"load average before {load_before}, after {load_after}")
    common.write_result(
        "spawn_latency",
        {
            "benchmark": "spawn latency: login to JupyterLab loaded, users together",
            "args": vars(args),
            **result,
            "load_average": {"before": load_before, "after": load_after},
            "machine": common.machine(),
            "versions": common.versions("jupyterhub", "jupyter_server", "jupyterlab", "httpx"),
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
