"""Shared parts of the benchmarks: results, tables, resource sampling, and a
student's path through a real GridHub (login, server, cell) over HTTPS.

The processes come from the integration-test helpers (tests/integration),
imported, not copied. Import this module before anything imports aiohttp:
it makes the facility's self-signed certificate trusted (SSL_CERT_FILE).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import json
import os
import platform
import pwd
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("GRIDHUB_BENCH_RESULTS", ROOT / "bench" / "results"))
# the harness modules, and the helpers of every tier they import (headless_chromium)
sys.path[:0] = [str(ROOT / "tests" / "integration"), str(ROOT / "tests")]

from processes import facility_tls  # noqa: E402

TLS = facility_tls()  # before aiohttp (dask-gateway) builds its SSL context

import httpx  # noqa: E402
import psutil  # noqa: E402

# ------------------------------------------------------------------ numbers


def summary(xs: Iterable[float]) -> dict[str, float | int | None]:
    xs = sorted(xs)
    if not xs:
        return {"n": 0, "p50": None, "p95": None, "min": None, "max": None}
    return {
        "n": len(xs),
        "p50": statistics.median(xs),
        # nearest rank: with 10 samples p95 is the largest
        "p95": xs[min(len(xs) - 1, -(-95 * len(xs) // 100) - 1)],
        "min": xs[0],
        "max": xs[-1],
    }


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "shared": "2-core machine shared with other engineers' builds and tests",
    }


def versions(*packages: str) -> dict[str, str]:
    out = {}
    for p in packages:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "absent"
    traefik = Path(sys.executable).parent / "traefik"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        text = subprocess.run(
            [str(traefik), "version"], capture_output=True, text=True, timeout=10
        ).stdout
        out["traefik"] = re.search(r"Version:\s*(\S+)", text).group(1)
    return out


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def print_table(title: str, headers: list[str], rows: list[list]) -> None:
    def cell(v) -> str:
        if v is None:
            return "-"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        print("  ".join(f"{h:>12}" for h in headers))
        for r in rows:
            print("  ".join(f"{cell(v):>12}" for v in r))
        return
    table = Table(title=title)
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*(cell(v) for v in r))
    Console(width=140).print(table)


def print_resources_and_failures(resources: dict, failures: list[str]) -> None:
    """The Usage report as a table, then each distinct failure with its count."""
    print_table(
        "resources during the run",
        ["processes", "CPU s", "peak RSS MB", "peak procs"],
        [
            [g, r["cpu_seconds"], r["peak_rss_mb"], r["peak_processes"]]
            for g, r in resources.items()
        ],
    )
    for e in sorted(set(failures)):
        print(f"failure x{failures.count(e)}: {e}")


def gc_off_the_loop() -> None:
    """Turn off automatic garbage collection; the caller runs gc.collect()
    between measurements. dask_gateway's Gateway.__del__ calls close(), which
    waits on the shared event loop: when the cyclic GC happened to run it on
    that loop's own thread, the benchmark hung for good (seen here)."""
    gc.disable()

    def quiet(u) -> None:  # a second close() of an already closed Gateway: harmless
        if not (isinstance(u.exc_value, RuntimeError) and "Gateway.__del__" in repr(u.object)):
            sys.__unraisablehook__(u)

    sys.unraisablehook = quiet


def on_sigterm_unwind() -> None:
    """SIGTERM (e.g. `timeout`) unwinds like Ctrl-C, so finally blocks stop processes."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


# ------------------------------------------------------------------ CPU and memory


def tree(pid: int) -> list[psutil.Process]:
    """A process and its descendants (an empty list once it is gone)."""
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return ""


def working_in(directory: Path) -> list[psutil.Process]:
    """Processes whose working directory is under ``directory`` (a run's
    servers and kernels work in their homes under the run's directory)."""
    root = str(directory.resolve()) + os.sep
    found = []
    for p in psutil.process_iter():
        try:
            if (p.cwd() + os.sep).startswith(root):
                found.append(p)
        except psutil.Error:
            continue
    return found


class Usage:
    """CPU seconds and peak RSS per group of processes, sampled by a thread.

    ``groups`` maps a name to a callable returning the group's processes now.
    CPU counts from the start for processes that already ran then, from zero
    for new ones; a process that exits between samples loses its last
    interval, so the figures are lower bounds.
    """

    def __init__(
        self, groups: dict[str, Callable[[], list[psutil.Process]]], interval: float = 0.5
    ):
        self.groups, self.interval = groups, interval
        self.base: dict[int, float] = {}
        self.last: dict[str, dict[int, float]] = {g: {} for g in groups}
        self.peak_rss: dict[str, int] = dict.fromkeys(groups, 0)
        self.peak_procs: dict[str, int] = dict.fromkeys(groups, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self, first: bool = False) -> None:
        for g, group in self.groups.items():
            rss = n = 0
            try:
                procs = group()
            except psutil.Error:  # one vanished while listed: take the next sample
                continue
            for p in procs:
                try:
                    with p.oneshot():
                        t = p.cpu_times()
                        cpu = t.user + t.system
                        rss += p.memory_info().rss
                except psutil.Error:
                    continue
                n += 1
                if first:
                    self.base[p.pid] = cpu
                self.last[g][p.pid] = cpu
            self.peak_rss[g] = max(self.peak_rss[g], rss)
            self.peak_procs[g] = max(self.peak_procs[g], n)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Usage:
        self._sample(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def report(self) -> dict[str, dict]:
        return {
            g: {
                "cpu_seconds": round(
                    sum(c - self.base.get(pid, 0.0) for pid, c in self.last[g].items()), 1
                ),
                "peak_rss_mb": round(self.peak_rss[g] / 2**20, 1),
                "peak_processes": self.peak_procs[g],
            }
            for g in self.groups
        }


# ------------------------------------------------------------------ GridHub over HTTPS

import hub_fixtures  # noqa: E402
from hub_fixtures import ADMIN_TOKEN, HUB_CONFIG, Hub, login_form  # noqa: E402

BENCH_UNIX_USER = "gridhub-bench"  # not the tests' account: their teardown kills its processes
CODE = "bench-code-2026"


def bench_account() -> pwd.struct_passwd:
    """The unprivileged account every benchmark server runs as (Jupyter refuses root)."""
    if os.geteuid() != 0:
        sys.exit("the hub benchmarks start servers as another account: run as root")
    try:
        return pwd.getpwnam(BENCH_UNIX_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", BENCH_UNIX_USER],
            check=True,
            timeout=30,
        )
        return pwd.getpwnam(BENCH_UNIX_USER)


# the tests' fixture generator (a venv python the server account may run)
server_python = contextlib.contextmanager(hub_fixtures.server_python.__wrapped__)


class HttpsHub(Hub):
    """The tests' Hub, but public over HTTPS: Traefik (started by the hub)
    terminates TLS with the facility's certificate, as in a deployment."""

    def __init__(self, workdir: Path, env: dict[str, str], name: str, config: Path = HUB_CONFIG):
        super().__init__(workdir, env, name=name, config=config)
        self.public_url = f"https://127.0.0.1:{self.port}"
        self.api = self.public_url + "/hub/api"
        self.env["GRIDHUB_PUBLIC_URL"] = self.public_url
        self.tls_config = (
            f"c.JupyterHub.ssl_cert = {str(TLS.cert)!r}\nc.JupyterHub.ssl_key = {str(TLS.key)!r}\n"
        )
        (self.extra / "60-bench-tls.py").write_text("c = get_config()  # noqa\n" + self.tls_config)

    def traefik(self) -> list[psutil.Process]:
        return [p for p in tree(self.proc.pid)[1:] if _name(p) == "traefik"]

    def hub_only(self) -> list[psutil.Process]:
        return tree(self.proc.pid)[:1]

    def prestart(self, names: list[str], timeout: float, batch: int = 5) -> float:
        """Start the servers before the students come, ``batch`` at a time
        (what a warm pool filled at a steady rate would do), through the
        admin API; seconds until all are ready."""
        t0 = time.monotonic()
        with self.admin() as admin:
            admin.post("/users", json={"usernames": names}).raise_for_status()
            for i in range(0, len(names), batch):
                # each POST waits for its spawn up to the hub's slow_spawn_timeout: in parallel
                with ThreadPoolExecutor(batch) as pool:
                    for r in pool.map(
                        lambda n: admin.post(f"/users/{n}/server"), names[i : i + batch]
                    ):
                        r.raise_for_status()
                want = min(i + batch, len(names))
                while len(admin.get("/users", params={"state": "ready"}).json()) < want:
                    if len(admin.get("/users", params={"state": "active"}).json()) < want:
                        raise RuntimeError("a prestarted server failed: see the hub log")
                    if time.monotonic() - t0 > timeout:
                        raise TimeoutError(f"servers not ready in {timeout:.0f} s")
                    time.sleep(1)
        return time.monotonic() - t0

    def wait_ready(self, n: int, timeout: float) -> float:
        """Seconds until at least n servers are ready (the warm pool's seats)."""
        t0 = time.monotonic()
        with self.admin() as admin:
            while len(admin.get("/users", params={"state": "ready"}).json()) < n:
                if time.monotonic() - t0 > timeout:
                    raise TimeoutError(f"{n} servers not ready in {timeout:.0f} s")
                time.sleep(1)
        return time.monotonic() - t0

    def stop_servers(self, names: Iterable[str], timeout: float = 120) -> None:
        """Stop the servers through the API (a hub SIGTERMed with many servers
        may be killed before it has stopped them all)."""
        with self.admin() as admin:
            for name in names:
                admin.delete(f"/users/{name}/server")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                users = admin.get("/users", params={"state": "active"}).json()
                if not any(u["servers"] for u in users):
                    return
                time.sleep(1)


def workdir(prefix: str) -> Path:
    """A fresh directory the server account can traverse to its home."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def gridhub(workdir: Path, python: str, name: str, **env: str) -> HttpsHub:
    """GridHub in masterclass mode, its servers as the bench account."""
    workdir.mkdir(mode=0o755, parents=True, exist_ok=True)
    return HttpsHub(
        workdir,
        {
            "GRIDHUB_LOCAL_PYTHON": python,
            "GRIDHUB_LOCAL_UNIX_USER": BENCH_UNIX_USER,
            "GRIDHUB_MASTERCLASS_ACCESS_CODE": CODE,
            "GRIDHUB_CULL_IDLE_TIMEOUT": "0",
            **env,
        },
        name=name,
    )


def bare_hub(workdir: Path, python: str, name: str) -> HttpsHub:
    """A bare JupyterHub with the same spawner, auth and Traefik: the tests'
    BARE_CONFIG (tests/integration/test_hub_bench.py) served over HTTPS."""
    from test_hub_bench import BARE_CONFIG

    hub = gridhub(workdir, python, name)
    config = workdir / "bare_config.py"
    values = {"code": CODE, "user": BENCH_UNIX_USER, "token": ADMIN_TOKEN}
    config.write_text(BARE_CONFIG % values + hub.tls_config)
    hub.config = config
    hub.state.mkdir(mode=0o700, exist_ok=True)
    return hub


def _user_cookies(client: httpx.Client, name: str) -> dict[str, str]:
    """The cookies a browser sends to /user/<name>/ (the hub's _xsrf is at /hub/; the
    session id at /, which the server's token cache is keyed by)."""
    path = f"/user/{name}/"
    return {
        c.name: c.value for c in client.cookies.jar if path.startswith(c.path.rstrip("/") + "/")
    }


def _wait_spawn(client: httpx.Client, page: httpx.Response, deadline: float) -> None:
    """Follow the spawn-pending page's progress event stream, as its script does."""
    m = re.search(r'new EventSource\("([^"]+)"\)', page.text)
    if not m:
        raise RuntimeError(f"no progress stream on {page.url}")
    url = m.group(1).replace("&amp;", "&")
    timeout = httpx.Timeout(10, read=max(1.0, deadline - time.monotonic()))
    with client.stream("GET", url, timeout=timeout) as events:
        for line in events.iter_lines():
            if not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            if event.get("ready"):
                return
            if event.get("failed"):
                raise RuntimeError(f"spawn failed: {event.get('message')}")
    raise RuntimeError("progress stream ended before the server was ready")


def run_cell(
    client: httpx.Client,
    hub: Hub,
    name: str,
    code: str,
    timeout: float,
    notebook: str | None = None,
) -> str:
    """Execute ``code`` over the kernel websocket, as JupyterLab does; return the
    text/plain result. With ``notebook`` (a path in the server) the kernel is the
    notebook's session's, as when the student opens it in JupyterLab (the server
    starts one if the notebook has none); without it a new kernel (REST)."""
    import websocket

    base = f"/user/{name}/api"
    cookies = _user_cookies(client, name)
    xsrf = {"X-XSRFToken": cookies.get("_xsrf", "")}
    if notebook:
        session_model = {
            "path": notebook,
            "name": Path(notebook).name,
            "type": "notebook",
            "kernel": {"name": "python3"},
        }
        r = client.post(f"{base}/sessions", json=session_model, headers=xsrf)
        r.raise_for_status()
        kernel = r.json()["kernel"]["id"]
    else:
        r = client.post(f"{base}/kernels", json={"name": "python3"}, headers=xsrf)
        r.raise_for_status()
        kernel = r.json()["id"]
    session = uuid.uuid4().hex
    ws = websocket.create_connection(
        f"wss://127.0.0.1:{hub.port}{base}/kernels/{kernel}/channels?session_id={session}",
        header=["Cookie: " + "; ".join(f"{k}={v}" for k, v in cookies.items())],
        origin=hub.public_url,
        sslopt={"ca_certs": str(TLS.cert)},
        timeout=timeout,
    )
    msg_id = uuid.uuid4().hex
    ws.send(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "msg_type": "execute_request",
                    "username": name,
                    "session": session,
                    "date": dt.datetime.now(dt.UTC).isoformat(),
                    "version": "5.3",
                },
                "parent_header": {},
                "metadata": {},
                "content": {"code": code, "silent": False, "store_history": True},
                "channel": "shell",
                "buffers": [],
            }
        )
    )
    result = None
    try:
        while True:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if kind == "execute_result":
                result = msg["content"]["data"]["text/plain"]
            elif kind == "error":
                raise RuntimeError(f"cell raised {msg['content']['ename']}")
            elif kind == "execute_reply":
                if msg["content"]["status"] != "ok":
                    raise RuntimeError(f"cell status {msg['content']['status']}")
                if result is not None:
                    return result
            elif kind == "status" and msg["content"]["execution_state"] == "idle" and result:
                return result
    finally:
        ws.close()


def student(
    hub: HttpsHub, name: str, timeout: float, cell: str | None = None, notebook: str | None = None
) -> dict:
    """One student: log in with the code, start the server, open JupyterLab,
    optionally run a cell. Seconds since the login POST at each step, or the error."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    out: dict = {"user": name, "requests": []}
    sent: dict[int, float] = {}

    def on_response(r: httpx.Response) -> None:
        # each request as (method, path with the user's name as X, seconds to its headers)
        path = re.sub(r"/user/[^/]+", "/user/X", r.request.url.path)
        took = time.monotonic() - sent.pop(id(r.request), t0)
        out["requests"].append((r.request.method, path, round(took, 3)))

    hooks = {
        "request": [lambda req: sent.__setitem__(id(req), time.monotonic())],
        "response": [on_response],
    }
    try:
        with httpx.Client(
            base_url=hub.public_url, timeout=60, follow_redirects=True, event_hooks=hooks
        ) as c:
            r = login_form(c, name, CODE)
            if r.status_code != 302:
                raise RuntimeError(f"login answered {r.status_code}")
            out["login"] = time.monotonic() - t0
            # where the login sends the browser: a running (seat's) server, else
            # /hub/spawn, which waits a few s, then shows spawn-pending
            page = c.get(r.headers["location"])
            page.raise_for_status()
            if "/spawn-pending/" in page.url.path:
                _wait_spawn(c, page, deadline)
            elif page.url.path.startswith("/user/"):
                # a running server already: with the warm pool, a seat's
                name = out["seat"] = page.url.path.split("/")[2]
            lab = c.get(f"/user/{name}/lab")
            if lab.status_code != 200 or "jupyter-config-data" not in lab.text:
                raise RuntimeError(f"JupyterLab answered {lab.status_code} at {lab.url}")
            out["server_ready"] = time.monotonic() - t0
            if cell is not None:
                left = deadline - time.monotonic()
                out["result"] = run_cell(c, hub, name, cell, left, notebook=notebook)
                out["cell_result"] = time.monotonic() - t0
    except Exception as exc:  # a failure is a result: record it, go on
        out["error"] = f"{type(exc).__name__}: {exc}"[:300]
        out["failed_after"] = time.monotonic() - t0
    return out


def crowd(
    hub: HttpsHub,
    names: list[str],
    timeout: float,
    cell: str | None = None,
    notebook: str | None = None,
) -> list[dict]:
    """All students at once, each in its own thread (a browser each)."""
    results: list[dict] = [{}] * len(names)

    def one(i: int) -> None:
        results[i] = student(hub, names[i], timeout, cell, notebook)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(names))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results
