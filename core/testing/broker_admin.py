"""The broker contract, continued: dead letters, administration and concurrent consumers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from conveyor.broker import Broker, QueueStats, Reservation
from conveyor.testing.broker import (
    BrokerFixtures,
    BrokerTimings,
    require_delay,
    reserve_count,
    reserve_within,
    settled_stats,
)
from conveyor.testing.threads import run_together

#: Messages raced for by the concurrency tests, and the consumers racing for them.
RACE_MESSAGES = 200
RACE_CONSUMERS = 8


def _dead(broker: Broker, queue: str, timings: BrokerTimings, bodies: list[bytes],
          reason: str = "contract") -> list[Reservation]:
    """Enqueue ``bodies``, reserve them and dead-letter each; return the reservations."""
    broker.enqueue_many(queue, bodies)
    held = reserve_count(broker, [queue], len(bodies), lease=timings.long_lease,
                         timeout=5 + timings.slack, tick=timings.tick)
    assert len(held) == len(bodies)
    for reservation in held:
        broker.dead_letter(reservation, reason=f"{reason}: {reservation.body.decode()}")
    return held


class BrokerDeadLetterContract(BrokerFixtures):
    """Dead letters keep body and reason until deleted, and are never delivered."""

    def test_dead_letter_keeps_the_body_and_reason(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        body = bytes(range(256))
        message_id = broker.enqueue(queue, body)
        [held] = reserve_within(broker, [queue], lease=timings.long_lease,
                                timeout=2 + timings.slack, tick=timings.tick)
        before = time.time()
        broker.dead_letter(held, reason="ValueError: bad input \u2603")
        [dead] = broker.dead_letters(queue)
        assert (dead.queue, dead.message_id, dead.body, dead.reason) == (
            queue, message_id, body, "ValueError: bad input \u2603")
        # Seconds since the epoch (not ms, not a datetime); generous for server clock skew.
        assert before - 300 <= dead.dead_at <= time.time() + 300

    def test_dead_message_is_not_delivered_again(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        broker.enqueue(queue, b"poison")
        [held] = reserve_within(broker, [queue], lease=timings.lease,
                                timeout=2 + timings.slack, tick=timings.tick)
        broker.dead_letter(held, reason="poison")
        assert reserve_within(broker, [queue], lease=timings.lease,
                              timeout=timings.lease + timings.slack, tick=timings.tick) == []
        assert [d.body for d in broker.dead_letters(queue)] == [b"poison"]

    def test_dead_letters_are_kept_per_queue(
            self, broker: Broker, new_queue: Callable[[], str], timings: BrokerTimings) -> None:
        first, second = new_queue(), new_queue()
        _dead(broker, first, timings, [b"first"])
        assert broker.dead_letters(second) == []
        assert [d.body for d in broker.dead_letters(first)] == [b"first"]

    def test_dead_letters_returns_at_most_limit(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        _dead(broker, queue, timings, [b"a", b"b", b"c"])
        assert len(broker.dead_letters(queue, limit=2)) == 2
        assert len(broker.dead_letters(queue)) == 3

    def test_dead_letters_are_listed_oldest_first(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        held = _dead(broker, queue, timings, [b"a", b"b", b"c"])
        assert [d.message_id for d in broker.dead_letters(queue)] == [
            r.message_id for r in held]

    def test_delete_dead_by_id_deletes_only_those(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        held = _dead(broker, queue, timings, [b"a", b"b", b"c"])
        assert broker.delete_dead(queue, [held[0].message_id, "no-such-id"]) == 1
        left = {d.message_id for d in broker.dead_letters(queue)}
        assert left == {held[1].message_id, held[2].message_id}
        assert broker.delete_dead(queue, [held[0].message_id]) == 0
        assert broker.delete_dead(queue, []) == 0

    def test_delete_dead_without_ids_deletes_all_of_the_queue(
            self, broker: Broker, new_queue: Callable[[], str], timings: BrokerTimings) -> None:
        queue = new_queue()
        # Neighbours on both sides of the name in any order a store sorts by: a prefix of it
        # and a name it is a prefix of.
        before, after = queue[:-1], queue + "-after"
        _dead(broker, queue, timings, [b"a", b"b", b"c"])
        for name in (before, after):
            _dead(broker, name, timings, [b"kept"])
        assert broker.delete_dead(queue) == 3
        assert broker.dead_letters(queue) == []
        assert broker.delete_dead(queue) == 0
        for name in (before, after):
            assert [d.body for d in broker.dead_letters(name)] == [b"kept"], (
                f"delete_dead({queue!r}) deleted dead letters of {name!r}")
            broker.delete_dead(name)

    def test_stats_count_dead_letters(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        _dead(broker, queue, timings, [b"a", b"b"])
        stats = settled_stats(broker, queue, timings,
                              lambda s: (s.ready, s.reserved, s.dead) == (0, 0, 2))
        assert (stats.ready, stats.reserved, stats.dead) == (0, 0, 2)


class BrokerAdminContract(BrokerFixtures):
    """purge, stats, queues, ping and close."""

    def test_purge_removes_ready_and_delayed_messages(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        require_delay(broker, timings)
        broker.enqueue_many(queue, [b"a", b"b"])
        broker.enqueue(queue, b"soon", delay=timings.delay)
        purged = broker.purge(queue)
        if broker.capabilities.exact_stats:
            assert purged == 3
        else:
            assert isinstance(purged, int)
            assert purged >= 0
        assert reserve_within(broker, [queue], lease=timings.long_lease,
                              timeout=timings.delay + timings.slack, tick=timings.tick) == []

    def test_purge_keeps_reserved_and_dead_messages(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        _dead(broker, queue, timings, [b"dead"])
        broker.enqueue(queue, b"running")
        [held] = reserve_within(broker, [queue], lease=timings.long_lease,
                                timeout=2 + timings.slack, tick=timings.tick)
        broker.purge(queue)
        assert broker.extend(held, lease=timings.long_lease) is True
        assert [d.body for d in broker.dead_letters(queue)] == [b"dead"]
        broker.ack(held)

    def test_purge_of_an_unknown_queue_returns_zero(self, broker: Broker, queue: str) -> None:
        assert broker.purge(queue) == 0

    def test_stats_count_ready_delayed_reserved_and_dead(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        _dead(broker, queue, timings, [b"dead"])
        broker.enqueue_many(queue, [b"r1", b"r2", b"reserved"])
        broker.enqueue(queue, b"delayed", delay=timings.long_delay)
        held = reserve_within(broker, [queue], lease=timings.long_lease,
                              timeout=2 + timings.slack, tick=timings.tick)
        assert len(held) == 1
        stats = broker.stats(queue)
        assert isinstance(stats, QueueStats)
        assert stats.queue == queue
        counts = (stats.ready, stats.delayed, stats.reserved, stats.dead)
        if broker.capabilities.exact_stats:
            assert counts == (2, 1, 1, 1)
        else:
            assert all(isinstance(n, int) and n >= 0 for n in counts)

    def test_stats_of_an_unknown_queue_are_zero(self, broker: Broker, queue: str) -> None:
        stats = broker.stats(queue)
        assert (stats.queue, stats.ready, stats.delayed, stats.reserved, stats.dead) == (
            queue, 0, 0, 0, 0)

    def test_queues_lists_a_queue_in_use_if_it_lists_any(
            self, broker: Broker, queue: str) -> None:
        broker.enqueue(queue, b"here")
        names = broker.queues()
        assert isinstance(names, list)
        assert all(isinstance(n, str) for n in names)
        if names:
            assert queue in names

    def test_ping_succeeds_on_a_live_server(self, broker: Broker) -> None:
        broker.ping()

    def test_close_is_idempotent(self, broker_factory: Callable[[], Broker]) -> None:
        extra = broker_factory()
        extra.ping()
        extra.close()
        extra.close()


def _race(consumers: list[Broker], queue: str, timings: BrokerTimings) -> list[Reservation]:
    """Consumers reserve concurrently until every message is taken; return all reservations."""
    taken: list[tuple[Broker, Reservation]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 20 + 10 * timings.slack

    def consume(index: int) -> None:
        consumer = consumers[index]
        while time.monotonic() < deadline:
            with lock:
                if len(taken) >= RACE_MESSAGES:
                    return
            got = consumer.reserve([queue], lease=timings.long_lease,
                                   wait=min(timings.tick, 0.5), limit=5)
            with lock:
                taken.extend((consumer, r) for r in got)

    run_together(consume, len(consumers))
    for consumer, reservation in taken:
        consumer.ack(reservation)
    return [r for _, r in taken]


class BrokerConcurrencyContract(BrokerFixtures):
    """Consumers racing for one queue get each message exactly once while leases hold."""

    def test_racing_consumers_with_their_own_brokers_get_each_message_exactly_once(
            self, broker: Broker, broker_factory: Callable[[], Broker], queue: str,
            timings: BrokerTimings) -> None:
        ids = broker.enqueue_many(queue, [b"race-%d" % i for i in range(RACE_MESSAGES)])
        consumers = [broker_factory() for _ in range(RACE_CONSUMERS)]
        got = sorted(r.message_id for r in _race(consumers, queue, timings))
        assert len(got) == len(set(got)), "a message was delivered twice under a live lease"
        assert got == sorted(ids), "a message was never delivered"

    def test_racing_consumers_sharing_one_broker_get_each_message_exactly_once(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        ids = broker.enqueue_many(queue, [b"race-%d" % i for i in range(RACE_MESSAGES)])
        got = sorted(r.message_id for r in _race([broker] * RACE_CONSUMERS, queue, timings))
        assert len(got) == len(set(got)), "a message was delivered twice under a live lease"
        assert got == sorted(ids), "a message was never delivered"
