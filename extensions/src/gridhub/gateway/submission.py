"""Worker jobs submitted to DiracX in bulk.

dask-gateway starts each worker on its own (up to ``parallelism`` at once), so
submitting each job alone costs one DiracX call per worker: ``scale(40)``
would make 40 calls. DiracX takes a list of JDLs in one call (at most 20 from
a normal user), so the jobs one identity asks for within a short window go
together, each keeping its own JDL (its worker's name in it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

#: DiracX refuses more than this many jobs in one call from a normal user
#: (diracx.logic.jobs.submission.MAX_PARAMETRIC_JOBS)
MAX_JOBS_PER_CALL = 20


class BulkSubmitter:
    """Collects JDLs for ``linger`` seconds after the first (or until
    ``max_jobs``), submits them in one call, and hands each caller its job ID.

    A caller that stops waiting (its worker start timed out or was cancelled)
    after its job went in gets no ID; such jobs go to ``on_orphans`` so that
    they are killed rather than left running without a worker.
    """

    def __init__(
        self,
        submit: Callable[[list[str]], Awaitable[list[int]]],
        on_orphans: Callable[[list[int]], Awaitable[None]],
        *,
        linger: float = 0.05,
        max_jobs: int = MAX_JOBS_PER_CALL,
    ) -> None:
        self._submit = submit
        self._on_orphans = on_orphans
        self.linger = linger
        self.max_jobs = max_jobs
        self._pending: list[tuple[str, asyncio.Future[int]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    async def submit(self, jdl: str) -> int:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        self._pending.append((jdl, fut))
        if len(self._pending) >= self.max_jobs:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.linger, self._flush)
        return await fut

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending[: self.max_jobs], self._pending[self.max_jobs :]
        if self._pending:  # (more than max_jobs arrived at once)
            self._timer = asyncio.get_running_loop().call_later(0, self._flush)
        task = asyncio.create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[str, asyncio.Future[int]]]) -> None:
        try:
            job_ids = await self._submit([jdl for jdl, _ in batch])
        except Exception as exc:  # every caller of the batch gets the reason
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        orphans = []
        for (_, fut), job_id in zip(batch, job_ids, strict=True):
            if fut.done():  # cancelled while the call was on its way
                orphans.append(job_id)
            else:
                fut.set_result(job_id)
        if orphans:
            await self._on_orphans(orphans)

    async def close(self) -> None:
        """Let the calls on their way finish (pending callers are cancelled)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for _, fut in self._pending:
            fut.cancel()
        self._pending = []
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
