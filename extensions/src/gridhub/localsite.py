"""The LOCAL SITE: a plainly named stand-in for a DIRAC grid site.

DiracX 0.7 has no job-matching endpoint, so a real DIRAC pilot cannot run
against it.  This process plays the site for the embedded setup and the
tests; it is not part of the production path (there, real sites run the
jobs through their pilots).

    python -m gridhub.localsite --diracx-url URL --state-dir DIR \
        [--embedded-state-dir EDIR | --token-file FILE] [--site LCG.Local.gridhub] \
        [--max-jobs N] [--runner process|docker] [--docker-network grid] [--image IMAGE]
        [--job-memory 3G] [--container-prefix gridhub-job] [--label KEY=VALUE ...]
        [--metrics-port PORT [--metrics-host 127.0.0.1]]

Every ~1 s it searches DiracX for jobs in Received/Waiting that this site
matches (see ``SiteCatalogue``), walks each through valid states to Running
(Received -> Checking -> Waiting -> Matched -> Running), fetches its JDL
(from the embedded server's ``/api/gridhub/jobs/{id}/jdl``, standing in for
the matcher) and input sandbox into ``DIR/jobs/<id>``, and runs the JDL's
Executable with its Arguments (stdout/stderr to the JDL's StdOutput/StdError,
default ``std.out``/``std.err``).  With ``--runner docker`` each job is a
container of IMAGE on the Docker network given (the Docker SDK talks to the
daemon, so the site may itself run in a container): the job's files are copied
in as ``/job`` (owned by the image's user), its output is streamed back, the
CPU limit is the JDL's NumberOfProcessors and the memory limit ``--job-memory``;
the OutputSandbox files are copied out before the container is removed.
Containers carry the labels given with ``--label``; a restarted site removes its
predecessor's leftovers.  While it runs it sends heartbeats and obeys
a ``Kill`` command, and stops jobs whose status became Killed/Deleted.  At
exit it uploads the OutputSandbox files that exist and reports Done (exit 0)
or Failed ("exit code N").  One log line per job transition; never a token.

Like DIRAC's JobWrapper it accounts for every job (``Usage``): heartbeats
carry CPUConsumed, MemoryUsed and WallClockTime, and before the final status
the job parameters TotalCPUTime(s), WallClockTime(s), MemoryUsed(kb), ... are
recorded (PATCH /api/jobs/metadata; docs/accounting.md). ``--metrics-port``
serves the site's jobs by state in Prometheus text format.

What a job's owner controls (the JDL, the sandbox, the code) is kept in its
place (docs/dirac-backend.md, trust boundaries):

* an input sandbox whose SHA-256 is not the checksum DiracX recorded in its
  PFN is refused unpacked, the job Failed with the reason;
* StdOutput/StdError must be plain file names inside the job's directory;
* a job's output is capped (``--max-output``): a file may not grow past it
  (RLIMIT_FSIZE for processes, the streamed logs for containers); a job that
  reaches it is stopped and Failed ("Output limit exceeded");
* containers run with every capability dropped, no-new-privileges and a
  pids limit (``--job-pids``);
* a job's directory (its sandbox holds the cluster's key and token) is
  removed once the job is final and its output uploaded, and a restarted
  site removes what its predecessor left (``--keep-workdirs`` to debug).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .dirac import DiracXClient, DiracXError, SandboxChecksumMismatch, TokenSource
from .dirac.jdl import as_list, command, input_sandbox_pfns, output_file_name, parse_jdl
from .promtext import CONTENT_TYPE, exposition

log = logging.getLogger("gridhub.localsite")

DEFAULT_SITE = "LCG.Local.gridhub"
SOURCE = "LocalSite"
KILL_GRACE = 5.0
#: default cap of one job's output (StdOutput + StdError, each file it writes;
#: DiracX keeps at most 100 MB per sandbox, the site uploads each file's last 10 MB)
MAX_OUTPUT = 256 * 1024 * 1024
#: default pids limit of a job container (a Dask worker runs ~50 threads)
JOB_PIDS = 1024
#: how often a running job's output size is looked at
OUTPUT_CHECK = 1.0


def megabytes(size: str) -> int:
    """A docker-style size ("3G", "512m", "1024") in MB."""
    units = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}
    text = size.strip().lower().removesuffix("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(float(text) / 2**20)  # plain bytes


@dataclass(frozen=True)
class Requirements:
    """What a job's JDL asks of a site, in DIRAC's attribute names."""

    sites: frozenset[str] = frozenset()  # Site: empty means any site
    banned: frozenset[str] = frozenset()  # BannedSites
    tags: frozenset[str] = frozenset()  # Tags the site must offer
    ram_mb: int = 0  # MinRAM

    @classmethod
    def of(cls, attrs: dict) -> Requirements:
        sites = {s for s in as_list(attrs.get("Site")) if s not in ("", "ANY", "Any", "Multiple")}
        return cls(
            frozenset(sites),
            frozenset(as_list(attrs.get("BannedSites"))),
            frozenset(as_list(attrs.get("Tags"))),
            int(str(attrs.get("MinRAM") or 0)),
        )


class SiteCatalogue:
    """The stand-in sites of one facility and the tags each offers.

    DiracX 0.7 has no matcher, so several stand-in sites polling one DiracX
    must not take the same job: each computes, from the same catalogue, the
    sites a job may run at, and only the one the job's ID points to among
    them takes it (the workers of a cluster spread over the sites that fit).
    With no catalogue a site takes every job that names it or any site.
    """

    def __init__(self, sites: dict[str, list[str]] | None = None) -> None:
        self.sites = {name: frozenset(tags) for name, tags in sorted((sites or {}).items())}

    def eligible(self, req: Requirements) -> list[str]:
        return [
            name
            for name, tags in self.sites.items()
            if (not req.sites or name in req.sites) and name not in req.banned and req.tags <= tags
        ]

    def takes(self, site: str, job_id: int, req: Requirements) -> bool:
        if not self.sites:  # a lone site offering no tags
            return (not req.sites or site in req.sites) and site not in req.banned and not req.tags
        eligible = self.eligible(req)
        return bool(eligible) and eligible[job_id % len(eligible)] == site


CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass
class Usage:
    """What one job used, as the site measured it (DIRAC's JobWrapper and
    Watchdog report the same): CPU seconds (user + system of the job's whole
    process tree, or of its container's cgroup), peak memory in kB, bytes
    read and written (``/proc/<pid>/io`` rchar/wchar, or the container's
    block I/O), and the exit status."""

    cpu_s: float = 0.0
    memory_kb: int = 0  # peak
    read_bytes: int | None = None
    written_bytes: int | None = None
    exit_status: int | None = None

    def sample(self, cpu_s: float, memory_kb: int, read: int | None, written: int | None) -> None:
        # counters only grow: a sample taken while processes exit may be lower
        self.cpu_s = max(self.cpu_s, cpu_s)
        self.memory_kb = max(self.memory_kb, memory_kb)
        if read is not None:
            self.read_bytes = max(self.read_bytes or 0, read)
        if written is not None:
            self.written_bytes = max(self.written_bytes or 0, written)

    def parameters(self, wall_s: float, site: str) -> dict[str, Any]:
        """DIRAC job parameters, named as DIRAC's JobWrapper names them
        (``ExitStatus``, ``BytesRead``, ``BytesWritten`` are GridHub's)."""
        params: dict[str, Any] = {
            "TotalCPUTime(s)": round(self.cpu_s),
            "CPUTime(ms)": round(self.cpu_s * 1000),
            "WallClockTime(s)": round(wall_s, 3),
            "MemoryUsed(kb)": self.memory_kb,
            "Memory(MB)": round(self.memory_kb / 1024),
            "AccountingSite": site,
        }
        if self.exit_status is not None:
            params["ExitStatus"] = self.exit_status
        if self.read_bytes is not None:
            params["BytesRead"] = self.read_bytes
        if self.written_bytes is not None:
            params["BytesWritten"] = self.written_bytes
        return params


def session_usage(sid: int) -> tuple[float, int, int | None, int | None]:
    """CPU seconds, resident kB and bytes read/written of the live processes
    of session ``sid`` (a job started with ``start_new_session``), each with
    what its children it already waited for used (``cutime``/``cstime``; the
    I/O of reaped children is in their parent's ``/proc/<pid>/io``)."""
    cpu_ticks = rss_pages = 0
    read = written = 0
    io_seen = False
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        # fields[0] is field 3 (state): session is field 6, utime..cstime 14-17, rss 24
        if int(fields[3]) != sid:
            continue
        cpu_ticks += sum(int(f) for f in fields[11:15])
        rss_pages += int(fields[21])
        try:
            with open(f"/proc/{entry.name}/io") as fh:
                io = dict(line.split(": ") for line in fh.read().splitlines())
            read += int(io["rchar"])
            written += int(io["wchar"])
            io_seen = True
        except (OSError, KeyError, ValueError):
            pass
    return (
        cpu_ticks / CLK_TCK,
        rss_pages * PAGE_KB,
        read if io_seen else None,
        written if io_seen else None,
    )


class ChildProcess:
    """A job's process, reaped with ``os.wait4`` (in a thread of its own) so
    the site knows its resource usage: user + system CPU of the process and
    of every descendant it waited for, and the largest resident size among
    them (``ru_maxrss``, kB)."""

    def __init__(self, popen: subprocess.Popen) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.returncode: int | None = None
        self.rusage: resource.struct_rusage | None = None
        loop = asyncio.get_running_loop()
        self._done: asyncio.Future[int] = loop.create_future()

        def reap() -> None:
            _, status, ru = os.wait4(self.pid, 0)
            rc = os.waitstatus_to_exitcode(status)
            self.popen.returncode = rc  # reaped here: Popen must not wait again
            loop.call_soon_threadsafe(self._reaped, rc, ru)

        threading.Thread(target=reap, name=f"reap-{self.pid}", daemon=True).start()

    def _reaped(self, rc: int, ru: resource.struct_rusage) -> None:
        self.rusage, self.returncode = ru, rc
        if not self._done.done():
            self._done.set_result(rc)

    async def wait(self) -> int:
        return await asyncio.shield(self._done)


@dataclass
class RunningJob:
    job_id: int
    workdir: Path
    proc: ChildProcess | None = None
    container: str | None = None
    killed: str | None = None  # why, once we decided to kill it
    over_limit: str | None = None  # why, when its output passed the cap
    started: float = field(default_factory=time.monotonic)
    task: asyncio.Task | None = None
    usage: Usage = field(default_factory=lambda: Usage())
    ended: float | None = None  # monotonic time the payload ended


class LocalSite:
    def __init__(
        self,
        client: DiracXClient,
        state_dir: str | Path,
        *,
        site: str = DEFAULT_SITE,
        max_jobs: int = 4,
        runner: str = "process",
        docker_network: str | None = None,
        image: str | None = None,
        poll_interval: float = 1.0,
        heartbeat_interval: float = 3.0,
        keep_workdirs: bool = False,
        max_output: int = MAX_OUTPUT,
        job_pids: int = JOB_PIDS,
        job_memory: str | None = None,
        container_prefix: str = "gridhub-job",
        labels: dict[str, str] | None = None,
        catalogue: SiteCatalogue | None = None,
        metrics_address: tuple[str, int] | None = None,
        accounting: bool = True,
    ) -> None:
        if runner not in ("process", "docker"):
            raise ValueError(f"unknown runner {runner!r}")
        if runner == "docker" and not image:
            raise ValueError("--runner docker needs --image")
        self.dx = client
        self.state_dir = Path(state_dir)
        self.site = site
        self.max_jobs = max_jobs
        self.runner = runner
        self.docker_network = docker_network
        self.image = image
        self.poll_interval = poll_interval
        # DiracX keys heartbeat records by (job, name, second): keep > 1 s.
        self.heartbeat_interval = max(heartbeat_interval, 1.5)
        self.keep_workdirs = keep_workdirs
        self.max_output = max_output
        self.job_pids = job_pids
        self.job_memory = job_memory
        self.container_prefix = container_prefix
        self.labels = {"org.gridhub.localsite": site, **(labels or {})}
        self._docker = None
        self.catalogue = catalogue or SiteCatalogue()
        if self.catalogue.sites and site not in self.catalogue.sites:
            raise ValueError(
                f"site {site!r} is not in the site catalogue {sorted(self.catalogue.sites)}"
            )
        # the memory of one job slot (DIRAC's queue MaxRAM): jobs asking more wait
        self.max_ram_mb = megabytes(job_memory) if job_memory else 0
        self.jobs: dict[int, RunningJob] = {}
        self._refused: set[int] = set()
        self._ours: dict[int, bool] = {}  # job -> does this site match it (from its JDL)
        self._jdls: dict[int, dict] = {}  # parsed JDLs of matched jobs, for their start
        self.metrics_address = metrics_address
        self.accounting = accounting  # off: only to measure its cost (bench/)
        self.finished: Counter[str] = Counter()  # final status -> jobs
        self.cpu_seconds = 0.0  # of the jobs accounted

    # ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        (self.state_dir / "jobs").mkdir(parents=True, exist_ok=True)
        if not self.keep_workdirs:
            # a predecessor's jobs are not resumed: their directories (cluster
            # keys and tokens among their files) have no further use
            for leftover in (self.state_dir / "jobs").iterdir():
                log.info("Removing leftover job directory %s", leftover.name)
                shutil.rmtree(leftover, ignore_errors=True)
        if self.runner == "docker":
            await asyncio.to_thread(self._docker_remove_leftovers)
        log.info("Local site %s polling %s (max %d jobs)", self.site, self.dx.url, self.max_jobs)
        failures = 0
        server = None
        if self.metrics_address:
            server = await asyncio.start_server(self._serve_metrics, *self.metrics_address)
            log.info("Metrics at http://%s:%d/metrics", *self.metrics_address)
        try:
            while not stop.is_set():
                try:
                    await self.poll_once()
                    if failures:
                        log.info("DiracX at %s reachable again", self.dx.url)
                    failures = 0
                except DiracXError as exc:
                    failures += 1
                    if failures == 1 or failures % 30 == 0:
                        log.warning("Poll failed: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.poll_interval)
        finally:
            if server is not None:
                server.close()
            await self.shutdown()

    def metrics_text(self) -> str:
        """The site's jobs by state, in Prometheus text format."""
        site = ("site", self.site)
        running = sum(1 for j in self.jobs.values() if j.proc or j.container)
        current = {
            (site, ("state", "Running")): running,
            (site, ("state", "Starting")): len(self.jobs) - running,
        }
        return exposition(
            [
                ("gridhub_localsite_jobs", "gauge", "Jobs the site holds now, by state.", current),
                (
                    "gridhub_localsite_slots",
                    "gauge",
                    "Job slots of the site (--max-jobs).",
                    {(site,): self.max_jobs},
                ),
                (
                    "gridhub_localsite_jobs_finished_total",
                    "counter",
                    "Jobs the site ran to a final status since it started.",
                    {(site, ("status", k)): v for k, v in self.finished.items()},
                ),
                (
                    "gridhub_localsite_cpu_seconds_total",
                    "counter",
                    "CPU seconds its jobs used (as recorded in their job parameters).",
                    {(site,): round(self.cpu_seconds, 3)},
                ),
            ]
        )

    async def _serve_metrics(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """A minimal HTTP/1.0 answer: ``GET /metrics``, nothing else."""
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, path, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            if method == "GET" and path.split("?")[0] == "/metrics":
                status, body, ctype = "200 OK", self.metrics_text().encode(), CONTENT_TYPE
            else:
                status, body, ctype = "404 Not Found", b"only GET /metrics\n", "text/plain"
            head = f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\n"
            head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    async def shutdown(self) -> None:
        for job in list(self.jobs.values()):
            await self._terminate(job, "local site shutting down")
        tasks = [j.task for j in self.jobs.values() if j.task]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def poll_once(self) -> None:
        # Jobs we run whose status was changed behind our back (killed via DiracX).
        if self.jobs:
            states = await self.dx.statuses(list(self.jobs))
            for job_id, job in list(self.jobs.items()):
                st = states.get(job_id)
                if job.killed is None and (st is None or st.status in ("Killed", "Deleted")):
                    why = f"status {st.status}" if st else "job gone from DiracX"
                    await self._terminate(job, why)
        free = self.max_jobs - len(self.jobs)
        if free <= 0:
            return
        found = await self.dx.search(
            [{"parameter": "Status", "operator": "in", "values": ["Received", "Waiting"]}],
            ["JobID", "Status", "Site"],
            sort=[{"parameter": "JobID", "direction": "asc"}],
        )
        waiting = {int(j["JobID"]) for j in found}
        self._ours = {k: v for k, v in self._ours.items() if k in waiting}
        self._jdls = {k: v for k, v in self._jdls.items() if k in waiting}
        for j in found:
            job_id = int(j["JobID"])
            if job_id in self.jobs or job_id in self._refused:
                continue
            if free <= 0:
                break
            if not await self._matches(job_id):
                continue
            free -= 1
            job = RunningJob(job_id, self.state_dir / "jobs" / str(job_id))
            self.jobs[job_id] = job
            job.task = asyncio.create_task(self._run_job(job, str(j["Status"])))

    async def _matches(self, job_id: int) -> bool:
        """Whether this site takes the job, from its JDL (read once per job)."""
        if job_id not in self._ours:
            try:
                attrs = parse_jdl(await self.dx.job_jdl(job_id))
                req = Requirements.of(attrs)
            except DiracXError as exc:  # looked at again at the next poll
                log.info("Job %d: JDL not read for matching (%s)", job_id, exc)
                return False
            except ValueError as exc:  # unparsable: the run path fails it with the reason
                log.info("Job %d: JDL not parsed for matching (%s)", job_id, exc)
                attrs, req = None, Requirements()
            ours = self.catalogue.takes(self.site, job_id, req)
            if ours and self.max_ram_mb and req.ram_mb > self.max_ram_mb:
                log.info(
                    "Job %d: needs %d MB, this site's slots have %d MB: left waiting",
                    job_id,
                    req.ram_mb,
                    self.max_ram_mb,
                )
                ours = False
            self._ours[job_id] = ours
            if ours and attrs is not None:
                self._jdls[job_id] = attrs  # the job's start uses it: not read twice
        return self._ours[job_id]

    # ------------------------------------------------------------------

    async def _run_job(self, job: RunningJob, status: str) -> None:
        jid = job.job_id
        try:
            steps: list[tuple[str, str]] = []
            if status == "Received":
                steps += [("Checking", "JobSanity"), ("Waiting", "Pilot Agent Submission")]
            steps += [("Matched", "Assigned"), ("Running", "Job Initialization")]

            async def to_running() -> str:
                await self.dx.set_statuses(jid, steps, source=SOURCE)
                st = (await self.dx.statuses([jid])).get(jid)
                if st is not None and st.status == "Running":
                    with contextlib.suppress(DiracXError):
                        await self.dx.patch_metadata(jid, Site=self.site)
                return st.status if st else "gone"

            # The JDL and the input sandbox are fetched while the status walk
            # goes on: neither depends on it, and the job starts two round
            # trips sooner. A refused job's files are removed unused.
            fetched, now = await asyncio.gather(
                self._fetch(job), to_running(), return_exceptions=True
            )
            if isinstance(now, BaseException):
                raise now
            if now != "Running":
                log.info("Job %d: not started, it is %s", jid, now)
                self._refused.add(jid)
                shutil.rmtree(job.workdir, ignore_errors=True)  # not ours to run
                return
            log.info("Job %d: %s -> Running at %s", jid, status, self.site)
            if isinstance(fetched, SandboxChecksumMismatch):
                # the store holds other bytes than DiracX recorded: never run them
                log.warning("Job %d: input sandbox refused: %s", jid, fetched.msg)
                shutil.rmtree(job.workdir, ignore_errors=True)
                await self._final(
                    jid, "Failed", "Input sandbox checksum mismatch", fetched.msg[-250:]
                )
                return
            if isinstance(fetched, BaseException):
                if not isinstance(fetched, DiracXError | ValueError | OSError):
                    raise fetched
                log.warning("Job %d: not run: %s", jid, fetched)
                await self._final(jid, "Failed", f"Input sandbox/JDL: {fetched}"[:250])
                return
            attrs, argv = fetched
            if job.killed:
                await self._final(jid, "Killed", "Killed before start")
                return
            rc = await self._execute(job, attrs, argv)
            await self._finish(job, attrs, rc)
        except DiracXError as exc:
            log.warning("Job %d: DiracX error: %s", jid, exc)
        except Exception:
            log.exception("Job %d: local site error", jid)
            with contextlib.suppress(Exception):
                await self._final(jid, "Failed", "Local site error")
        finally:
            await self._kill_now(job)
            self.jobs.pop(jid, None)
            if not self.keep_workdirs:
                shutil.rmtree(job.workdir, ignore_errors=True)

    async def _fetch(self, job: RunningJob) -> tuple[dict, list[str]]:
        """The job's JDL attributes and command, its input sandbox unpacked."""
        attrs = self._jdls.pop(job.job_id, None) or parse_jdl(await self.dx.job_jdl(job.job_id))
        for attr, default in (("StdOutput", "std.out"), ("StdError", "std.err")):
            output_file_name(attrs, attr, default)  # refused before anything is fetched
        if job.workdir.exists():
            shutil.rmtree(job.workdir)
        job.workdir.mkdir(parents=True)
        await self.dx.download_input_sandbox(
            job.job_id, job.workdir, pfns=input_sandbox_pfns(attrs)
        )
        return attrs, command(attrs)

    def _env(self, job: RunningJob, attrs: dict) -> dict[str, str]:
        path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        bindir = str(Path(sys.executable).parent)
        env = {
            "PATH": f"{bindir}:{path}" if bindir not in path.split(":") else path,
            "HOME": str(job.workdir),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "TMPDIR": str(job.workdir),
            "JOBID": str(job.job_id),
            "DIRACJOBID": str(job.job_id),
            "DIRACSITE": self.site,
        }
        for item in as_list(attrs.get("ExecutionEnvironment")):
            if "=" in item:
                k, v = item.split("=", 1)
                env[k] = v
        return env

    async def _execute(self, job: RunningJob, attrs: dict, argv: list[str]) -> int:
        jid = job.job_id
        out = job.workdir / output_file_name(attrs, "StdOutput", "std.out")
        err = job.workdir / output_file_name(attrs, "StdError", "std.err")
        exe = argv[0]
        if "/" not in exe and (job.workdir / exe).is_file():
            (job.workdir / exe).chmod(0o755)
            argv = [f"./{exe}", *argv[1:]]
        env = self._env(job, attrs)
        if self.runner == "docker":
            cpus = float(attrs.get("NumberOfProcessors") or 1)
            ctr = await asyncio.to_thread(self._docker_start, job, argv, env, cpus, out, err)
            done: asyncio.Future = asyncio.ensure_future(asyncio.to_thread(self._docker_wait, ctr))
            job.started = time.monotonic()
            log.info("Job %d: started %s (container %s)", jid, argv[0], job.container)
        else:
            cap = self.max_output

            def limits() -> None:  # in the child, before exec
                # no file the job writes (std.out included) grows past the cap:
                # the kernel stops the write (SIGXFSZ), the site sees the size
                resource.setrlimit(resource.RLIMIT_FSIZE, (cap, cap))

            with open(out, "wb") as fout, open(err, "wb") as ferr:  # noqa: ASYNC230
                # Popen, not asyncio's subprocess: the site reaps the job itself
                # (os.wait4) to account for what it used
                popen = subprocess.Popen(  # noqa: ASYNC220  (fork+exec: milliseconds)
                    argv,
                    cwd=job.workdir,
                    env=env,
                    stdout=fout,
                    stderr=ferr,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # its own process group, killed as one
                    preexec_fn=limits,
                )
            job.proc = ChildProcess(popen)
            job.started = time.monotonic()
            done = asyncio.ensure_future(job.proc.wait())
            log.info("Job %d: started %s (pid %d)", jid, argv[0], job.proc.pid)
        with contextlib.suppress(DiracXError):
            await self.dx.set_status(jid, "Running", "Application")
        last_beat = 0.0
        while True:
            try:
                rc = await asyncio.wait_for(
                    asyncio.shield(done), min(self.heartbeat_interval, OUTPUT_CHECK)
                )
                job.ended = time.monotonic()
                job.usage.exit_status = rc
                self._check_output(job, out, err)
                if self.runner == "docker":
                    await asyncio.to_thread(self._docker_collect, job, attrs)
                elif job.proc is not None and job.proc.rusage is not None:
                    ru = job.proc.rusage
                    job.usage.sample(ru.ru_utime + ru.ru_stime, ru.ru_maxrss, None, None)
                return rc
            except TimeoutError:
                pass
            if job.killed:
                continue
            if self._check_output(job, out, err):
                await self._terminate(job, job.over_limit or "output limit")
                continue
            now = time.monotonic()
            if now - last_beat < self.heartbeat_interval:
                continue
            last_beat = now
            beat: dict[str, float] = {}
            if self.accounting:
                await self._measure(job)
                beat = {
                    "CPUConsumed": round(job.usage.cpu_s, 2),
                    "MemoryUsed": job.usage.memory_kb,  # kB, as MemoryUsed(kb)
                }
            try:
                cmds = await self.dx.heartbeat(
                    jid,
                    WallClockTime=round(now - job.started, 1),
                    LoadAverage=os.getloadavg()[0],
                    **beat,
                )
            except DiracXError as exc:
                log.warning("Job %d: heartbeat failed: %s", jid, exc)
                continue
            if "Kill" in cmds:
                await self._terminate(job, "Kill command")

    async def _measure(self, job: RunningJob) -> None:
        """Sample what the running job uses (its process session, or its
        container's cgroup through Docker's stats)."""
        try:
            if job.container:
                sample = await asyncio.to_thread(self._docker_usage, job.container)
                if sample is not None:
                    job.usage.sample(*sample)
            elif job.proc is not None and job.proc.returncode is None:
                job.usage.sample(*await asyncio.to_thread(session_usage, job.proc.pid))
        except Exception as exc:  # accounting never stops a job
            log.info("Job %d: usage not sampled: %s", job.job_id, exc)

    async def _account(self, job: RunningJob) -> None:
        """Record what the job used as DIRAC job parameters (as DIRAC's
        JobWrapper does at the end of a job)."""
        wall = (job.ended or time.monotonic()) - job.started
        params = job.usage.parameters(wall, self.site)
        try:
            await self.dx.patch_metadata(job.job_id, **params)
        except DiracXError as exc:
            log.warning("Job %d: accounting not recorded: %s", job.job_id, exc)
            return
        self.cpu_seconds += job.usage.cpu_s
        log.info(
            "Job %d: used %.1f CPU s in %.1f s, peak %d kB, exit %s",
            job.job_id,
            job.usage.cpu_s,
            wall,
            job.usage.memory_kb,
            job.usage.exit_status,
        )

    def _check_output(self, job: RunningJob, *files: Path) -> bool:
        """True (and job.over_limit set) once the job's output reached the cap."""
        if job.over_limit is None:
            sizes = [f.stat().st_size for f in files if f.exists()]
            if sum(sizes) >= self.max_output:
                job.over_limit = f"stdout+stderr reached the limit of {self.max_output} bytes"
        return job.over_limit is not None

    async def _finish(self, job: RunningJob, attrs: dict, rc: int) -> None:
        jid = job.job_id
        if self.accounting:
            await self._account(job)
        if job.over_limit:
            log.warning("Job %d: output limit exceeded: %s", jid, job.over_limit)
            await self._upload_outputs(job, attrs)
            await self._final(jid, "Failed", "Output limit exceeded", job.over_limit)
            return
        if job.killed:
            await self._final(jid, "Killed", f"Killed by the local site ({job.killed})")
            return
        await self._upload_outputs(job, attrs)
        if rc == 0:
            await self._final(jid, "Done", "Execution Complete")
        else:
            await self._final(jid, "Failed", f"exit code {rc}", f"Failed with exit code {rc}")

    async def _upload_outputs(self, job: RunningJob, attrs: dict) -> None:
        """Upload the OutputSandbox files that exist (each its last 10 MB)."""
        jid = job.job_id
        outputs = {}
        for name in as_list(attrs.get("OutputSandbox")):
            p = job.workdir / name
            if p.is_file() and p.resolve().is_relative_to(job.workdir.resolve()):
                with p.open("rb") as fh:
                    fh.seek(max(0, p.stat().st_size - 10_000_000))
                    outputs[name] = fh.read()
        if outputs:
            await self.dx.set_status(jid, "Completing", "Uploading Output Sandbox")
            try:
                await self.dx.upload_output_sandbox(jid, outputs)
            except DiracXError as exc:
                log.warning("Job %d: output sandbox upload failed: %s", jid, exc)

    async def _final(self, jid: int, status: str, minor: str, app: str = "") -> None:
        self.finished[status] += 1
        steps: list[tuple[str, str, str]] = []
        if status == "Done":
            steps.append(("Completing", "Application Finished Successfully", ""))
        steps.append((status, minor, app))
        await self.dx.set_statuses(jid, steps, source=SOURCE)
        log.info("Job %d: -> %s (%s)", jid, status, minor)

    async def _terminate(self, job: RunningJob, why: str) -> None:
        if job.killed is None:
            job.killed = why
            log.info("Job %d: killing (%s)", job.job_id, why)
        await self._kill_now(job)

    async def _kill_now(self, job: RunningJob) -> None:
        if job.container:
            if job.ended is None and self.accounting:  # its cgroup's counters go with it
                await self._measure(job)
            await asyncio.to_thread(self._docker_remove, job.container)
            job.container = None
            return
        proc = job.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), KILL_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        # Whatever the job left in its process group goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    # ------------------------------------------------------------------
    # docker runner (blocking Docker SDK calls, run in threads)

    def _client(self):
        if self._docker is None:
            import docker

            self._docker = docker.from_env(timeout=60)
        return self._docker

    def _docker_remove_leftovers(self) -> None:
        filters = {"label": [f"{k}={v}" for k, v in self.labels.items()]}
        for ctr in self._client().containers.list(all=True, filters=filters):
            log.info("Removing leftover job container %s", ctr.name)
            with contextlib.suppress(Exception):
                ctr.remove(force=True)

    def _docker_start(self, job, argv, env, cpus, out: Path, err: Path):
        import io
        import tarfile
        import threading

        import docker.errors

        client = self._client()
        name = f"{self.container_prefix}-{job.job_id}"
        with contextlib.suppress(docker.errors.NotFound):
            client.containers.get(name).remove(force=True)
        user = client.images.get(self.image).attrs["Config"].get("User") or "0:0"
        uid, _, gid = user.partition(":")
        uid_n = int(uid) if uid.isdigit() else 0
        gid_n = int(gid) if gid.isdigit() else 0
        environment = {k: v for k, v in env.items() if k not in ("PATH", "HOME", "TMPDIR")}
        environment.update(HOME="/job", TMPDIR="/tmp")  # noqa: S108
        ctr = client.containers.create(
            self.image,
            command=argv,
            name=name,
            working_dir="/job",
            environment=environment,
            network=self.docker_network,
            labels={**self.labels, "org.gridhub.job": str(job.job_id)},
            mem_limit=self.job_memory,
            nano_cpus=int(max(cpus, 0.1) * 1e9),
            # the job needs no privilege: none to keep, none to gain (setuid
            # binaries in the image), and no fork bomb takes the node
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            pids_limit=self.job_pids,
            detach=True,
        )
        job.container = name
        buf = io.BytesIO()

        def owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.uid, info.gid, info.uname, info.gname = uid_n, gid_n, "", ""
            return info

        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(job.workdir, arcname="job", filter=owned)
        ctr.put_archive("/", buf.getvalue())
        ctr.start()

        def pump(path: Path, stdout: bool) -> None:
            # up to the output cap (the site's loop then stops the job)
            with path.open("ab") as fh:
                for chunk in ctr.logs(stream=True, follow=True, stdout=stdout, stderr=not stdout):
                    room = self.max_output - fh.tell()
                    fh.write(chunk[: max(room, 0)])
                    fh.flush()
                    if room <= len(chunk):
                        return

        ctr._gridhub_pumps = [
            threading.Thread(target=pump, args=(p, so), daemon=True)
            for p, so in ((out, True), (err, False))
        ]
        for t in ctr._gridhub_pumps:
            t.start()
        return ctr

    def _docker_wait(self, ctr) -> int:
        try:
            rc = int(ctr.wait().get("StatusCode", 1))
        except Exception:  # removed under us (killed)
            rc = 137
        for t in getattr(ctr, "_gridhub_pumps", []):
            t.join(10)
        return rc

    def _docker_collect(self, job: RunningJob, attrs: dict) -> None:
        """Copy the OutputSandbox files (other than the streamed std.out/err)
        out of the finished container into the job's work directory."""
        import io
        import tarfile

        if not job.container:
            return
        streamed = {
            str(attrs.get("StdOutput") or "std.out"),
            str(attrs.get("StdError") or "std.err"),
        }
        try:
            ctr = self._client().containers.get(job.container)
        except Exception:
            return
        for name in as_list(attrs.get("OutputSandbox")):
            if name in streamed or "/" in name or name.startswith("."):
                continue
            try:
                stream, stat = ctr.get_archive(f"/job/{name}")
            except Exception:  # noqa: S112  (not produced)
                continue
            if stat.get("size", 0) > self.max_output:
                job.over_limit = f"{name} is larger than the limit of {self.max_output} bytes"
                continue
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                member = tar.getmember(name)
                fh = tar.extractfile(member) if member.isfile() else None
                if fh is not None:
                    (job.workdir / name).write_bytes(fh.read())

    def _docker_usage(self, name: str) -> tuple[float, int, int | None, int | None] | None:
        """CPU seconds, memory kB (cgroup v1's max usage, else the current
        usage) and block I/O bytes of a running container's cgroup; None once
        it stopped (Docker then reports no counters)."""
        stats = self._client().containers.get(name).stats(stream=False, one_shot=True)
        cpu_ns = (stats.get("cpu_stats") or {}).get("cpu_usage", {}).get("total_usage")
        if not cpu_ns:
            return None
        mem = stats.get("memory_stats") or {}
        read = written = 0
        for entry in (stats.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []:
            op = str(entry.get("op", "")).lower()
            if op == "read":
                read += int(entry.get("value", 0))
            elif op == "write":
                written += int(entry.get("value", 0))
        peak = int(mem.get("max_usage") or mem.get("usage") or 0)
        return cpu_ns / 1e9, peak // 1024, read, written

    def _docker_remove(self, name: str) -> None:
        with contextlib.suppress(Exception):
            self._client().containers.get(name).remove(force=True)


def _labels(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise SystemExit(f"gridhub-local-site: --label wants KEY=VALUE, got {item!r}")
        out[k] = v
    return out


def token_source(args: argparse.Namespace) -> TokenSource:
    if args.token_file:
        from .dirac import RefreshingToken

        return RefreshingToken.from_file(args.diracx_url, args.token_file)
    from .embedded import API_KEY, facility_token_source

    if args.embedded_state_dir:
        return facility_token_source(args.embedded_state_dir, args.diracx_url)
    if (args.state_dir / API_KEY).exists():
        return facility_token_source(args.state_dir, args.diracx_url)
    raise SystemExit("gridhub-local-site: give --embedded-state-dir or --token-file")


def _catalogue(text: str) -> SiteCatalogue:
    try:
        sites = json.loads(text) if text.strip() else {}
        if not isinstance(sites, dict) or not all(
            isinstance(v, list) and all(isinstance(t, str) for t in v) for v in sites.values()
        ):
            raise ValueError("not an object of site name -> list of tags")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--site-catalogue: {exc}") from None
    return SiteCatalogue(sites)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="gridhub-local-site",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--diracx-url", required=True)
    p.add_argument(
        "--state-dir",
        required=True,
        type=Path,
        help="the site's directory (job work dirs under it, unless --work-dir); if it is "
        "the embedded DiracX's state dir, its facility identity is used",
    )
    p.add_argument("--work-dir", type=Path, help="where job work directories go")
    p.add_argument(
        "--embedded-state-dir", type=Path, help="the embedded DiracX's state dir (identity)"
    )
    p.add_argument("--token-file", type=Path, help="DiracX credentials JSON (refreshed)")
    p.add_argument("--site", default=DEFAULT_SITE)
    p.add_argument(
        "--site-catalogue",
        type=_catalogue,
        default=SiteCatalogue(),
        help='JSON {"<site>": ["<tag>", ...]}: every stand-in site of the facility and the '
        "tags it offers (the same for all of them); unset: this site takes any job",
    )
    p.add_argument("--max-jobs", type=int, default=4)
    p.add_argument("--runner", choices=["process", "docker"], default="process")
    p.add_argument("--docker-network")
    p.add_argument("--image")
    p.add_argument("--job-memory", help="docker runner: memory limit per job, e.g. 3G")
    p.add_argument("--container-prefix", default="gridhub-job", help="docker runner")
    p.add_argument(
        "--label", action="append", default=[], help="docker runner: KEY=VALUE on job containers"
    )
    p.add_argument(
        "--max-output",
        type=int,
        default=MAX_OUTPUT,
        help="bytes a job's output may reach (stdout+stderr, each file it writes)",
    )
    p.add_argument("--job-pids", type=int, default=JOB_PIDS, help="docker runner: pids limit")
    p.add_argument(
        "--keep-workdirs",
        action="store_true",
        help="keep job directories after the job (debugging: they hold cluster keys)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        help="serve the site's jobs by state at http://<metrics-host>:PORT/metrics (Prometheus)",
    )
    p.add_argument(
        "--metrics-host", default="127.0.0.1", help="address the metrics listen on (no auth)"
    )
    p.add_argument(
        "--no-accounting",
        action="store_true",
        help="do not measure jobs nor record what they used (only to measure its cost)",
    )
    p.add_argument("--poll-interval", type=float, default=1.0)
    p.add_argument("--heartbeat-interval", type=float, default=3.0)
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)

    async def amain() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with DiracXClient(args.diracx_url, token_source(args)) as dx:
            site = LocalSite(
                dx,
                args.work_dir or args.state_dir / "localsite",
                site=args.site,
                max_jobs=args.max_jobs,
                runner=args.runner,
                docker_network=args.docker_network,
                image=args.image,
                job_memory=args.job_memory,
                container_prefix=args.container_prefix,
                labels=_labels(args.label),
                max_output=args.max_output,
                job_pids=args.job_pids,
                keep_workdirs=args.keep_workdirs,
                poll_interval=args.poll_interval,
                heartbeat_interval=args.heartbeat_interval,
                catalogue=args.site_catalogue,
                metrics_address=(args.metrics_host, args.metrics_port)
                if args.metrics_port
                else None,
                accounting=not args.no_accounting,
            )
            await site.run(stop)

    asyncio.run(amain())


if __name__ == "__main__":
    main()
