"""plait.Limiter against anyio's and Trio's own CapacityLimiter tests.

The tests below restate, for :class:`plait.Limiter`, what anyio's
``tests/test_synchronization.py::TestCapacityLimiter`` and Trio's
``test_sync.py`` check of their capacity limiters (the generic lock tests
and the regression test for Trio issue #548 included), on asyncio, uvloop
and Trio. Where plait differs on purpose, the test says so and checks
plait's behaviour:

- slots taken with ``acquire()`` / ``acquire_nowait()`` belong to nobody in
  particular (any thread may release them, a task may hold several), so
  "borrow twice" and "release without holding" are checked through the
  ``*_on_behalf_of`` methods, which do record a borrower;
- a whole float such as ``3.0`` is accepted as ``3`` (plait always took
  it), and ``None`` means no limit.
"""

from __future__ import annotations

import asyncio
import gc
import math
import threading
import weakref
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import pytest
import sniffio

import plait

pytestmark = pytest.mark.anyio

Backend = tuple[str, dict[str, Any]]


def backend_name(anyio_backend: Backend) -> str:
    """The ``plait.run`` name of an ``anyio_backend`` fixture value."""
    name, options = anyio_backend
    return "uvloop" if options.get("use_uvloop") else name


# -- construction and the total ---------------------------------------------------


@pytest.mark.parametrize("bad", [1.5, "2", True, math.nan, object()])
def test_a_wrong_type_is_a_type_error(bad: object) -> None:
    with pytest.raises(TypeError, match="must be"):
        plait.Limiter(bad)  # type: ignore[arg-type]
    limiter = plait.Limiter(2)
    with pytest.raises(TypeError):
        limiter.total_tokens = bad  # type: ignore[assignment]
    assert limiter.total_tokens == 2


@pytest.mark.parametrize("bad", [-1, -10, -math.inf])
def test_a_negative_total_is_a_value_error(bad: float) -> None:
    with pytest.raises(ValueError, match=">= 0") as info:
        plait.Limiter(bad)
    assert isinstance(info.value, plait.ConfigError)
    limiter = plait.Limiter(2)
    with pytest.raises(ValueError, match=">= 0"):
        limiter.total_tokens = bad
    assert limiter.total_tokens == 2


def test_totals_accepted_outside_an_event_loop() -> None:
    assert plait.Limiter(0).total_tokens == 0
    assert plait.Limiter(total_tokens=1).total_tokens == 1
    assert plait.Limiter(math.inf).total_tokens == math.inf
    assert plait.Limiter(float("inf")).total_tokens == math.inf
    assert plait.Limiter(None).total_tokens == math.inf
    assert plait.Limiter().total_tokens == math.inf
    # Differences kept on purpose: a whole float, and the former keyword.
    assert plait.Limiter(3.0).total_tokens == 3
    assert type(plait.Limiter(3.0).total_tokens) is int
    assert plait.Limiter(total=4).total_tokens == 4
    with pytest.raises(TypeError, match="not both"):
        plait.Limiter(1, total=2)
    limiter = plait.Limiter(1)
    limiter.total_tokens = 0
    assert limiter.total_tokens == 0
    limiter.total_tokens = float("inf")
    assert limiter.total_tokens == math.inf


def test_a_limiter_made_outside_an_event_loop_works_in_one(
    anyio_backend: Backend,
) -> None:
    limiter = plait.Limiter(1)
    limiter.total_tokens = 2
    stats = limiter.statistics()
    assert stats == anyio.CapacityLimiterStatistics(
        borrowed_tokens=0, total_tokens=2, borrowers=(), tasks_waiting=0
    )

    async def use_limiter() -> None:
        async with limiter:
            assert limiter.borrowed_tokens == 1

    name, options = anyio_backend
    anyio.run(use_limiter, backend=name, backend_options=options)
    assert limiter.borrowed_tokens == 0


# -- borrowing ---------------------------------------------------------------------


async def test_borrow_counts() -> None:
    limiter = plait.Limiter(2)
    assert limiter.total_tokens == 2
    assert limiter.available_tokens == 2
    assert limiter.borrowed_tokens == 0
    async with limiter:
        assert limiter.total_tokens == 2
        assert limiter.available_tokens == 1
        assert limiter.borrowed_tokens == 1
    assert limiter.available_tokens == 2


async def test_unlimited() -> None:
    limiter = plait.Limiter(math.inf)
    repr(limiter)
    assert limiter.available_tokens == math.inf
    with pytest.raises(RuntimeError):
        limiter.release()
    limiter.acquire_nowait()
    assert limiter.borrowed_tokens == 1
    assert limiter.available_tokens == math.inf
    limiter.release()


async def test_the_old_names_are_aliases() -> None:
    limiter = plait.Limiter(2, "db")
    assert limiter.try_acquire()
    assert limiter.borrowed == limiter.borrowed_tokens == 1
    assert limiter.total == limiter.total_tokens == 2
    limiter.total = 1
    assert limiter.total_tokens == 1
    assert not limiter.try_acquire()
    assert limiter.waiting == limiter.statistics().tasks_waiting == 0
    limiter.release()
    assert limiter.borrowed == 0


async def test_acquire_nowait_raises_would_block() -> None:
    limiter = plait.Limiter(1)
    limiter.acquire_nowait()
    with pytest.raises(anyio.WouldBlock):
        limiter.acquire_nowait()
    assert not limiter.try_acquire()
    limiter.release()
    limiter.acquire_nowait()
    limiter.release()


async def test_acquire_nowait_in_another_task_raises_would_block() -> None:
    async def borrower() -> None:
        limiter.acquire_nowait()

    limiter = plait.Limiter(1)
    limiter.acquire_nowait()
    with pytest.RaisesGroup(pytest.RaisesExc(anyio.WouldBlock)):
        async with anyio.create_task_group() as tg:
            tg.start_soon(borrower)
    limiter.release()


async def test_anonymous_slots_may_be_held_twice_and_released_anywhere() -> None:
    # anyio and Trio refuse a second acquire() by the same task; plait's
    # acquire() records no borrower, so that a worker thread may release the
    # slot its task took. The *_on_behalf_of methods keep anyio's rules.
    limiter = plait.Limiter(2)
    await limiter.acquire()
    await limiter.acquire()
    assert limiter.borrowed_tokens == 2
    assert limiter.statistics().borrowers == ()
    await anyio.to_thread.run_sync(limiter.release)
    limiter.release()
    with pytest.raises(RuntimeError, match="released more often"):
        limiter.release()


async def test_on_behalf_of() -> None:
    limiter = plait.Limiter(2)
    with pytest.raises(RuntimeError, match="isn't holding"):
        limiter.release_on_behalf_of("nobody")
    limiter.acquire_on_behalf_of_nowait("me")
    stats = limiter.statistics()
    assert stats.borrowed_tokens == 1
    assert stats.total_tokens == 2
    assert stats.borrowers == ("me",)
    assert stats.tasks_waiting == 0

    # A borrower can't hold two slots.
    with pytest.raises(RuntimeError, match="already holding"):
        limiter.acquire_on_behalf_of_nowait("me")
    with pytest.raises(RuntimeError, match="already holding"):
        await limiter.acquire_on_behalf_of("me")
    assert limiter.borrowed_tokens == 1

    await limiter.acquire_on_behalf_of("someone")
    assert limiter.borrowed_tokens == 2
    with pytest.raises(anyio.WouldBlock):
        limiter.acquire_on_behalf_of_nowait("third party")
    assert set(limiter.statistics().borrowers) == {"me", "someone"}

    # release() gives back only anonymous slots, never a borrower's.
    with pytest.raises(RuntimeError, match="release_on_behalf_of"):
        limiter.release()
    limiter.release_on_behalf_of("me")
    assert limiter.statistics().borrowers == ("someone",)
    limiter.release_on_behalf_of("someone")
    assert limiter.borrowed_tokens == 0

    async with anyio.create_task_group() as tg:
        await limiter.acquire_on_behalf_of("value 1")
        await limiter.acquire_on_behalf_of("value 2")
        tg.start_soon(limiter.acquire_on_behalf_of, "value 3")
        await anyio.wait_all_tasks_blocked()
        assert limiter.borrowed_tokens == 2
        assert limiter.statistics().tasks_waiting == 1
        with pytest.raises(RuntimeError, match="already waiting"):
            await limiter.acquire_on_behalf_of("value 3")
        limiter.release_on_behalf_of("value 2")
        # Fair: the slot went to "value 3", not to whoever asks next.
        assert limiter.borrowed_tokens == 2
        with pytest.raises(anyio.WouldBlock):
            limiter.acquire_nowait()
    assert set(limiter.statistics().borrowers) == {"value 1", "value 3"}
    limiter.release_on_behalf_of("value 3")
    limiter.release_on_behalf_of("value 1")


async def test_nowait_after_a_release_does_not_oversubscribe() -> None:
    # anyio #1170: the slot released is already the queued waiter's, even
    # though it has not run yet.
    limiter = plait.Limiter(1)
    limiter.acquire_on_behalf_of_nowait("A")

    async with anyio.create_task_group() as tg:
        tg.start_soon(limiter.acquire_on_behalf_of, "B")
        await anyio.wait_all_tasks_blocked()
        assert limiter.statistics().tasks_waiting == 1
        limiter.release_on_behalf_of("A")
        with pytest.raises(anyio.WouldBlock):
            limiter.acquire_on_behalf_of_nowait("X")
        assert not limiter.try_acquire()

    assert limiter.available_tokens == 0
    assert limiter.statistics().borrowers == ("B",)
    limiter.release_on_behalf_of("B")


async def test_statistics_count_waiters() -> None:
    async def waiter() -> None:
        async with limiter:
            pass

    limiter = plait.Limiter(1)
    assert isinstance(limiter.statistics(), anyio.CapacityLimiterStatistics)
    assert limiter.statistics().tasks_waiting == 0
    async with anyio.create_task_group() as tg, limiter:
        assert limiter.statistics().borrowed_tokens == 1
        for i in range(1, 3):
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert limiter.statistics().tasks_waiting == i
    assert limiter.statistics().tasks_waiting == 0
    assert limiter.statistics().borrowed_tokens == 0


# -- acquire() is a checkpoint -------------------------------------------------------


async def test_acquire_with_a_free_slot_raises_when_already_cancelled() -> None:
    limiter = plait.Limiter(1)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await limiter.acquire()
        pytest.fail("acquire() did not check for cancellation")
    assert limiter.borrowed_tokens == 0
    with anyio.CancelScope() as scope:
        scope.cancel()
        await limiter.acquire_on_behalf_of("me")
    assert limiter.statistics().borrowers == ()


async def test_acquire_with_a_free_slot_lets_siblings_run() -> None:
    limiter = plait.Limiter(10)  # never full: every acquire finds a slot
    turns = 0
    seen_by_sibling: list[int] = []

    async def busy() -> None:
        nonlocal turns
        for _ in range(100):
            async with limiter:
                turns += 1

    async def sibling() -> None:
        seen_by_sibling.append(turns)

    async with anyio.create_task_group() as tg:
        tg.start_soon(busy)
        tg.start_soon(sibling)
    assert turns == 100
    assert seen_by_sibling[0] < 100, "acquire() never let the sibling run"


async def test_three_tasks_take_turns() -> None:
    # The example: each of three tasks takes Limiter(1) three times.
    limiter = plait.Limiter(1)
    record: list[int] = []
    first: list[int] = []

    async def loopy(name: int) -> None:
        first.append(name)
        for _ in range(3):
            async with limiter:
                record.append(name)

    async with anyio.create_task_group() as tg:
        for name in (1, 2, 3):
            tg.start_soon(loopy, name)
    # Which task starts first is the scheduler's business; then they take
    # turns, as with anyio (not 1,1,1,2,2,2,3,3,3).
    assert record == first * 3


async def test_fifo_fairness_over_many_rounds() -> None:
    limiter = plait.Limiter(1)
    initial_order: list[int] = []
    record: list[int] = []

    async def loopy(name: int) -> None:
        initial_order.append(name)
        for _ in range(5):
            async with limiter:
                record.append(name)

    async with anyio.create_task_group() as tg:
        for name in range(1, 4):
            tg.start_soon(loopy, name)
    for i in range(5):
        assert record[3 * i : 3 * (i + 1)] == initial_order


async def test_mutual_exclusion() -> None:
    limiter = plait.Limiter(1)
    inside = False
    acquires = 0

    async def worker() -> None:
        nonlocal inside, acquires
        for _ in range(10):
            async with limiter:
                acquires += 1
                assert not inside
                inside = True
                await anyio.lowlevel.checkpoint()
                await anyio.lowlevel.checkpoint()
                assert inside
                inside = False

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(worker)
    assert not inside
    assert acquires == 50


async def test_one_at_a_time_with_all_tasks_blocked() -> None:
    value = 0

    async def taskfunc() -> None:
        nonlocal value
        for _ in range(5):
            async with limiter:
                assert value == 0
                value = 1
                await anyio.wait_all_tasks_blocked()
                value = 0

    limiter = plait.Limiter(1)
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(taskfunc)


async def test_acquire_nowait_blocks_acquire() -> None:
    limiter = plait.Limiter(1)
    record: list[str] = []

    async def taker() -> None:
        record.append("started")
        async with limiter:
            pass
        record.append("finished")

    async with anyio.create_task_group() as tg:
        limiter.acquire_nowait()
        tg.start_soon(taker)
        await anyio.wait_all_tasks_blocked()
        assert record == ["started"]
        limiter.release()
    assert record == ["started", "finished"]


async def test_waiters_are_served_in_order() -> None:
    limiter = plait.Limiter(1)
    results: list[int] = []
    event = anyio.Event()

    async def append(x: int, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        async with limiter:
            await event.wait()
            results.append(x)

    async with anyio.create_task_group() as tg:
        for i in range(3):
            await tg.start(append, i)
        event.set()
    assert results == [0, 1, 2]


# -- changing the total ------------------------------------------------------------


async def test_raising_the_total_admits_waiters() -> None:
    async def setter() -> None:
        await entered.wait()  # the waiter below holds the only slot
        async with limiter:
            done.set()  # only once the total was raised

    async def waiter() -> None:
        async with limiter:
            entered.set()
            await done.wait()

    limiter = plait.Limiter(1)
    entered, done = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(setter)
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert entered.is_set()
        assert not done.is_set()
        limiter.total_tokens = 2
    assert done.is_set()


async def test_raising_the_total_lets_newcomers_in_too() -> None:
    limiter = plait.Limiter(1)
    entered = [anyio.Event() for _ in range(3)]
    go_on = anyio.Event()

    async def worker(event: anyio.Event) -> None:
        async with limiter:
            event.set()
            await go_on.wait()

    async with anyio.create_task_group() as tg:
        for event in entered[:2]:
            tg.start_soon(worker, event)
        await anyio.wait_all_tasks_blocked()
        assert sum(ev.is_set() for ev in entered) == 1
        limiter.total_tokens = 3
        tg.start_soon(worker, entered[2])
        with anyio.fail_after(5):
            for ev in entered[1:]:
                await ev.wait()
        go_on.set()


async def test_changing_the_total_with_borrowers() -> None:
    limiter = plait.Limiter(2)
    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(limiter.acquire_on_behalf_of, i)
            await anyio.wait_all_tasks_blocked()
        assert set(limiter.statistics().borrowers) == {0, 1}
        assert limiter.statistics().tasks_waiting == 3
        limiter.total_tokens += 2
        assert set(limiter.statistics().borrowers) == {0, 1, 2, 3}
        assert limiter.statistics().tasks_waiting == 1
        limiter.total_tokens -= 3
        assert limiter.borrowed_tokens == 4
        assert limiter.total_tokens == 1
        assert limiter.available_tokens == -3
        for i in range(3):
            limiter.release_on_behalf_of(i)
        assert set(limiter.statistics().borrowers) == {3}
        assert limiter.statistics().tasks_waiting == 1
        limiter.release_on_behalf_of(3)
        assert set(limiter.statistics().borrowers) == {4}
        assert limiter.statistics().tasks_waiting == 0
    limiter.release_on_behalf_of(4)


async def test_a_total_of_zero_pauses_the_limiter() -> None:
    limiter = plait.Limiter(5)
    async with anyio.create_task_group() as tg:
        limiter.total_tokens = 0
        for i in range(5):
            tg.start_soon(limiter.acquire_on_behalf_of, i)
            await anyio.wait_all_tasks_blocked()
        assert limiter.statistics().borrowers == ()
        assert limiter.statistics().tasks_waiting == 5

        limiter.total_tokens = 5
        assert set(limiter.statistics().borrowers) == {0, 1, 2, 3, 4}
        tg.start_soon(limiter.acquire_on_behalf_of, 5)
        await anyio.wait_all_tasks_blocked()
        assert limiter.statistics().tasks_waiting == 1
        for i in range(5):
            limiter.release_on_behalf_of(i)
        assert limiter.statistics().tasks_waiting == 0
        limiter.release_on_behalf_of(5)

        # Paused again: nobody gets through.
        limiter.total_tokens = 0
        with pytest.raises(anyio.WouldBlock):
            limiter.acquire_nowait()
        tg.start_soon(limiter.acquire_on_behalf_of, 6)
        await anyio.wait_all_tasks_blocked()
        assert limiter.statistics().tasks_waiting == 1
        assert limiter.statistics().borrowers == ()
        limiter.total_tokens = 1
    assert limiter.statistics().borrowers == (6,)
    limiter.release_on_behalf_of(6)


# -- cancellation ------------------------------------------------------------------


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    # Trio #548: a waiter killed while queued must not stay registered.
    limiter = plait.Limiter(1)
    await limiter.acquire()
    async with anyio.create_task_group() as tg:
        tg.start_soon(limiter.acquire_on_behalf_of, "waiter")
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert limiter.statistics().tasks_waiting == 0
    limiter.release()
    # Nothing of "waiter" is left: it may wait again.
    await limiter.acquire_on_behalf_of("waiter")
    limiter.release_on_behalf_of("waiter")


async def test_the_next_waiter_gets_the_slot_when_one_is_cancelled() -> None:
    # anyio #947: the first waiter is cancelled as the slot comes free.
    limiter = plait.Limiter(1)

    async def borrower(
        event: anyio.Event, *, task_status: anyio.abc.TaskStatus[anyio.CancelScope]
    ) -> None:
        with anyio.CancelScope() as scope:
            task_status.started(scope)
            async with limiter:
                event.set()
                await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        async with limiter:
            first = await tg.start(borrower, anyio.Event())
            second = anyio.Event()
            await tg.start(borrower, second)
            first.cancel()
        with anyio.fail_after(5):
            await second.wait()
    assert limiter.borrowed_tokens == 0


@pytest.mark.parametrize(
    "anyio_backend",
    [
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ],
)
async def test_a_plain_asyncio_cancel_leaves_no_deadlock() -> None:
    # anyio #398, with asyncio's own task.cancel() rather than a cancel scope.
    limiter = plait.Limiter(1)

    async def take() -> None:
        async with limiter:
            await asyncio.sleep(0)

    loop = asyncio.get_running_loop()
    task1 = loop.create_task(take())
    task2 = loop.create_task(take())
    await asyncio.sleep(0)
    task1.cancel()
    await asyncio.wait_for(task2, 5)
    with pytest.raises(asyncio.CancelledError):
        await task1
    assert limiter.borrowed_tokens == 0


async def test_a_freed_slot_skips_waiters_being_cancelled() -> None:
    # A task group cancels a queue of waiters just as the slot comes free:
    # the slot goes past all of them to the first waiter that stays, at once,
    # rather than being handed down the doomed queue one wake-up at a time.
    limiter = plait.Limiter(1)
    limiter.acquire_nowait()
    got: list[object] = []

    async def waiter(tag: object) -> None:
        async with limiter:
            got.append(tag)

    async with (
        anyio.create_task_group() as outer,
        anyio.create_task_group() as doomed,
    ):
        for i in range(50):
            doomed.start_soon(waiter, i)
        await anyio.wait_all_tasks_blocked()
        outer.start_soon(waiter, "stays")
        await anyio.wait_all_tasks_blocked()
        assert limiter.statistics().tasks_waiting == 51
        doomed.cancel_scope.cancel()
        limiter.release()
        assert limiter.statistics().tasks_waiting == 0
        assert limiter.borrowed_tokens == 1  # "stays" has it already
    assert got == ["stays"]
    assert limiter.borrowed_tokens == 0


def test_a_cancelled_queue_skipped_from_another_thread(anyio_backend: Backend) -> None:
    # The same, with the slot freed by a plain thread.
    limiter = plait.Limiter(1)
    limiter.acquire_blocking()
    got: list[object] = []

    async def waiter(tag: object) -> None:
        async with limiter:
            got.append(tag)

    async def main() -> None:
        async with (
            anyio.create_task_group() as outer,
            anyio.create_task_group() as doomed,
        ):
            for i in range(20):
                doomed.start_soon(waiter, i)
            await anyio.wait_all_tasks_blocked()
            outer.start_soon(waiter, "stays")
            await anyio.wait_all_tasks_blocked()
            doomed.cancel_scope.cancel()
            thread = threading.Thread(target=limiter.release)
            thread.start()
            thread.join()

    name, options = anyio_backend
    anyio.run(main, backend=name, backend_options=options)
    assert got == ["stays"]
    assert limiter.statistics().tasks_waiting == 0
    assert limiter.borrowed_tokens == 0


# -- event loops are let go (Trio #548, across runs) ------------------------------------

RUNS = 20


def _loop_refs() -> list[weakref.ref[object]]:
    """Weak references to what keeps this run's event loop alive."""
    if sniffio.current_async_library() == "trio":
        import trio

        return [
            weakref.ref(trio.lowlevel.current_root_task()),
            weakref.ref(trio.lowlevel.current_trio_token()),
        ]
    return [weakref.ref(asyncio.get_running_loop())]


def _alive(refs: list[weakref.ref[object]]) -> int:
    gc.collect()
    return sum(ref() is not None for ref in refs)


def test_cancelled_waiters_keep_no_event_loop_alive(anyio_backend: Backend) -> None:
    limiter = plait.Limiter(0, "paused")
    registry = plait.LimiterRegistry()
    registry.set_limit("key", 0)
    refs: list[weakref.ref[object]] = []

    async def main() -> None:
        refs.extend(_loop_refs())
        async with anyio.create_task_group() as tg:
            tg.start_soon(limiter.acquire)
            tg.start_soon(limiter.acquire_on_behalf_of, "borrower")
            tg.start_soon(registry.acquire, "key")
            await anyio.wait_all_tasks_blocked()
            assert limiter.statistics().tasks_waiting == 2
            tg.cancel_scope.cancel()

    name, options = anyio_backend
    for _ in range(RUNS):
        anyio.run(main, backend=name, backend_options=options)
    assert _alive(refs) == 0
    assert limiter.statistics().tasks_waiting == 0
    assert registry.limiter("key").waiting == 0


def test_served_waiters_keep_no_event_loop_alive(anyio_backend: Backend) -> None:
    limiter = plait.Limiter(1)
    refs: list[weakref.ref[object]] = []

    async def main() -> None:
        refs.extend(_loop_refs())
        limiter.acquire_nowait()
        async with anyio.create_task_group() as tg:
            tg.start_soon(limiter.acquire)
            await anyio.wait_all_tasks_blocked()
            limiter.release()  # served: the waiter now holds the slot
        limiter.release()

    name, options = anyio_backend
    for _ in range(RUNS):
        anyio.run(main, backend=name, backend_options=options)
    assert _alive(refs) == 0
    assert limiter.borrowed_tokens == 0


def test_a_registry_shared_by_many_runs_keeps_no_event_loop_alive(
    anyio_backend: Backend,
) -> None:
    registry = plait.LimiterRegistry()
    registry.set_limit("tool:stuck", 0)  # every call waits until timed out
    refs: list[weakref.ref[object]] = []

    @plait.tool
    async def stuck() -> None:
        pytest.fail("the paused limit let a call in")

    @plait.tool
    async def remember() -> None:
        refs.extend(_loop_refs())

    workflow = plait.Sequential(
        plait.Call("remember"), plait.Call("stuck"), timeout=0.01
    )
    for _ in range(RUNS):
        with pytest.raises(plait.StepTimeout):
            plait.run(
                workflow,
                backend=backend_name(anyio_backend),
                tools=[stuck, remember],
                limiters=registry,
            )
    assert len(refs) >= RUNS
    assert _alive(refs) == 0
    assert registry.limiter("tool:stuck").waiting == 0
