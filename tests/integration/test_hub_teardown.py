"""A hub that dies (SIGKILL) leaves no managed service behind once stopped.

JupyterHub stops its services (idle-culler, gridhub-pool) only on a clean
exit; the fixture's Hub.stop() ends what a killed hub left running.
"""

from __future__ import annotations

import psutil

try:
    from .hub_fixtures import *  # noqa: F403
    from .test_hub_masterclass import masterclass_hub
except ImportError:
    from hub_fixtures import *  # noqa: F403
    from test_hub_masterclass import masterclass_hub


from processes import wait_for


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def service_names(hub) -> set[str]:
    return {p.environ().get("JUPYTERHUB_SERVICE_NAME") for p in hub.service_processes()}


def test_killed_hub_leaves_no_service_running(hub_factory):
    hub = masterclass_hub(
        hub_factory,
        "teardown",
        GRIDHUB_CULL_IDLE_TIMEOUT="600",
        GRIDHUB_MASTERCLASS_POOL_SIZE="1",
    )
    wait_for(
        lambda: {"idle-culler", "gridhub-pool"} <= service_names(hub),
        60,
        what="the idle-culler and gridhub-pool services",
    )
    services = hub.service_processes()
    hub.proc.kill()  # a crash: JupyterHub cleans nothing up
    hub.proc.wait(10)
    assert all(alive(p) for p in services), "the services outlive a killed hub"

    hub.stop()

    assert not [p for p in services if alive(p)]
    assert not hub.service_processes()
