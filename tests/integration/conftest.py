"""Shared integration fixtures.

DiracX (owner: the embedded-DIRAC work):
  ``diracx_server``  session: a real DiracX 0.7 (gridhub.embedded) subprocess on a
                     free loopback port, state in a tmp dir; ``.url``, ``.state_dir``,
                     ``.token_source()``, ``.client()``, ``.stop()``, ``.start()``
                     (restartable on the same port with the same state), ``.log()``.
  ``diracx_local_site`` session: a gridhub.localsite subprocess running the
                     facility's jobs from ``diracx_server``; ``.jobs_dir`` (job N runs in
                     jobs_dir/N), ``.work_dir``, ``.log()``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

VENV_PY = sys.executable


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Proc:
    """A subprocess in its own process group, logging to a file."""

    def __init__(self, argv: list[str], logfile: Path, env: dict[str, str] | None = None):
        self.argv = argv
        self.logfile = logfile
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        fh = open(self.logfile, "ab")
        self.proc = subprocess.Popen(
            self.argv, stdout=fh, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        fh.close()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15) -> None:
        if not self.running():
            return
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log(self, n: int = 6000) -> str:
        return self.logfile.read_text(errors="replace")[-n:] if self.logfile.exists() else ""


class EmbeddedDiracX:
    """The embedded DiracX server as a restartable subprocess."""

    def __init__(self, state_dir: Path, port: int | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.port = port or _free_loopback_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.s3_port = _free_loopback_port()
        self._proc = _Proc(
            [
                VENV_PY,
                "-m",
                "gridhub.embedded",
                "--state-dir",
                str(self.state_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--s3-port",
                str(self.s3_port),
            ],
            self.state_dir.parent / f"{self.state_dir.name}-diracx.log",
        )
        self.startup_seconds: float | None = None

    def start(self, timeout: float = 180) -> EmbeddedDiracX:
        if self._proc.running():
            return self
        t0 = time.monotonic()
        self._proc.start()
        while time.monotonic() - t0 < timeout:
            if not self._proc.running():
                raise RuntimeError(f"embedded DiracX exited:\n{self._proc.log()}")
            try:
                r = httpx.get(f"{self.url}/.well-known/openid-configuration", timeout=2)
                if r.status_code == 200:
                    self.startup_seconds = time.monotonic() - t0
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self._proc.stop()
        raise TimeoutError(f"embedded DiracX not ready after {timeout} s:\n{self._proc.log()}")

    def stop(self) -> None:
        self._proc.stop()

    def running(self) -> bool:
        return self._proc.running()

    def token_source(self):
        from gridhub.embedded import facility_token_source

        return facility_token_source(self.state_dir, self.url)

    def client(self, **kw):
        from gridhub.dirac import DiracXClient

        return DiracXClient(self.url, self.token_source(), **kw)

    def log(self) -> str:
        return self._proc.log()


class LocalSiteProcess:
    def __init__(self, diracx: EmbeddedDiracX, work_dir: Path, *extra: str) -> None:
        self.work_dir = Path(work_dir)
        #: a job's work directory is jobs_dir / str(job_id)
        self.jobs_dir = self.work_dir / "jobs"
        self._proc = _Proc(
            [
                VENV_PY,
                "-m",
                "gridhub.localsite",
                "--diracx-url",
                diracx.url,
                "--state-dir",
                str(diracx.state_dir),
                "--work-dir",
                str(self.work_dir),
                "--heartbeat-interval",
                "2",
                *extra,
            ],
            self.work_dir.parent / f"{self.work_dir.name}.log",
        )

    def start(self) -> LocalSiteProcess:
        self._proc.start()
        return self

    def stop(self) -> None:
        self._proc.stop()

    def log(self) -> str:
        return self._proc.log()


@pytest.fixture(scope="session")
def diracx_server(tmp_path_factory):
    server = EmbeddedDiracX(tmp_path_factory.mktemp("diracx") / "state")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def diracx_local_site(diracx_server, tmp_path_factory):
    site = LocalSiteProcess(diracx_server, tmp_path_factory.mktemp("localsite") / "jobs")
    site.start()
    yield site
    site.stop()
