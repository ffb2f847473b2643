"""User servers and their kernels at a lower CPU priority than the hub.

In a masterclass fifty servers and kernels load and compute in the same minute
on a few cores; the hub (logins, spawns, the proxy's routes) must not queue
behind them. Idle CPU stays everyone's: a priority only decides who waits when
the cores are all busy. One setting, ``server_nice`` (0-19), for both spawners:

- DockerSpawner: the container's ``cpu_shares``, the cgroup weight Linux gives
  a task of that nice value (its own table), so a container at nice 10 weighs
  what a process at nice 10 does; kernels run inside it.
- local processes: the server runs under ``nice -n``, and its kernels inherit
  that. Linux with ``sched_autogroup_enabled`` (the default) also weighs each
  session as a whole, and JupyterHub starts every server, and the server every
  kernel, in a session of its own: each would weigh as much as the hub's.
  So each also sets its session's (autogroup's) nice, before it execs
  (kernels: gridhub.hub.kernelpriority, in the server; this module is the hub's).
"""

from __future__ import annotations

ENV = "GRIDHUB_SERVER_NICE"

# Linux's sched_prio_to_weight for nice 0..19 (kernel/sched/core.c)
_TABLE = "1024 820 655 526 423 335 272 215 172 137 110 87 70 56 45 36 29 23 18 15"
WEIGHT = tuple(int(w) for w in _TABLE.split())

# $1: the nice value; the rest: the command. No /proc/self/autogroup (no
# autogroups in this kernel): the task's nice alone does it.
AUTOGROUP = '{ echo "$1" > /proc/self/autogroup; } 2>/dev/null; n=$1; shift'


def cpu_shares(nice: int) -> int:
    """Docker's cpu_shares for a container of user code at ``nice``."""
    return WEIGHT[nice]


def server_cmd(nice: int, cmd: list[str]) -> list[str]:
    """``cmd`` (a local server) at ``nice`` below its starter, in its own session's
    autogroup too."""
    if not nice:
        return cmd
    return ["sh", "-c", f'{AUTOGROUP}; exec nice -n "$n" "$@"', "sh", str(nice), *cmd]
