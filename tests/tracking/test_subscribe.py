"""Subscriptions: every change in order, overflow policies, close, other threads."""

from __future__ import annotations

import asyncio
import gc
import threading
from typing import Any

import pytest

from retract import (
    Change,
    HistoryTruncatedError,
    SubscriberOverflowError,
    Subscription,
    TrackedDict,
    TrackedList,
    async_queue_observer,
)


async def drain(subscription: Subscription) -> list[Change]:
    return [change async for change in subscription]


def news(changes: list[Change]) -> list[Any]:
    return [change.new for change in changes]


def append_range(items: TrackedList[int], count: int) -> None:
    for i in range(count):
        items.append(i)


def append_from_a_thread(items: TrackedList[int], count: int) -> None:
    """Append 0..count-1 from another thread, while this (the loop's) thread waits."""
    thread = threading.Thread(target=append_range, args=(items, count))
    thread.start()
    thread.join()


async def test_unbounded_subscriber_gets_every_change_in_order() -> None:
    """With maxsize=0 a consumer running alongside gets every change, in order."""
    root: TrackedDict[str, Any] = TrackedDict({"items": []}, history=None)
    subscription = root.subscribe()

    async def produce() -> None:
        for i in range(300):
            if i % 3:
                root["items"].append(i)
            else:
                root[f"k{i}"] = i
            if i % 7 == 0:
                await asyncio.sleep(0)
        subscription.close()

    received, _ = await asyncio.gather(drain(subscription), produce())
    assert received == root.tracking_changes()
    assert [change.seq for change in received] == list(range(1, 301))
    assert subscription.dropped == 0


async def test_changes_queue_up_while_nobody_reads() -> None:
    """An unbounded subscription keeps everything until it is read."""
    items: TrackedList[int] = TrackedList()
    subscription = items.subscribe()
    for i in range(1000):
        items.append(i)
    assert subscription.qsize() == 1000
    subscription.close()
    assert news(await drain(subscription)) == list(range(1000))


async def test_drop_oldest_keeps_the_newest_changes() -> None:
    """overflow="drop_oldest" drops the oldest queued changes and counts them."""
    items: TrackedList[int] = TrackedList()
    subscription = items.subscribe(maxsize=2, overflow="drop_oldest")
    for i in range(5):
        items.append(i)
    assert subscription.dropped == 3
    subscription.close()
    assert news(await drain(subscription)) == [3, 4]


async def test_drop_newest_keeps_the_oldest_changes() -> None:
    """overflow="drop_newest" drops the changes that do not fit and counts them."""
    items: TrackedList[int] = TrackedList()
    subscription = items.subscribe(maxsize=2, overflow="drop_newest")
    for i in range(5):
        items.append(i)
    assert subscription.dropped == 3
    subscription.close()
    assert news(await drain(subscription)) == [0, 1]


async def test_error_overflow_ends_with_subscriber_overflow_error() -> None:
    """overflow="error": the queued changes are read, then SubscriberOverflowError."""
    items: TrackedList[int] = TrackedList()
    subscription = items.subscribe(maxsize=2, overflow="error")
    for i in range(3):
        items.append(i)
    assert subscription.dropped == 1
    assert news([await anext(subscription), await anext(subscription)]) == [0, 1]
    with pytest.raises(SubscriberOverflowError, match=r"maxsize=2.*read faster"):
        await anext(subscription)


async def test_error_overflow_stops_the_subscription() -> None:
    """After an overflow error no later change is queued or counted."""
    items: TrackedList[int] = TrackedList()
    subscription = items.subscribe(maxsize=1, overflow="error")
    for i in range(5):
        items.append(i)
    assert subscription.dropped == 1
    assert subscription.get_nowait() is not None
    assert subscription.get_nowait() is None


async def test_error_overflow_keeps_raising() -> None:
    """Iterating again after the overflow error raises it again."""
    items: TrackedList[int] = TrackedList()
    subscription = items.subscribe(maxsize=1, overflow="error")
    items.append(1)
    items.append(2)
    with pytest.raises(SubscriberOverflowError):
        await drain(subscription)
    with pytest.raises(SubscriberOverflowError):
        await drain(subscription)


@pytest.mark.parametrize("overflow", ["drop_oldest", "drop_newest", "error"])
async def test_a_mutation_never_blocks_on_a_full_subscription(overflow: Any) -> None:
    """Mutations go on, without awaiting, whatever the bounded queue holds."""
    items: TrackedList[int] = TrackedList()
    subscription = items.subscribe(maxsize=1, overflow=overflow)
    for i in range(100):
        items.append(i)
    assert len(items) == 100
    assert subscription.qsize() <= 1


async def test_close_ends_iteration_after_the_queued_changes() -> None:
    """close() lets the consumer read what was queued, then iteration ends."""
    config: TrackedDict[str, int] = TrackedDict()
    subscription = config.subscribe()
    config["a"] = 1
    config["b"] = 2
    subscription.close()
    config["c"] = 3
    assert [change.path for change in await drain(subscription)] == [("a",), ("b",)]


async def test_close_on_a_full_queue_keeps_every_queued_change() -> None:
    """Closing a full bounded subscription drops none of the changes it holds."""
    items: TrackedList[int] = TrackedList()
    subscription = items.subscribe(maxsize=2, overflow="drop_newest")
    items.append(0)
    items.append(1)
    subscription.close()
    assert news(await drain(subscription)) == [0, 1]
    assert subscription.dropped == 0


async def test_close_wakes_a_waiting_consumer() -> None:
    """A consumer waiting for a change ends when the subscription is closed."""
    subscription = TrackedList().subscribe()
    consumer = asyncio.create_task(drain(subscription))
    await asyncio.sleep(0)
    subscription.close()
    assert await consumer == []


async def test_close_is_idempotent_and_iteration_stays_ended() -> None:
    """close() twice is harmless; iterating an ended subscription ends at once."""
    items: TrackedList[int] = TrackedList()
    subscription = items.subscribe()
    items.append(1)
    subscription.close()
    subscription.close()
    assert len(await drain(subscription)) == 1
    assert await drain(subscription) == []
    assert subscription.get_nowait() is None


async def test_async_with_closes_the_subscription() -> None:
    """Leaving ``async with`` closes the subscription."""
    items: TrackedList[int] = TrackedList()
    async with items.subscribe() as subscription:
        items.append(1)
    items.append(2)
    assert news(await drain(subscription)) == [1]


async def test_get_nowait_and_qsize() -> None:
    """get_nowait() returns the next change or None; qsize() counts what waits."""
    items: TrackedList[int] = TrackedList()
    subscription = items.subscribe()
    assert subscription.get_nowait() is None
    items.append(7)
    assert subscription.qsize() == 1
    change = subscription.get_nowait()
    assert change is not None
    assert change.new == 7
    assert subscription.qsize() == 0


async def test_subscription_on_a_child_gets_only_its_changes() -> None:
    """A subscription made on a nested container sees the changes under it."""
    root: TrackedDict[str, Any] = TrackedDict({"a": [], "b": []})
    subscription = root["a"].subscribe()
    root["a"].append(1)
    root["b"].append(2)
    root["c"] = 3
    subscription.close()
    assert [change.path for change in await drain(subscription)] == [("a", 0)]


async def test_subscription_on_a_list_item_follows_it() -> None:
    """A subscription made on a list item still gets its changes after it moved."""
    root: TrackedList[Any] = TrackedList([[0]])
    subscription = root[0].subscribe()
    child = root[0]
    root.insert(0, [])
    root[0].append(1)
    child.append(2)
    subscription.close()
    assert [change.path for change in await drain(subscription)] == [(1, 1)]


def test_a_subscription_made_before_the_loop_runs_works_in_it() -> None:
    """subscribe() needs no running loop: the loop that iterates it owns it."""
    items: TrackedList[int] = TrackedList()
    subscription = items.subscribe()
    items.append(1)

    async def consume() -> list[Any]:
        asyncio.get_running_loop().call_soon(items.append, 2)
        asyncio.get_running_loop().call_later(0.01, subscription.close)
        return news(await drain(subscription))

    assert asyncio.run(consume()) == [1, 2]


async def test_subscribe_rejects_an_unknown_overflow() -> None:
    """An overflow policy that does not exist is a ValueError."""
    with pytest.raises(ValueError, match="overflow must be one of"):
        TrackedList().subscribe(maxsize=1, overflow="block")  # type: ignore[arg-type]


@pytest.mark.parametrize("maxsize", [-1, 1.5])
async def test_subscribe_rejects_a_bad_maxsize(maxsize: Any) -> None:
    """A maxsize that is not an int >= 0 is a ValueError."""
    with pytest.raises(ValueError, match="maxsize must be an int"):
        TrackedList().subscribe(maxsize=maxsize)


async def test_mutations_from_another_thread_arrive_in_order() -> None:
    """Changes made in another thread reach the loop's subscriber, all and in order."""
    items: TrackedList[int] = TrackedList(history=None)
    subscription = items.subscribe()
    thread = threading.Thread(target=append_range, args=(items, 500))
    thread.start()
    received: list[Change] = []
    async for change in subscription:
        received.append(change)
        if len(received) == 500:
            break
    await asyncio.to_thread(thread.join)
    assert news(received) == list(range(500))
    assert [change.seq for change in received] == list(range(1, 501))


async def test_mutations_from_another_thread_are_queued_at_once() -> None:
    """A change made in another thread is queued as the mutation happens, in order."""
    items: TrackedList[int] = TrackedList()
    subscription = items.subscribe()
    append_from_a_thread(items, 3)  # the loop is blocked meanwhile
    assert items == [0, 1, 2]
    assert subscription.qsize() == 3
    assert [subscription.get_nowait().new for _ in range(3)] == [0, 1, 2]  # type: ignore[union-attr]


async def test_a_waiting_consumer_is_woken_by_another_thread() -> None:
    """A consumer awaiting the next change wakes when another thread makes it."""
    items: TrackedList[int] = TrackedList()
    subscription = items.subscribe()
    consumer = asyncio.create_task(anext(subscription))
    await asyncio.sleep(0)  # now waiting in the queue
    await asyncio.to_thread(items.append, 5)
    change = await asyncio.wait_for(consumer, 5)
    assert change.new == 5


def append_locked(items: TrackedList[int], count: int) -> None:
    for i in range(count):
        with items.tracking_lock:
            items.append(i)


async def test_threads_writing_under_the_tracking_lock_keep_seq_order() -> None:
    """Four threads appending under tracking_lock, a consumer waiting: all, by seq."""
    items: TrackedList[int] = TrackedList(history=None)
    subscription = items.subscribe()
    threads = [threading.Thread(target=append_locked, args=(items, 250)) for _ in range(4)]
    for thread in threads:
        thread.start()
    received: list[Change] = []
    async for change in subscription:
        received.append(change)
        if len(received) == 1000:
            break
    for thread in threads:
        await asyncio.to_thread(thread.join)
    assert [change.seq for change in received] == list(range(1, 1001))
    assert [change.path for change in received] == [(i,) for i in range(1000)]
    assert sorted(news(received)) == sorted(list(range(250)) * 4)
    assert received == items.tracking_changes()


async def test_threads_writing_without_the_lock_lose_no_change() -> None:
    """Unsynchronized writers from several threads: every change reaches the subscriber."""
    items: TrackedList[int] = TrackedList(history=None)
    subscription = items.subscribe()
    threads = [threading.Thread(target=append_range, args=(items, 250)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        await asyncio.to_thread(thread.join)
    subscription.close()
    received = await drain(subscription)
    assert len(received) == len(items) == 1000
    assert sorted(news(received)) == sorted(items)


def test_the_tracking_lock_is_the_roots_and_reentrant() -> None:
    """A child hands out its root's lock, which one thread may take twice."""
    root: TrackedDict[str, Any] = TrackedDict({"a": {"b": []}})
    lock = root.tracking_lock
    assert root["a"]["b"].tracking_lock is lock
    with lock, lock:
        root["a"]["b"].append(1)
    assert root.last_change() is not None


async def test_a_change_made_before_close_is_delivered_one_after_is_not() -> None:
    """close() ends the iteration after what was queued, from any thread."""
    items: TrackedList[int] = TrackedList()
    subscription = items.subscribe()
    append_from_a_thread(items, 1)
    subscription.close()
    await asyncio.to_thread(items.append, 9)
    assert news(await drain(subscription)) == [0]
    assert subscription.get_nowait() is None
    assert subscription.qsize() == 0


async def test_async_queue_observer_feeds_a_users_queue() -> None:
    """async_queue_observer puts every change on the given queue, in order."""
    queue: asyncio.Queue[Change] = asyncio.Queue()
    items: TrackedList[int] = TrackedList()
    items.tracking_add_observer(async_queue_observer(queue))
    items.append(1)
    items.append(2)
    assert [queue.get_nowait().new for _ in range(2)] == [1, 2]


async def test_async_queue_observer_drops_and_counts_on_a_full_queue() -> None:
    """On a full bounded queue the change is dropped, counted, and the mutation goes on."""
    queue: asyncio.Queue[Change] = asyncio.Queue(maxsize=1)
    items: TrackedList[int] = TrackedList()
    observer = async_queue_observer(queue)
    items.tracking_add_observer(observer)
    for i in range(4):
        items.append(i)
    assert items == [0, 1, 2, 3]
    assert observer.dropped == 3
    assert queue.get_nowait().new == 0
    assert items.tracking_observer_errors == 0


async def test_async_queue_observer_takes_changes_from_other_threads() -> None:
    """Changes made in another thread reach the queue through the loop, in order."""
    queue: asyncio.Queue[Change] = asyncio.Queue()
    items: TrackedList[int] = TrackedList()
    items.tracking_add_observer(async_queue_observer(queue))
    append_from_a_thread(items, 50)
    assert queue.qsize() == 0
    received = [(await queue.get()).new for _ in range(50)]
    assert received == list(range(50))


def test_async_queue_observer_made_before_the_loop_runs() -> None:
    """Made outside a loop, it binds to the first loop that runs a mutation."""
    items: TrackedList[int] = TrackedList()
    queue: asyncio.Queue[Change] = asyncio.Queue()
    items.tracking_add_observer(async_queue_observer(queue))
    items.append(1)  # no loop at all: put directly

    async def main() -> list[Any]:
        items.append(2)  # in the loop: put directly, binding it
        await asyncio.to_thread(items.append, 3)  # another thread: through the loop
        return [(await queue.get()).new for _ in range(3)]

    assert asyncio.run(main()) == [1, 2, 3]


async def test_async_queue_observer_with_an_explicit_loop() -> None:
    """loop= names the queue's loop when the observer is made elsewhere."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Change] = asyncio.Queue()
    items: TrackedList[int] = TrackedList()
    observer = await asyncio.to_thread(async_queue_observer, queue, loop=loop)
    items.tracking_add_observer(observer)
    await asyncio.to_thread(items.append, 4)
    assert (await asyncio.wait_for(queue.get(), 5)).new == 4


async def test_an_abandoned_subscription_is_forgotten() -> None:
    """A subscription nobody holds any more stops being fed, without close()."""
    config: TrackedDict[str, int] = TrackedDict()
    subscription = config.subscribe()
    config["a"] = 1
    del subscription
    gc.collect()
    config["b"] = 2
    assert config._root_tracker()[1].feeds == []


async def test_a_consumer_woken_for_a_change_someone_else_took_waits_again() -> None:
    """get_nowait() taking the change first does not strand the waiting consumer."""
    config: TrackedDict[str, int] = TrackedDict()
    subscription = config.subscribe()
    consumer = asyncio.create_task(anext(subscription))
    await asyncio.sleep(0)
    config["a"] = 1
    assert subscription.get_nowait() is not None  # taken before the consumer ran
    await asyncio.sleep(0)
    config["b"] = 2
    change = await asyncio.wait_for(consumer, 5)
    assert change.path == ("b",)


async def test_two_consumers_of_one_subscription_and_one_cancelled() -> None:
    """Cancelling one waiting consumer leaves the other one registered and woken."""
    config: TrackedDict[str, int] = TrackedDict()
    subscription = config.subscribe()
    first = asyncio.create_task(anext(subscription))
    second = asyncio.create_task(anext(subscription))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    config["a"] = 1
    assert (await asyncio.wait_for(second, 5)).path == ("a",)
    assert first.cancelled()
    assert config._root_tracker()[1].sleepers == []


def test_a_write_after_the_consumers_loop_closed_does_not_raise() -> None:
    """A consumer left waiting in a closed loop does not make later writes fail."""
    config: TrackedDict[str, int] = TrackedDict()
    subscription = config.subscribe()
    loop = asyncio.new_event_loop()
    task = loop.create_task(anext(subscription))
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.close()
    config["a"] = 1  # resolving the stranded consumer's future must not raise here
    subscription.close()
    assert config == {"a": 1}
    assert config._root_tracker()[1].sleepers == []
    del task


def test_subscriptions_made_and_closed_in_many_threads_stay_registered() -> None:
    """Feed registration is safe against threads: open ones fed, closed ones not."""
    config: TrackedDict[str, int] = TrackedDict()
    kept: list[list[Subscription]] = [[] for _ in range(4)]

    def churn(mine: list[Subscription]) -> None:
        for i in range(2000):
            subscription = config.subscribe()
            if i % 2:
                subscription.close()
            else:
                mine.append(subscription)

    threads = [threading.Thread(target=churn, args=(mine,)) for mine in kept]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    config["x"] = 1
    open_subscriptions = [s for mine in kept for s in mine]
    assert len(config._root_tracker()[1].feeds) == len(open_subscriptions) == 4000
    assert all(s.qsize() == 1 for s in open_subscriptions)


async def test_drop_oldest_counts_exactly_what_it_dropped_against_a_thread() -> None:
    """A thread writing into a small bounded queue: received + dropped == written."""
    items: TrackedList[int] = TrackedList(history=0)
    subscription = items.subscribe(maxsize=4, overflow="drop_oldest")
    written = 20_000
    thread = threading.Thread(target=append_range, args=(items, written))
    thread.start()
    received: list[int] = []
    while thread.is_alive() or subscription.qsize():
        change = subscription.get_nowait()
        if change is None:
            await asyncio.sleep(0)
        else:
            received.append(change.new)
    thread.join()
    assert received == sorted(received)
    assert len(received) + subscription.dropped == written


async def test_reading_the_history_while_a_thread_writes_is_consistent() -> None:
    """changes_since and tracking_changes never skip or repeat while a thread writes."""
    items: TrackedList[int] = TrackedList(history=500)
    thread = threading.Thread(target=append_range, args=(items, 30_000))
    thread.start()
    while thread.is_alive():
        changes = items.tracking_changes()
        seqs = [change.seq for change in changes]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True
        assert changes.truncated == (seqs[0] - 1 if seqs else changes.truncated)
        if seqs:
            cursor = seqs[len(seqs) // 2]
            try:
                later = [change.seq for change in items.changes_since(cursor)]
            except HistoryTruncatedError:
                continue  # the writer moved past it: said, not silently skipped
            assert later[:1] in ([], [cursor + 1])
            assert later == list(range(cursor + 1, cursor + 1 + len(later)))
        await asyncio.sleep(0)
    thread.join()


def test_a_subscription_waits_in_one_loop_then_in_another() -> None:
    """Each wait belongs to the loop that awaits: a second asyncio.run works too."""
    config: TrackedDict[str, int] = TrackedDict()
    subscription = config.subscribe()

    async def next_after_a_write(key: str) -> Any:
        asyncio.get_running_loop().call_soon(config.__setitem__, key, 1)
        return (await anext(subscription)).path

    assert asyncio.run(next_after_a_write("a")) == ("a",)
    assert asyncio.run(next_after_a_write("b")) == ("b",)
