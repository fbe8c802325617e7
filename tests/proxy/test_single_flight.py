"""SingleFlight: one run per key at a time, its outcome shared, a cancelled leader replaced."""

from __future__ import annotations

import anyio
import pytest

from regcache.proxy.pull.single_flight import SingleFlight

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_concurrent_callers_share_one_run_and_its_result():
    flight: SingleFlight[str] = SingleFlight()
    runs = 0
    release = anyio.Event()

    async def work() -> str:
        nonlocal runs
        runs += 1
        await release.wait()
        return f"result {runs}"

    results: list[str] = []

    async def call() -> None:
        results.append(await flight.run("key", work))

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        assert len(flight) == 1
        release.set()
    assert runs == 1 and results == ["result 1"] * 8
    assert len(flight) == 0
    assert await flight.run("key", work) == "result 2"  # a later call runs anew


async def test_other_keys_run_on_their_own():
    flight: SingleFlight[str] = SingleFlight()
    release = anyio.Event()

    async def work(key: str) -> str:
        await release.wait()
        return key

    results: dict[str, str] = {}

    async def call(key: str) -> None:
        results[key] = await flight.run(key, lambda: work(key))

    async with anyio.create_task_group() as tg:
        for key in "abc":
            tg.start_soon(call, key)
        await anyio.wait_all_tasks_blocked()
        assert len(flight) == 3
        release.set()
    assert results == {"a": "a", "b": "b", "c": "c"}


async def test_an_error_reaches_every_waiting_caller():
    flight: SingleFlight[str] = SingleFlight()
    release = anyio.Event()
    runs = 0

    async def work() -> str:
        nonlocal runs
        runs += 1
        await release.wait()
        raise LookupError("upstream says no")

    errors: list[str] = []

    async def call() -> None:
        try:
            await flight.run("key", work)
        except LookupError as exc:
            errors.append(str(exc))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        release.set()
    assert runs == 1 and errors == ["upstream says no"] * 3


async def test_a_cancelled_leader_is_replaced_by_a_waiting_caller():
    flight: SingleFlight[str] = SingleFlight()
    runs = 0
    release = anyio.Event()

    async def work() -> str:
        nonlocal runs
        runs += 1
        await release.wait()
        return f"run {runs}"

    follower_result: list[str] = []

    async def follower() -> None:
        follower_result.append(await flight.run("key", work))

    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as leader_scope:
            async with anyio.create_task_group() as leader_group:
                leader_group.start_soon(flight.run, "key", work)
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(follower)
                await anyio.wait_all_tasks_blocked()
                leader_scope.cancel()  # the leader's client went away
        await anyio.wait_all_tasks_blocked()
        release.set()
    assert runs == 2 and follower_result == ["run 2"]
