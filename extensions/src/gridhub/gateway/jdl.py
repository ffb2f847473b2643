"""Build the JDL of a Dask worker job.

The JDL carries no secret: the cluster's TLS key, the gateway token and the
worker's environment travel in the input sandbox (see ``job_sandbox``).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources

JOB_SCRIPT = "gridhub-job.sh"
ENV_FILE = "worker.env"
CERT_FILE = "dask.crt"
KEY_FILE = "dask.pem"
FACILITY_CA_FILE = "facility-ca.crt"


def quote(value: str) -> str:
    """Quote a string as a ClassAd (JDL) string literal.

    DIRAC's ClassAd parser has no escapes, so a value that would need one is
    refused rather than silently mangled.
    """
    if any(c in value for c in '"\\\n'):
        raise ValueError(f"JDL string may not contain quotes, backslashes or newlines: {value!r}")
    return '"' + value + '"'


def safe_label(value: str) -> str:
    """A user or cluster name reduced to characters every JDL and DIRAC tool takes."""
    return re.sub(r"[^A-Za-z0-9@._+-]", "_", value)


def _string_list(values: Sequence[str]) -> str:
    return "{" + ", ".join(quote(v) for v in values) + "}"


@dataclass(frozen=True)
class WorkerJob:
    """What DIRAC needs to know about one Dask worker."""

    cluster_name: str
    worker_name: str
    username: str
    sandbox_pfn: str
    cores: int = 1
    wall_time: int = 3600  # seconds
    sites: Sequence[str] = ()
    banned_sites: Sequence[str] = ()
    tags: Sequence[str] = field(default_factory=tuple)
    memory_mb: int = 0  # what the worker needs and may use (0: the site's default)

    def jdl(self) -> str:
        user = safe_label(self.username)
        attrs: dict[str, str] = {
            # /bin/sh exists on every worker node; the script comes in the sandbox.
            "Executable": quote("/bin/sh"),
            "Arguments": quote(f"{JOB_SCRIPT} {self.worker_name}"),
            # A DIRAC admin can tell whose job this is from JobName and JobGroup.
            "JobName": quote(f"dask-worker {user} {self.worker_name}"),
            "JobGroup": quote(self.cluster_name),
            "JobType": quote("User"),
            "InputSandbox": _string_list([self.sandbox_pfn]),
            "StdOutput": quote("std.out"),
            "StdError": quote("std.err"),
            "OutputSandbox": _string_list(["std.out", "std.err"]),
            "NumberOfProcessors": str(int(self.cores)),
            # DIRAC's CPUTime is in normalised seconds; wall time x cores bounds it.
            "CPUTime": str(int(self.wall_time) * int(self.cores)),
            "GridHubUser": quote(user),
            "GridHubCluster": quote(self.cluster_name),
        }
        if self.sites:
            attrs["Site"] = _string_list(list(self.sites))
        if self.banned_sites:
            attrs["BannedSites"] = _string_list(list(self.banned_sites))
        if self.tags:
            attrs["Tags"] = _string_list(list(self.tags))
        if self.memory_mb:
            # DIRAC's RAM requirement (MB): matched against a queue's MaxRAM;
            # the limit is the worker's own (dask's --memory-limit) too
            attrs["MinRAM"] = str(int(self.memory_mb))
            attrs["MaxRAM"] = str(int(self.memory_mb))
        body = ";\n  ".join(f"{k} = {v}" for k, v in attrs.items())
        return f"[\n  {body};\n]"


def job_script() -> bytes:
    return resources.files("gridhub.gateway").joinpath("gridhub-job.sh").read_bytes()


def env_file(env: Mapping[str, str]) -> bytes:
    """Render worker environment as a POSIX sh file of ``export K=V`` lines."""
    lines = [f"export {k}={shlex.quote(str(v))}" for k, v in sorted(env.items())]
    return ("\n".join(lines) + "\n").encode()


def job_sandbox(
    *,
    env: Mapping[str, str],
    worker_cmd: Sequence[str],
    tls_cert: bytes,
    tls_key: bytes,
    facility_ca: bytes | None = None,
) -> dict[str, bytes]:
    """The files of a cluster's input sandbox, shared by all its workers.

    ``worker_cmd`` may contain ``{worker_name}``; the job script substitutes the
    name it is given as its first argument.
    """
    cmd = " ".join(shlex.quote(c) for c in worker_cmd)
    files = {
        JOB_SCRIPT: job_script(),
        ENV_FILE: env_file(env) + f"GRIDHUB_WORKER_CMD={shlex.quote(cmd)}\n".encode(),
        CERT_FILE: tls_cert,
        KEY_FILE: tls_key,
    }
    if facility_ca:
        # Lets the worker verify Traefik's certificate when it is self-signed.
        files[FACILITY_CA_FILE] = facility_ca
    return files
