"""A warm scheduler container: import the scheduler's code, then wait for its one job.

Run by the gateway as the command of every scheduler container
(``python -m gridhub.gateway.scheduler_bootstrap``, containers.py), warm in
its pool or started for one cluster. A cold scheduler spends seconds
importing dask, distributed, bokeh and dask_gateway in the notebook image's
big environment before it reports its address; here that happens before
any cluster asks for it.

The job comes on stdin, written by the gateway through the Docker API's
attach socket: one line of ASCII JSON,

    {"argv": ["python", "-m", "<module>", <args>...], "env": {"NAME": "value", ...}}

with the cluster's TLS key and certificate and its gateway token in ``env``.
Stdin is the one way in that only holders of the Docker API can write, and
that nothing keeps: it is not in ``docker inspect`` (as ``Env``, ``Cmd`` or
labels would be), not in a file or a volume, not in ``docker logs`` (stdout
and stderr only). This module never prints the job.

The scheduler then runs in this process (``runpy``, as ``python -m`` would),
with the job's environment set and dask's configuration read again from it:
dask read its environment variables when it was imported, before the job
came. One job per process: stdin is closed once the line is read, and the
process ends with its scheduler.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import sys
import time
from typing import Any, BinaryIO

# A job is a few kB (a PEM key and certificate, a token, arguments); more is
# not one of the gateway's
MAX_JOB_BYTES = 256 * 1024

# What a scheduler imports before it reports its address (measured: about
# 1.9 s for the command line's imports and 0.9 s more at start, mostly the
# dashboard's bokeh), in the order it would import them
WARM_MODULES = (
    "dask",
    "distributed",
    "distributed.cli.dask_scheduler",
    "dask_gateway.scheduler_preload",
    "gridhub.gateway.named_addresses",
    "distributed.dashboard.scheduler",
    "distributed.http.scheduler.prometheus",
    "distributed.http.scheduler.info",
    "distributed.http.scheduler.json",
    "distributed.http.health",
    "distributed.http.proxy",
    "distributed.http.statics",
)


class JobError(ValueError):
    """The line on stdin is not a job of the gateway's (said without its content)."""


def log(message: str) -> None:
    # stderr: docker logs, read by the operator (never anything of the job's)
    print(f"gridhub-scheduler-bootstrap: {message}", file=sys.stderr, flush=True)


def warm() -> list[str]:
    """Import what the scheduler will import; a missing optional one (bokeh
    for the dashboard) is the scheduler's to report, not the bootstrap's."""
    missing = []
    for name in WARM_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def read_job(stream: BinaryIO) -> tuple[str, list[str], dict[str, str]]:
    """One line: (module to run, its argv, the environment to add)."""
    line = stream.readline(MAX_JOB_BYTES + 1)
    if not line.endswith(b"\n"):
        # end of stdin (an attach that closed) or a line too long: no job
        raise JobError(f"no complete job line ({len(line)} bytes)")
    try:
        job = json.loads(line)
    except ValueError:
        raise JobError("the job is not JSON") from None
    if not isinstance(job, dict) or set(job) != {"argv", "env"}:
        raise JobError("the job must be an object with argv and env only")
    argv, env = job["argv"], job["env"]
    if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
        raise JobError("argv must be a list of strings")
    if not (
        isinstance(env, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    ):
        raise JobError("env must map strings to strings")
    # the form the gateway's scheduler command has: python -m <module> <args>
    if len(argv) < 3 or argv[1] != "-m" or not argv[2]:
        raise JobError("argv must be [python, -m, module, args...]")
    if any("=" in k or "\0" in k or "\0" in v for k, v in env.items()):
        raise JobError("env has a name with '=' or a NUL byte")
    return argv[2], argv[3:], env


def apply_env(env: dict[str, str]) -> None:
    """The job's environment, and dask's configuration read again from it."""
    os.environ.update(env)
    import dask.config

    # dask collected DASK_* variables at import, before the job came; refresh
    # keeps the defaults that distributed and dask_gateway registered since
    dask.config.refresh()


def run(module: str, args: list[str]) -> None:
    """The scheduler in this process, as ``python -m module args`` runs it."""
    sys.argv = [module, *args]
    # warm() imported it as a module; ``python -m`` runs a fresh copy as
    # __main__ (runpy warns when it finds the imported one), its imports
    # already done
    sys.modules.pop(module, None)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def close_stdin() -> None:
    # nothing more comes in: one job per container
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)


def main(stdin: BinaryIO | None = None) -> Any:
    t0 = time.monotonic()
    missing = warm()
    log(
        f"ready in {time.monotonic() - t0:.2f} s"
        + (f" (not importable: {', '.join(missing)})" if missing else "")
        + "; waiting for the job"
    )
    try:
        module, args, env = read_job(stdin or sys.stdin.buffer)
    except JobError as exc:
        log(f"refused: {exc}")
        return 2
    close_stdin()
    log(f"job received: running {module}")
    apply_env(env)
    run(module, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
