"""BulkSubmitter: worker JDLs asked for together go to DiracX in few calls."""

import asyncio

import pytest
from gridhub.gateway.submission import BulkSubmitter


class FakeDiracX:
    """Records each submission call; job IDs count up as DiracX's do."""

    def __init__(self, fail: Exception | None = None, delay: float = 0.0) -> None:
        self.calls: list[list[str]] = []
        self.killed: list[int] = []
        self.fail = fail
        self.delay = delay
        self.next_id = 1

    async def submit(self, jdls: list[str]) -> list[int]:
        self.calls.append(jdls)
        await asyncio.sleep(self.delay)
        if self.fail:
            raise self.fail
        ids = list(range(self.next_id, self.next_id + len(jdls)))
        self.next_id += len(jdls)
        return ids

    async def kill(self, job_ids: list[int]) -> None:
        self.killed += job_ids


async def scale(n: int, dx: FakeDiracX) -> list[int]:
    bulk = BulkSubmitter(dx.submit, dx.kill)
    return await asyncio.gather(*(bulk.submit(f'[JobName = "w{i}";]') for i in range(n)))


def test_25_at_once_make_two_calls_and_each_worker_gets_its_own_job():
    dx = FakeDiracX()
    ids = asyncio.run(scale(25, dx))
    assert [len(c) for c in dx.calls] == [20, 5]
    assert ids == list(range(1, 26))  # worker i got the job of its own JDL
    assert [jdl for call in dx.calls for jdl in call] == [f'[JobName = "w{i}";]' for i in range(25)]


def test_one_worker_alone_is_one_call():
    dx = FakeDiracX()
    assert asyncio.run(scale(1, dx)) == [1]
    assert len(dx.calls) == 1


def test_a_failed_call_reaches_every_caller_with_its_reason():
    dx = FakeDiracX(fail=RuntimeError("DiracX said no"))
    with pytest.raises(RuntimeError, match="DiracX said no"):
        asyncio.run(scale(3, dx))
    assert len(dx.calls) == 1


def test_a_job_whose_worker_gave_up_is_killed_not_orphaned():
    async def main() -> None:
        dx = FakeDiracX(delay=0.2)
        bulk = BulkSubmitter(dx.submit, dx.kill)
        waiting = asyncio.create_task(bulk.submit("[a]"))
        kept = asyncio.create_task(bulk.submit("[b]"))
        await asyncio.sleep(0.1)  # the call is on its way
        waiting.cancel()
        assert await kept == 2
        await bulk.close()
        assert dx.killed == [1]

    asyncio.run(main())
