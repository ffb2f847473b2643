"""Kernels of a local server at the server's CPU priority (gridhub.hub.lowpriority).

The server passes ``--MappingKernelManager.kernel_manager_class`` to this
class (gridhub.hub.config, local spawner only): docker servers' kernels are in
their container's cgroup already."""

from __future__ import annotations

import os

from jupyter_server.services.kernels.kernelmanager import ServerKernelManager

from .lowpriority import AUTOGROUP, ENV


class LowPriorityKernelManager(ServerKernelManager):
    """Kernels of a local server: the server's nice (inherited), and the same
    for the session each kernel gets (jupyter_client starts it with setsid)."""

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        cmd = super().format_kernel_cmd(extra_arguments)
        nice = os.environ.get(ENV, "")
        if not nice.isdigit() or not int(nice):
            return cmd
        return ["sh", "-c", f'{AUTOGROUP}; exec "$@"', "sh", nice, *cmd]
