"""User servers and their kernels run at a lower CPU priority than the hub
(issue 22): cpu_shares for DockerSpawner containers, nice and the session's
autogroup nice for local servers and their kernels."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from gridhub.hub.kernelpriority import LowPriorityKernelManager
from gridhub.hub.lowpriority import ENV, cpu_shares, server_cmd
from gridhub.hub.settings import SettingsError, load_settings
from hub_build import HUB_CONFIG, build

AUTOGROUP = Path("/proc/self/autogroup")
# what a started process reports: its nice, and its session's autogroup nice
REPORT = [
    sys.executable,
    "-c",
    "import os, pathlib; p = pathlib.Path('/proc/self/autogroup');"
    " print(os.nice(0), p.read_text().split()[-1] if p.exists() else '-')",
]


def started(cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """Start ``cmd`` as JupyterHub starts a server and jupyter_client a kernel:
    in a session of its own."""
    out = subprocess.run(
        cmd, capture_output=True, text=True, check=True, start_new_session=True, env=env
    ).stdout.split()
    return int(out[0]) - os.nice(0), out[1]


def test_docker_servers_weigh_what_a_process_at_their_nice_does(tmp_path):
    c = build({}, tmp_path / "default")
    assert c.DockerSpawner.extra_host_config == {"cpu_shares": 110}  # nice 10, of 1024
    c = build({"GRIDHUB_SERVER_NICE": "0"}, tmp_path / "same")
    assert c.DockerSpawner.extra_host_config == {"cpu_shares": 1024}
    assert cpu_shares(19) == 15


def test_local_servers_and_their_kernels_start_lower(tmp_path):
    c = build({"GRIDHUB_SPAWNER": "local"}, tmp_path / "local")
    assert c.Spawner.environment[ENV] == "10"
    assert (
        "--MappingKernelManager.kernel_manager_class="
        "gridhub.hub.kernelpriority.LowPriorityKernelManager" in c.Spawner.args
    )
    assert c.Spawner.cmd[-3:] == [sys.executable, "-m", "jupyterhub.singleuser"]
    # the server command as the hub starts it: nice 10 below the hub, and its
    # own session (autogroup) too
    nice, group = started(server_cmd(10, REPORT))
    assert nice == 10
    if AUTOGROUP.exists():
        assert group == "10"


def test_local_kernels_take_the_servers_priority_into_their_session():
    km = LowPriorityKernelManager()
    km.kernel_spec_manager  # noqa: B018  (the native kernel spec)
    cmd = km.format_kernel_cmd()
    assert cmd[0] != "sh" and "ipykernel_launcher" in " ".join(cmd)  # nice 0: as it was
    os.environ[ENV] = "7"
    try:
        cmd = km.format_kernel_cmd()
    finally:
        del os.environ[ENV]
    head = cmd[: cmd.index("7") + 1]
    assert head[:2] == ["sh", "-c"], cmd
    # the same wrapper around a reporter, started in a session of its own
    nice, group = started([*head, *REPORT])
    assert nice == 0  # a kernel inherits the server's nice; only its session needs it
    if AUTOGROUP.exists():
        assert group == "7"


def test_server_nice_out_of_range_is_named():
    with pytest.raises(SettingsError, match="GRIDHUB_SERVER_NICE"):
        load_settings({"GRIDHUB_SERVER_NICE": "20"})


def test_compose_glue_keeps_the_servers_cpu_shares(tmp_path, monkeypatch):
    """The compose facility's hub config (hub_config + images/hub/jupyterhub_config.d)
    as the hub image loads it: the glue's own host config does not drop cpu_shares
    (it did: seen as CpuShares 0 on the seat's container in the compose e2e)."""
    from traitlets.config.loader import PyFileConfigLoader

    for key in [k for k in os.environ if k.startswith(("GRIDHUB_", "FACILITY_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("GRIDHUB_STATE_DIR", str(tmp_path))
    monkeypatch.setenv(
        "GRIDHUB_EXTRA_CONFIG_DIR", str(HUB_CONFIG.parent / "images/hub/jupyterhub_config.d")
    )
    monkeypatch.setenv("FACILITY_PROJECT", "gridhubunit")
    c = PyFileConfigLoader("jupyterhub_config.py", path=str(HUB_CONFIG)).load_config()
    host = c.DockerSpawner.extra_host_config
    assert host["cpu_shares"] == 110 and host["init"] is True, host
