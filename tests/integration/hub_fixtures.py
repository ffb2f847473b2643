"""Fixtures for the hub's process-level tests: a real JupyterHub + real Traefik.

Import explicitly from the test modules (``from hub_fixtures import *``); this is not
a conftest.  Everything started here is stopped here, by pid, with bounded waits.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psutil
import pytest
from headless_chromium import CHROMIUM, launched
from processes import free_port, wait_for

if TYPE_CHECKING:
    from playwright.sync_api import Browser

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
HUB_CONFIG = REPO / "hub_config" / "jupyterhub_config.py"
ARTIFACTS = REPO / "artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots"
TEST_UNIX_USER = "gridhub-test"
ADMIN_TOKEN = "gridhub-test-admin-" + os.urandom(8).hex()

__all__ = [
    "ADMIN_TOKEN",
    "ARTIFACTS",
    "CHROMIUM",
    "HUB_CONFIG",
    "REPO",
    "SCREENSHOTS",
    "Hub",
    "OIDCMock",
    "chromium",
    "hub_factory",
    "login_form",
    "server_python",
    "test_unix_user",
]


def _stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _end(procs: list[psutil.Process], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL what is still running after ``timeout``."""
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, 5)


def _service_of(proc: psutil.Process, hub_port: str) -> bool:
    """A JupyterHub-managed service (it has JUPYTERHUB_SERVICE_NAME, user servers
    do not) whose hub API is on ``hub_port``."""
    try:
        env = proc.environ()
    except psutil.Error:
        return False
    api = env.get("JUPYTERHUB_API_URL", "")
    return "JUPYTERHUB_SERVICE_NAME" in env and f":{hub_port}/" in api


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


# every hub work directory of this session (servers' homes are under them)
_SESSION_WORKDIRS: list[Path] = []


def _user_pids(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except FileNotFoundError:
                pass
    return pids


@pytest.fixture(scope="session")
def test_unix_user():
    """An unprivileged account the user servers run as (Jupyter refuses root)."""
    if os.geteuid() != 0:
        pytest.skip("the hub tests spawn servers as another user: run as root")
    try:
        pw = pwd.getpwnam(TEST_UNIX_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", TEST_UNIX_USER],
            check=True,
            timeout=30,
        )
        pw = pwd.getpwnam(TEST_UNIX_USER)
    yield pw
    # backstop: end what this session's servers left behind (they run as this account,
    # in homes under this session's hub work directories; another pytest session on the
    # same machine may have servers of its own under this account)
    for pid in _user_pids(pw.pw_uid):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            if any(Path(cwd).is_relative_to(d) for d in _SESSION_WORKDIRS):
                os.kill(pid, signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError):
            pass


@pytest.fixture(scope="session")
def server_python(test_unix_user):
    """A python the server account may run: this venv's python may live under /root
    (0700), so make a venv of Debian's python3.11 whose site-packages is this venv's."""
    if sys.version_info[:2] != (3, 11) or not Path("/usr/bin/python3.11").exists():
        return sys.executable
    shim = Path(tempfile.mkdtemp(prefix="gridhub-test-python-"))
    subprocess.run(
        ["/usr/bin/python3.11", "-m", "venv", "--without-pip", str(shim)], check=True, timeout=60
    )
    site = shim / "lib" / "python3.11" / "site-packages"
    shutil.rmtree(site)
    site.symlink_to(Path(sys.prefix) / "lib" / "python3.11" / "site-packages")
    # jupyter finds lab assets and extension config under sys.prefix
    for sub in ("share", "etc"):
        if (Path(sys.prefix) / sub).exists():
            (shim / sub).symlink_to(Path(sys.prefix) / sub)
    for path in [shim, *shim.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o005 | (0o001 if path.is_dir() else 0))
    yield str(shim / "bin" / "python")
    shutil.rmtree(shim, ignore_errors=True)


class Hub:
    """One `jupyterhub -f hub_config/jupyterhub_config.py` process and its Traefik."""

    def __init__(
        self, workdir: Path, env: dict[str, str], name: str = "hub", config: Path = HUB_CONFIG
    ):
        self.config = config
        self.workdir = workdir
        _SESSION_WORKDIRS.append(Path(workdir).resolve())
        self.state = workdir / "state"
        self.homes = workdir / "homes"
        self.extra = workdir / "extra-config"
        self.port = free_port()
        self.public_url = f"http://127.0.0.1:{self.port}"
        self.api = self.public_url + "/hub/api"
        self.log_path = ARTIFACTS / "logs" / f"{name}-{self.port}.log"
        self.env = {
            "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(workdir),
            "LANG": "C.UTF-8",
            "GRIDHUB_PUBLIC_URL": self.public_url,
            "GRIDHUB_STATE_DIR": str(self.state),
            "GRIDHUB_HUB_BIND_URL": f"http://127.0.0.1:{free_port()}",
            "GRIDHUB_PROXY_API_URL": f"http://127.0.0.1:{free_port()}",
            "GRIDHUB_TOKEN_SERVICE_PORT": str(free_port()),
            # (hubs of other test sessions on this machine run one too)
            "GRIDHUB_MASTERCLASS_TEACHER_PORT": str(free_port()),
            "GRIDHUB_GATEWAY_URL": f"http://127.0.0.1:{free_port()}",
            "GRIDHUB_SPAWNER": "local",
            "GRIDHUB_LOCAL_UNIX_USER": TEST_UNIX_USER,
            "GRIDHUB_LOCAL_HOME_ROOT": str(self.homes),
            "GRIDHUB_EXTRA_CONFIG_DIR": str(self.extra),
            "GRIDHUB_START_TIMEOUT": "60",
            # servers at the hub's CPU priority: on a machine shared with other
            # work, servers below everything else start late (test_hub_teacher
            # checks the priority the settings give by default)
            "GRIDHUB_SERVER_NICE": "0",
            **env,
        }
        self.proc: subprocess.Popen | None = None
        self.extra.mkdir(parents=True, exist_ok=True)
        (self.extra / "50-test-admin.py").write_text(
            "c = get_config()  # noqa\n"
            "c.JupyterHub.cleanup_servers = True\n"
            "c.JupyterHub.services.append("
            f"{{'name': 'test-admin', 'api_token': {ADMIN_TOKEN!r}}})\n"
            "c.JupyterHub.load_roles.append({'name': 'test-admin', 'scopes': ['admin:users',"
            " 'admin:servers', 'admin:auth_state', 'tokens', 'read:metrics'],"
            " 'services': ['test-admin']})\n"
        )

    def start(self, timeout: float = 60) -> Hub:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "jupyterhub"), "-f", str(self.config)],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"hub exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            return httpx.get(self.api + "/", timeout=5).status_code == 200

        wait_for(ready, timeout, what="the hub behind traefik")
        return self

    def service_processes(self) -> list[psutil.Process]:
        """The hub's managed services (idle-culler, gridhub-pool, ...). JupyterHub
        starts them in sessions of their own and stops them only on a clean exit,
        so after a hub was killed they are found by their environment."""
        port = self.env["GRIDHUB_HUB_BIND_URL"].rpartition(":")[2].split("/")[0]
        return [p for p in psutil.process_iter() if _service_of(p, port)]

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, timeout=30)
            self.proc = None
        # what a killed (or timed-out) hub left running
        _end(self.service_processes())
        # the hub stops its Traefik on a clean shutdown; make sure of it (by pid)
        marker = str(self.state / "traefik.toml").encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if marker in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGTERM)
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                pass
        wait_for(lambda: not _port_open(self.port), 20, what="the public port to close")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.api,
            headers={"Authorization": f"token {ADMIN_TOKEN}"},
            timeout=30,
        )

    def user_model(self, name: str) -> dict:
        with self.admin() as c:
            r = c.get(f"/users/{name}")
            r.raise_for_status()
            return r.json()

    def wait_server_ready(self, name: str, timeout: float = 90) -> dict:
        def ready():
            server = self.user_model(name)["servers"].get("")
            return server if server and server.get("ready") else None

        return wait_for(ready, timeout, interval=1, what=f"server of {name}")

    def home(self, name: str) -> Path:
        return self.homes / name


@pytest.fixture
def hub_factory(test_unix_user, server_python):
    hubs: list[Hub] = []
    dirs: list[Path] = []

    def make(
        env: dict[str, str] | None = None,
        name: str = "hub",
        workdir: Path | None = None,
        config: Path = HUB_CONFIG,
    ):
        if workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix="gridhub-it-"))
            workdir.chmod(0o755)  # the server account must reach its home under it
            dirs.append(workdir)
        env = {"GRIDHUB_LOCAL_PYTHON": server_python, **(env or {})}
        hub = Hub(workdir, env, name=name, config=config)
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        hub.stop()
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Debian chromium driven by Playwright, closed on exit."""
    with launched() as b:
        yield b


def login_form(client: httpx.Client, username: str, password: str) -> httpx.Response:
    """Log in through the hub's HTML form like a browser (xsrf cookie + field)."""
    page = client.get("/hub/login")
    page.raise_for_status()
    # the hub's (a browser that opened its server also holds the server's, at /user/...)
    xsrf = client.cookies.get("_xsrf", path="/hub/")
    return client.post(
        "/hub/login",
        data={"username": username, "password": password, "_xsrf": xsrf},
        follow_redirects=False,
    )


def execute(ws_url: str, token: str, user: str, code: str, timeout: float = 120) -> str:
    """Run ``code`` on a kernel over its websocket channels (as JupyterLab
    does); return its text/plain result, fail on a traceback."""
    import uuid

    import websocket  # websocket-client

    session = uuid.uuid4().hex
    ws = websocket.create_connection(
        f"{ws_url}?session_id={session}", header=[f"Authorization: token {token}"], timeout=timeout
    )
    msg_id = uuid.uuid4().hex
    header = {"msg_id": msg_id, "msg_type": "execute_request", "username": user,
              "session": session, "version": "5.3", "date": "2026-01-01T00:00:00Z"}  # fmt: skip
    ws.send(json.dumps({"header": header, "parent_header": {}, "metadata": {}, "buffers": [],
                        "content": {"code": code, "silent": False, "store_history": True},
                        "channel": "shell"}))  # fmt: skip
    try:
        result = None
        while True:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "execute_result":
                result = msg["content"]["data"]["text/plain"]
            elif msg["msg_type"] == "error":
                raise AssertionError(f"the cell raised: {msg['content']['traceback']}")
            elif msg["msg_type"] == "execute_reply":
                assert msg["content"]["status"] == "ok", msg["content"]
                if result is not None:
                    return result
            elif msg["msg_type"] == "status" and result is not None:
                return result
    finally:
        ws.close()


class OIDCMock:
    """oidc-provider-mock (a stand-in for INDIGO IAM) as a subprocess on loopback."""

    def __init__(self, token_max_age: int = 3600):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = ARTIFACTS / "logs" / f"oidc-mock-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "oidc_provider_mock",
                "--port",
                str(self.port),
                "--token-max-age",
                str(token_max_age),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for(
            lambda: httpx.get(self.url + "/.well-known/openid-configuration", timeout=5).is_success,
            30,
            what="oidc-provider-mock",
        )

    def set_user(self, sub: str, claims: dict) -> None:
        r = httpx.put(f"{self.url}/users/{sub}", json=claims, timeout=10)
        assert r.status_code == 204, r.text

    def userinfo_ok(self, token: str) -> bool:
        r = httpx.get(
            self.url + "/userinfo", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        return r.status_code == 200

    def stop(self) -> None:
        _stop(self.proc)


def dump(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)
