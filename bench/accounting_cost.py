"""What the job wrapper's accounting costs per job (issue 20's benchmark).

    .venv/bin/python bench/accounting_cost.py [--jobs 4] [--cpu-seconds 10]

One embedded DiracX and two stand-in local sites in the same run, each with
one slot: ``LCG.Acct.bench`` measures and records every job (the default),
``LCG.NoAcct.bench`` runs with ``--no-accounting``. Each gets ``--jobs``
CPU-bound jobs of about ``--cpu-seconds`` (a Python ``sum(range(K))``, K
calibrated here), submitted alternately. Reported:

- the site's own CPU seconds per job (utime + stime of the site process,
  its jobs excluded) with and without accounting: the difference is the
  accounting's CPU per job, also as a fraction of a 60 s job's CPU (goal:
  under 2 %) and of the measured job's;
- start-up delay: from the site's "-> Running at" log line to its
  "started" line (the payload's process or container started), median per site;
- the jobs' CPU as the accounting recorded it (it must be near K's).

Ratios compare across machines; seconds are of this (shared, loaded) one.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from common import loadavg, machine, print_table, summary, versions, write_result
from processes import EmbeddedDiracX, LocalSiteProcess, wait_for

SITES = {"LCG.Acct.bench": [], "LCG.NoAcct.bench": ["--no-accounting"]}


def calibrate(cpu_seconds: float) -> int:
    n = 10**7
    t = time.process_time()
    sum(range(n))
    per = max(time.process_time() - t, 1e-3)
    return int(n * cpu_seconds / per)


def jdl(site: str, k: int) -> str:
    return f"""[
  Executable = "python3";
  Arguments = "-c 'sum(range({k}))'";
  JobName = "accounting-bench";
  JobGroup = "accounting-bench";
  JobType = "User";
  StdOutput = "std.out";
  StdError = "std.err";
  OutputSandbox = {{"std.out", "std.err"}};
  Site = {{"{site}"}};
]"""


def site_cpu(site: LocalSiteProcess) -> float:
    """utime + stime of the site process itself (its jobs are children)."""
    pid = site._proc.proc.pid  # type: ignore[union-attr]
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    fields = stat[stat.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"


def startup_delays(log: str) -> dict[int, float]:
    def when(text: str) -> float:
        return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()

    running = {
        int(m[2]): when(m[1])
        for m in re.finditer(STAMP + r" \S+ INFO Job (\d+): \w+ -> Running at", log)
    }
    started = {
        int(m[2]): when(m[1]) for m in re.finditer(STAMP + r" \S+ INFO Job (\d+): started ", log)
    }
    return {j: started[j] - running[j] for j in running if j in started}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=4, help="jobs per site")
    ap.add_argument("--cpu-seconds", type=float, default=10.0, help="CPU of each job")
    args = ap.parse_args()
    if args.jobs < 1 or args.cpu_seconds <= 0:
        sys.exit("accounting_cost: --jobs must be >= 1 and --cpu-seconds > 0")
    k = calibrate(args.cpu_seconds)
    work = Path(tempfile.mkdtemp(prefix="gridhub-bench-acct-"))
    diracx = EmbeddedDiracX(work / "diracx")
    diracx.start()
    sites: dict[str, LocalSiteProcess] = {}
    try:
        for name, extra in SITES.items():
            (work / name).mkdir()
            sites[name] = LocalSiteProcess(
                diracx, work / name / "jobs", "--site", name, "--max-jobs", "1", *extra
            ).start()
        for name, site in sites.items():
            wait_for(lambda s=site: "polling" in s.log(), 60, f"{name} started", site.log)
        time.sleep(2)
        cpu0 = {name: site_cpu(s) for name, s in sites.items()}
        t0 = time.monotonic()

        async def run() -> tuple[dict[str, list[int]], dict[int, dict]]:
            async with diracx.client() as dx:
                ids: dict[str, list[int]] = {name: [] for name in sites}
                for _ in range(args.jobs):
                    for name in sites:
                        ids[name] += await dx.submit_jdl([jdl(name, k)])
                every = [i for v in ids.values() for i in v]
                deadline = time.monotonic() + 60 + 4 * args.jobs * args.cpu_seconds * 3
                while time.monotonic() < deadline:
                    st = await dx.statuses(every)
                    if all(s.final for s in st.values()):
                        break
                    await asyncio.sleep(1)
                else:
                    raise TimeoutError("the benchmark's jobs did not end")
                bad = {i: s.status for i, s in st.items() if s.status != "Done"}
                if bad:
                    raise RuntimeError(f"jobs not Done: {bad}")
                return ids, await dx.job_accounting(every)

        ids, params = asyncio.run(run())
        elapsed = time.monotonic() - t0
        time.sleep(1)
        cpu = {name: site_cpu(s) - cpu0[name] for name, s in sites.items()}
        delays = {name: startup_delays(s.log()) for name, s in sites.items()}
    finally:
        for s in sites.values():
            s.stop()
        diracx.stop()

    acct, plain = SITES
    per_job = {name: cpu[name] / args.jobs for name in sites}
    cost = per_job[acct] - per_job[plain]
    job_cpu = [params[i]["CPUTime(ms)"] / 1000 for i in ids[acct]]
    assert not any(i in params for i in ids[plain]), "the no-accounting site recorded use"
    d = {name: summary(delays[name].values()) for name in sites}
    rows = [
        [name, f"{per_job[name]:.3f}", f"{d[name]['p50']:.3f}", f"{d[name]['max']:.3f}"]
        for name in sites
    ]
    print_table(
        f"{args.jobs} jobs per site of ~{args.cpu_seconds} CPU s, one slot each,"
        f" in {elapsed:.0f} s",
        ["site", "site CPU s/job", "start-up delay p50 s", "max s"],
        rows,
    )
    job_p50 = summary(job_cpu)["p50"] or 0.0
    print(
        f"accounting: {cost * 1000:+.1f} ms site CPU per job = {cost / 60 * 100:+.3f} % of a 60 s"
        f" job's CPU ({cost / job_p50 * 100:+.3f} % of these {job_p50:.1f} s jobs);"
        f" start-up delay p50 {d[acct]['p50'] - d[plain]['p50']:+.3f} s"
    )
    write_result(
        "accounting_cost",
        {
            "jobs_per_site": args.jobs,
            "k": k,
            "elapsed_s": round(elapsed, 1),
            "site_cpu_s_per_job": per_job,
            "accounting_cpu_s_per_job": cost,
            "fraction_of_60s_job": cost / 60,
            "recorded_job_cpu_s": summary(job_cpu),
            "startup_delay_s": d,
            "loadavg": loadavg(),
            "machine": machine(),
            "versions": versions("gridhub", "diracx"),
        },
    )


if __name__ == "__main__":
    main()
