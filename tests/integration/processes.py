"""Real processes for integration tests: Traefik and dask-gateway-server.

Each is started as the deployed facility starts it (the same binaries and
config keys), on loopback ports picked free, with logs kept in files that a
failing test prints.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
from gridhub.certificates import self_signed
from gridhub.files import write_private
from gridhub.ports import free_port

VENV_BIN = Path(sys.executable).parent
T = TypeVar("T")
#: what a service that is (re)starting answers: a refused or cut connection
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (OSError, httpx.HTTPError)


def wait_for(
    check: Callable[[], T],
    timeout: float,
    what: str,
    log: Path | Callable[[], str] | None = None,
    *,
    interval: float = 0.2,
    retry: tuple[type[BaseException], ...] = (Exception,),
    alive: Callable[[], bool] | None = None,
) -> T:
    """Poll ``check`` until it returns something truthy; return that.

    An exception of a type in ``retry`` counts as "not yet" (a service still
    starting refuses connections) and the last one is reported; any other
    propagates at once (pass ``retry=()`` to let a check's assert stop the
    wait). ``alive`` false: the process waited for exited, fail now rather
    than at the deadline. ``log`` (a file, or a callable returning text): its
    tail goes into the error.
    """

    def tail() -> str:
        if callable(log):
            return log()[-4000:]
        return log.read_text(errors="replace")[-4000:] if log and log.exists() else ""

    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"{what}: the process exited\n{tail()}")
        try:
            value = check()
        except retry as exc:
            value, last = None, exc  # type: ignore[assignment]
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what}: not reached in {timeout:.0f} s (last error: {last!r})\n{tail()}")


def self_signed_cert(directory: Path, names: list[str]) -> tuple[Path, Path]:
    """The facility's self-signed certificate for ``names``, as gridhub-init makes it."""
    crt, key = self_signed(names, days=2)
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / "facility.crt"
    cert_path.write_bytes(crt)
    return cert_path, write_private(directory / "facility.key", key)


class FacilityTLS:
    """The facility's self-signed certificate for one test session, trusted
    the way a deployment trusts its CA: a bundle of the system's CAs plus it
    in SSL_CERT_FILE. Must run before aiohttp is imported (it builds its
    default SSL context at import)."""

    def __init__(self) -> None:
        import atexit
        import tempfile

        import certifi

        directory = Path(tempfile.mkdtemp(prefix="gridhub-tls-"))
        atexit.register(shutil.rmtree, directory, True)
        self.cert, self.key = self_signed_cert(
            directory, ["localhost", "127.0.0.1", "gridhub-tunnel"]
        )
        bundle = directory / "ca-bundle.pem"
        bundle.write_bytes(Path(certifi.where()).read_bytes() + self.cert.read_bytes())
        os.environ["SSL_CERT_FILE"] = str(bundle)


_FACILITY_TLS: FacilityTLS | None = None


def facility_tls() -> FacilityTLS:
    """The session's FacilityTLS, made on first use."""
    global _FACILITY_TLS
    if _FACILITY_TLS is None:
        _FACILITY_TLS = FacilityTLS()
    return _FACILITY_TLS


def kill_processes_in(directory: Path) -> list[int]:
    """SIGKILL every process whose working directory is under ``directory``."""
    killed = []
    root = str(directory.resolve())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if cwd == root or cwd.startswith(root + os.sep):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
    return killed


class Process:
    """A child in its own process group, logging to a file; restartable."""

    def __init__(
        self,
        argv: list[str],
        logfile: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = argv
        self.logfile = logfile
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.logfile.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )

    def stop(self, timeout: float = 15) -> None:
        if not self.running():
            return
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self, n: int = 6000) -> str:
        return self.logfile.read_text(errors="replace")[-n:] if self.logfile.exists() else ""


class Traefik(Process):
    https_port = 0
    dask_port = 0


def start_traefik(
    workdir: Path, *, provider_url: str, provider_token: str, cert: Path, key: Path
) -> Traefik:
    """Traefik v3 with the facility's entrypoints, reading routes from the
    gateway's HTTP provider; the default certificate comes from a file."""
    workdir.mkdir(parents=True, exist_ok=True)
    https, dask = free_port(), free_port()
    (workdir / "tls.yml").write_text(
        textwrap.dedent(f"""\
        tls:
          stores:
            default:
              defaultCertificate:
                certFile: {cert}
                keyFile: {key}
        """)
    )
    (workdir / "traefik.yml").write_text(
        textwrap.dedent(f"""\
        entryPoints:
          websecure:
            address: "127.0.0.1:{https}"
          dask:
            address: "127.0.0.1:{dask}"
            transport:
              respondingTimeouts:
                idleTimeout: 0s  # as hub_config/traefik/traefik.yml: Dask links idle
        providers:
          file:
            filename: {workdir / "tls.yml"}
          http:
            endpoint: "{provider_url}"
            pollInterval: "1s"
            headers:
              Authorization: "Bearer {provider_token}"
        log:
          level: DEBUG
        """)
    )
    t = Traefik(
        [str(VENV_BIN / "traefik"), f"--configFile={workdir / 'traefik.yml'}"],
        workdir / "traefik.log",
    )
    t.https_port, t.dask_port = https, dask
    t.start()
    wait_for(
        lambda: socket.create_connection(("127.0.0.1", dask), 1).close() is None,
        20,
        "traefik",
        t.log,
    )
    return t


class Gateway(Process):
    address = ""

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self) -> None:
        super().start()
        wait_for(
            lambda: httpx.get(self.url + "/api/health", timeout=2).status_code == 200,
            60,
            "dask-gateway-server",
            self.log,
        )


def gateway_config(**values: object) -> str:
    """A dask-gateway config file from ``Class__trait`` keyword values."""
    lines = ["c = get_config()  # noqa: F821"]
    for key, value in values.items():
        cls, trait = key.split("__")
        lines.append(f"c.{cls}.{trait} = {value!r}")
    return "\n".join(lines) + "\n"


def dask_gateway_server(
    workdir: Path, config: str, address: str, env: dict[str, str] | None = None
) -> Gateway:
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "dask_gateway_config.py"
    cfg.write_text(config)
    exe = shutil.which("dask-gateway-server", path=str(VENV_BIN)) or "dask-gateway-server"
    g = Gateway(
        [exe, "-f", str(cfg)],
        workdir / "gateway.log",
        env={"PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}", **(env or {})},
        cwd=workdir,
    )
    g.address = address
    g.start()
    return g


class EmbeddedDiracX:
    """The embedded DiracX server as a restartable subprocess."""

    def __init__(self, state_dir: Path, port: int | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.s3_port = free_port()
        self._proc = Process(
            [
                sys.executable,
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
        try:
            wait_for(
                lambda: (
                    httpx.get(f"{self.url}/.well-known/openid-configuration", timeout=2).status_code
                    == 200
                ),
                timeout,
                "embedded DiracX",
                self._proc.log,
                interval=0.1,
                retry=(httpx.TransportError,),
                alive=self._proc.running,
            )
        except BaseException:
            self._proc.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

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
        self._proc = Process(
            [
                sys.executable,
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

    @property
    def logfile(self) -> Path:
        return self._proc.logfile

    def log(self) -> str:
        return self._proc.log()
