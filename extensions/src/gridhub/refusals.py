"""A refused dask-gateway call must not hang the process's next one.

When a GatewayCluster cannot start or connect (a limit, a bad option, DIRAC
down, another user's cluster), the exception dask-gateway raises holds, in its
traceback, the frames of ``Gateway.sync`` and so the failed cluster and its
own Gateway, in a reference cycle (a frame holds the future that holds the
exception). Python's cyclic collector frees such a cycle in whatever thread
happens to allocate; when that is the client's IO-loop thread,
``Gateway.__del__`` calls ``close()``, which waits for that same loop: the
loop deadlocks and every later call of the process on it hangs (seen in a CI
run: a test hung in ``cluster.shutdown()`` after a refused ``new_cluster``).

``release(exc)`` drops the tracebacks: the failed objects are then freed at
once by reference counting, in the thread that got the error, where
``close()`` works. GridHub's own client calls (gridhub.cluster.get_cluster,
gridhub.DiracCluster) do it before the error reaches the user.
"""

from __future__ import annotations

import gc


def release(exc: BaseException) -> None:
    """Drop the tracebacks of ``exc`` and of its causes and contexts, then
    collect, here: what a failed dask-gateway call left behind is freed in
    this thread, never by the collector on the client's IO-loop thread."""
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        e = pending.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        e.__traceback__ = None
        pending += [x for x in (e.__cause__, e.__context__) if x is not None]
    gc.collect()
