"""Accounting of worker jobs: what each DIRAC job used, and totals.

The site that ran a job records what it used as DIRAC job parameters (the
stand-in local site does it as DIRAC's JobWrapper does: ``TotalCPUTime(s)``,
``WallClockTime(s)``, ``MemoryUsed(kb)``, plus GridHub's ``CPUTime(ms)``,
``BytesRead``, ``BytesWritten``, ``ExitStatus``). A job's owner, group
(``OwnerGroup``), cluster (``JobGroup``), site and status come from DiracX's
own job search; the parameters from the embedded server's
``POST /api/gridhub/accounting/jobs`` (DiracX 0.7 cannot read job parameters
back; a production DiracX needs its own accounting source, docs/accounting.md).

    records = await job_records(dirac)            # the jobs the identity sees
    totals(records, "owner")                      # per user
    totals(records, "owner_group")                # per DIRAC group
    totals(records, "job_group")                  # per cluster

In a notebook, :func:`usage` shows the user's own use (a table, and a plot
when matplotlib is there), through the gateway's ``GET /api/v1/usage``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

#: DiracX job attributes an accounting record carries
JOB_FIELDS = [
    "JobID",
    "Owner",
    "OwnerGroup",
    "JobGroup",
    "JobName",
    "Site",
    "Status",
    "MinorStatus",
    "SubmissionTime",
    "StartExecTime",
    "EndExecTime",
]
GROUPINGS = ("owner", "owner_group", "job_group", "site")
#: job ids per accounting request (the embedded route's limit)
CHUNK = 1000


def _num(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


@dataclass
class JobRecord:
    """One job: DiracX's attributes and what the site recorded it used
    (None where nothing was recorded, e.g. a job that never ran)."""

    job_id: int
    owner: str
    owner_group: str
    job_group: str
    job_name: str
    site: str
    status: str
    minor_status: str
    submission_time: str | None
    end_time: str | None
    cpu_s: float | None = None
    wall_s: float | None = None
    memory_kb: int | None = None
    bytes_read: int | None = None
    bytes_written: int | None = None
    exit_status: int | None = None

    @classmethod
    def of(cls, job: dict[str, Any], params: dict[str, Any] | None) -> JobRecord:
        p = params or {}
        cpu_ms = _num(p.get("CPUTime(ms)"))
        cpu_s = cpu_ms / 1000 if cpu_ms is not None else _num(p.get("TotalCPUTime(s)"))
        mem = _num(p.get("MemoryUsed(kb)"))
        read, written, rc = (_num(p.get(k)) for k in ("BytesRead", "BytesWritten", "ExitStatus"))
        return cls(
            job_id=int(job["JobID"]),
            owner=str(job.get("Owner") or ""),
            owner_group=str(job.get("OwnerGroup") or ""),
            job_group=str(job.get("JobGroup") or ""),
            job_name=str(job.get("JobName") or ""),
            site=str(job.get("Site") or ""),
            status=str(job.get("Status") or ""),
            minor_status=str(job.get("MinorStatus") or ""),
            submission_time=_text(job.get("SubmissionTime")),
            end_time=_text(job.get("EndExecTime")),
            cpu_s=cpu_s,
            wall_s=_num(p.get("WallClockTime(s)")),
            memory_kb=None if mem is None else int(mem),
            bytes_read=None if read is None else int(read),
            bytes_written=None if written is None else int(written),
            exit_status=None if rc is None else int(rc),
        )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


async def job_records(
    dirac: Any, conditions: list[dict] | None = None, *, parameters_from: Any = None
) -> list[JobRecord]:
    """The jobs ``dirac`` (a DiracXClient) finds with ``conditions`` (DiracX
    search conditions; none: every job its identity may see), each with its
    accounting parameters read with ``parameters_from`` (default ``dirac``)."""
    jobs = await dirac.search(conditions or [], JOB_FIELDS)
    reader = parameters_from or dirac
    ids = [int(j["JobID"]) for j in jobs]
    params: dict[int, dict[str, Any]] = {}
    for i in range(0, len(ids), CHUNK):
        params.update(await reader.job_accounting(ids[i : i + CHUNK]))
    return sorted(
        (JobRecord.of(j, params.get(int(j["JobID"]))) for j in jobs), key=lambda r: r.job_id
    )


@dataclass
class Totals:
    jobs: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    by_status: Counter = field(default_factory=Counter)
    by_site: Counter = field(default_factory=Counter)

    def add(self, r: JobRecord) -> None:
        self.jobs += 1
        self.cpu_s += r.cpu_s or 0.0
        self.wall_s += r.wall_s or 0.0
        self.by_status[r.status] += 1
        self.by_site[r.site or "(none)"] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "cpu_s": round(self.cpu_s, 3),
            "wall_s": round(self.wall_s, 3),
            "by_status": dict(self.by_status),
            "by_site": dict(self.by_site),
        }


def totals(records: list[JobRecord], by: str) -> dict[str, Totals]:
    """CPU seconds, wall seconds and job counts (by status and site) per
    ``by``: "owner" (the DIRAC user), "owner_group" (the DIRAC group),
    "job_group" (the cluster) or "site"."""
    if by not in GROUPINGS:
        raise ValueError(f"totals by {by!r}: choose one of {', '.join(GROUPINGS)}")
    out: dict[str, Totals] = {}
    for r in records:
        out.setdefault(getattr(r, by), Totals()).add(r)
    return out


def report(records: list[JobRecord]) -> dict[str, Any]:
    """Records and totals per user, group and cluster, as JSON."""
    return {
        "jobs": [asdict(r) for r in records],
        "totals": {
            by: {k: t.as_dict() for k, t in totals(records, by).items()}
            for by in ("owner", "owner_group", "job_group")
        },
    }


# ----------------------------------------------------------------------
# in a notebook


def fetch_usage(gateway: Any = None) -> dict[str, Any]:
    """The caller's own accounting from the gateway (``GET /api/v1/usage``)."""
    if gateway is None:
        from dask_gateway import Gateway

        gateway = Gateway()

    async def get() -> dict[str, Any]:
        resp = await gateway._request("GET", f"{gateway.address}/api/v1/usage")
        return await resp.json()

    return gateway.sync(get)


def usage(gateway: Any = None, *, plot: bool = True) -> Any:
    """Your own use of the facility's grid workers: one row per worker job
    (cluster, site, status, CPU and wall seconds, peak memory), as a pandas
    DataFrame, with a plot of CPU hours per cluster when matplotlib is there.
    ``gateway``: a dask_gateway.Gateway (default: the notebook's)."""
    data = fetch_usage(gateway)
    import pandas as pd

    cols = [
        "job_id",
        "job_group",
        "site",
        "status",
        "exit_status",
        "cpu_s",
        "wall_s",
        "memory_kb",
        "bytes_read",
        "bytes_written",
        "submission_time",
        "end_time",
    ]
    frame = pd.DataFrame(data["jobs"], columns=cols).rename(columns={"job_group": "cluster"})
    if plot and not frame.empty:
        try:
            import matplotlib.pyplot as plt
        except ImportError:
            return frame
        per = frame.groupby("cluster")[["cpu_s", "wall_s"]].sum() / 3600
        ax = per.plot.barh(title="Your grid workers: hours per cluster")
        ax.set_xlabel("hours (cpu_s: CPU, wall_s: wall clock)")
        plt.tight_layout()
        plt.show()
    return frame
