"""Every hub-managed service of GridHub stops with the hub (gridhub.hub.service).

The hub stops its managed services with SIGTERM; when the hub itself is killed
(SIGKILL, the OOM killer) nothing stops them, and a service left behind holds
its port so the next hub's copy of it cannot start. Each service here is
started the way the hub starts it (its module's main, JUPYTERHUB_SERVICE_* in
the environment) by a stand-in parent that is then killed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from gridhub.ports import free_port
from processes import wait_for

pytestmark = pytest.mark.integration


def service_args(name: str, tmp) -> list[str]:
    return {
        "tokenservice": [],
        "storagetokens": [
            "--issuer=https://hub.invalid/services/gridhub-storage",
            "--audience=https://lake.invalid",
            f"--key-file={tmp / 'key.pem'}",
        ],
        "teacher": [
            f"--students-file={tmp / 'students.json'}",
            f"--notebooks-dir={tmp}",
            f"--versions-dir={tmp}",
        ],
        "monitoring": [
            "--prometheus-url=http://127.0.0.1:9",
            "--gateway-url=http://127.0.0.1:9",
            f"--token-file={tmp / 'token'}",
        ],
    }[name]


# The parent stands in for the hub: it starts the service, prints its pid,
# and sleeps until it is killed.
PARENT = """
import subprocess, sys, time
p = subprocess.Popen(sys.argv[1:])
print(p.pid, flush=True)
time.sleep(3600)
"""


def service_env(name: str, port: int) -> dict[str, str]:
    """What the hub gives a managed service (no hub answers at its API)."""
    return {
        **os.environ,
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}",
        "JUPYTERHUB_SERVICE_PREFIX": f"/services/{name}/",
        "JUPYTERHUB_API_URL": "http://127.0.0.1:9/hub/api",
        "JUPYTERHUB_API_TOKEN": "unused",
        "JUPYTERHUB_CLIENT_ID": f"service-{name}",
    }


def wait_listening(port: int, proc_alive, timeout: float = 60) -> None:
    def accepts() -> bool:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True

    wait_for(accepts, timeout, f"the service on {port}", retry=(OSError,), alive=proc_alive)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by init) counts as gone
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("name", ["tokenservice", "storagetokens", "teacher", "monitoring"])
def test_a_service_stops_when_the_hub_is_killed(name, tmp_path):
    port = free_port()
    env = service_env(name, port)
    cmd = [sys.executable, "-m", f"gridhub.hub.{name}", *service_args(name, tmp_path)]
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, *cmd], env=env, stdout=subprocess.PIPE, text=True
    )
    pid = int(parent.stdout.readline())
    try:
        wait_listening(port, lambda: alive(pid))
        parent.kill()  # the hub dies without stopping it
        parent.wait()
        deadline = time.monotonic() + 30
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not alive(pid), f"{name} kept running (and holding port {port}) after the hub died"
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_service_stops_cleanly_on_the_hubs_signal(sig, tmp_path):
    port = free_port()
    env = service_env("teacher", port)
    p = subprocess.Popen(
        [sys.executable, "-m", "gridhub.hub.teacher", *service_args("teacher", tmp_path)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_listening(port, lambda: p.poll() is None)
        p.send_signal(sig)
        assert p.wait(timeout=30) == 0
        assert "Traceback" not in p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
