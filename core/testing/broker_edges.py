"""The broker contract, continued: the edges where real drivers break.

Stale receipts on every call that changes a delivery, isolation between queues (including
names built to collide), lapsed leases, the order of several queues, identifiers, and
coherence between two driver instances on one store.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import pytest

from conveyor.broker import Broker, Reservation
from conveyor.exceptions import ConfigurationError, ConveyorError, ValueRefusedError
from conveyor.testing.broker import (
    BrokerFixtures,
    BrokerTimings,
    redelivered,
    require_delay,
    reserve_count,
    reserve_within,
    settled_stats,
)
from conveyor.testing.identifiers import long_pair, variants


def _redelivered_elsewhere(first: Broker, second: Broker, queue: str, body: bytes,
                           timings: BrokerTimings) -> tuple[Reservation, Reservation]:
    """As :func:`redelivered`, but the fresh delivery is taken by another instance."""
    first.enqueue(queue, body)
    [stale] = reserve_within(first, [queue], lease=timings.lease,
                             timeout=2 + timings.slack, tick=timings.tick)
    [fresh] = reserve_within(second, [queue], lease=timings.long_lease,
                             timeout=timings.lease + timings.slack + timings.tick,
                             tick=timings.tick)
    return stale, fresh


def _assert_still_held(broker: Broker, holder: Broker, queue: str, fresh: Reservation,
                       timings: BrokerTimings) -> None:
    """``fresh`` still holds its message: nobody else gets it, and its holder can finish."""
    assert broker.reserve([queue], lease=timings.long_lease, wait=timings.tick) == [], (
        "a stale receipt released the new holder's lease")
    assert holder.extend(fresh, lease=timings.long_lease) is True, (
        "a stale receipt took the message from its new holder")
    holder.ack(fresh)
    assert broker.reserve([queue], lease=timings.long_lease) == []


class BrokerStaleReceiptContract(BrokerFixtures):
    """A reservation whose lease lapsed (or that was acked) never disturbs the message's
    next delivery: ``ack``, ``ack_many``, ``nack``, ``extend`` and ``dead_letter`` compare
    the delivery's token, not only the message id."""

    def test_stale_nack_leaves_the_new_holder_alone(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        stale, fresh = redelivered(broker, queue, b"stale nack", timings)
        broker.nack(stale)
        _assert_still_held(broker, broker, queue, fresh, timings)

    def test_stale_nack_with_delay_leaves_the_new_holder_alone(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        require_delay(broker, timings)
        stale, fresh = redelivered(broker, queue, b"stale delayed nack", timings)
        broker.nack(stale, delay=timings.delay)
        _assert_still_held(broker, broker, queue, fresh, timings)
        # Nor did it leave a delayed copy behind.
        assert reserve_within(broker, [queue], lease=timings.long_lease,
                              timeout=timings.delay + timings.slack, tick=timings.tick) == []

    def test_stale_dead_letter_leaves_the_new_holder_alone(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        # A copy in the dead-letter queue is allowed (it may duplicate, never lose); taking
        # the message from the worker now running it is not.
        stale, fresh = redelivered(broker, queue, b"stale dead letter", timings)
        broker.dead_letter(stale, reason="stale verdict")
        _assert_still_held(broker, broker, queue, fresh, timings)
        assert len(broker.dead_letters(queue)) <= 1

    def test_stale_receipts_from_another_instance_leave_the_new_holder_alone(
            self, broker: Broker, broker_factory: Callable[[], Broker], queue: str,
            timings: BrokerTimings) -> None:
        other = broker_factory()
        stale, fresh = _redelivered_elsewhere(broker, other, queue, b"two instances", timings)
        assert fresh.attempts == 2
        assert broker.extend(stale, lease=timings.long_lease) is False
        broker.nack(stale)
        broker.ack(stale)
        broker.ack_many([stale])
        _assert_still_held(broker, other, queue, fresh, timings)

    def test_receipts_of_an_acked_delivery_change_nothing(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        broker.enqueue(queue, b"finished")
        [held] = reserve_within(broker, [queue], lease=timings.long_lease,
                                timeout=2 + timings.slack, tick=timings.tick)
        broker.ack(held)
        broker.nack(held)
        broker.nack(held, delay=0.0)
        broker.ack_many([held])
        assert broker.extend(held, lease=timings.long_lease) is False
        assert reserve_within(broker, [queue], lease=timings.long_lease,
                              timeout=timings.slack + timings.tick, tick=timings.tick) == [], (
            "a nack after the ack brought the message back")
        if broker.capabilities.exact_stats:
            stats = broker.stats(queue)
            assert (stats.ready, stats.delayed, stats.reserved) == (0, 0, 0)

    def test_nack_of_a_nacked_delivery_does_not_duplicate_it(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        message_id = broker.enqueue(queue, b"once")
        [held] = reserve_within(broker, [queue], lease=timings.long_lease,
                                timeout=2 + timings.slack, tick=timings.tick)
        broker.nack(held)
        broker.nack(held)
        got = reserve_within(broker, [queue], lease=timings.long_lease, limit=10,
                             timeout=2 + timings.slack, tick=timings.tick)
        got += reserve_within(broker, [queue], lease=timings.long_lease, limit=10,
                              timeout=timings.tick, tick=timings.tick)
        assert [r.message_id for r in got] == [message_id]


class BrokerLapsedLeaseContract(BrokerFixtures):
    """A lease that ran out is gone: the message counts as ready and purge deletes it."""

    def _lapse(self, broker: Broker, queue: str, timings: BrokerTimings) -> Reservation:
        broker.enqueue(queue, b"lapsed")
        [held] = reserve_within(broker, [queue], lease=timings.lease,
                                timeout=2 + timings.slack, tick=timings.tick)
        time.sleep(timings.lease + timings.slack)
        return held

    def test_stats_count_a_lapsed_lease_as_ready_not_reserved(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        self._lapse(broker, queue, timings)
        stats = settled_stats(broker, queue, timings,
                              lambda s: (s.ready, s.reserved) == (1, 0))
        assert (stats.ready, stats.delayed, stats.reserved) == (1, 0, 0)

    def test_extend_to_a_shorter_lease_lets_it_lapse_at_the_new_time(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        # extend sets the lease to `lease` seconds from now: not longer, not never.
        message_id = broker.enqueue(queue, b"shortened")
        [held] = reserve_within(broker, [queue], lease=timings.long_lease,
                                timeout=2 + timings.slack, tick=timings.tick)
        assert broker.extend(held, lease=timings.lease) is True
        [again] = reserve_within(broker, [queue], lease=timings.long_lease,
                                 timeout=timings.lease + 2 * timings.slack + timings.tick,
                                 tick=timings.tick)
        assert (again.message_id, again.attempts) == (message_id, 2)

    def test_purge_deletes_a_message_whose_lease_lapsed(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        held = self._lapse(broker, queue, timings)
        purged = broker.purge(queue)
        if broker.capabilities.exact_stats:
            assert purged == 1
        assert reserve_within(broker, [queue], lease=timings.long_lease,
                              timeout=timings.slack + timings.tick, tick=timings.tick) == []
        assert broker.extend(held, lease=timings.long_lease) is False


class BrokerQueueIsolationContract(BrokerFixtures):
    """Queues never see each other's messages, counts or dead letters, whatever their names;
    several queues given to ``reserve`` are served in the order given."""

    @pytest.fixture
    def named(self, broker: Broker) -> Iterator[Callable[[str], str]]:
        """Registers queue names of a test's own choosing; purges them at teardown."""
        names: list[str] = []

        def register(name: str) -> str:
            names.append(name)
            return name

        yield register
        for name in names:
            with contextlib.suppress(ConveyorError):
                broker.purge(name)
                broker.delete_dead(name)

    def test_purge_and_stats_stay_within_their_queue(
            self, broker: Broker, queue: str, named: Callable[[str], str],
            timings: BrokerTimings) -> None:
        require_delay(broker, timings)
        longer = named(queue + "-more")  # a prefix match would take it along
        for name in (queue, longer):
            broker.enqueue_many(name, [b"r1", b"r2", b"r3"])
            broker.enqueue(name, b"later", delay=timings.long_delay)
        purged = broker.purge(queue)
        if broker.capabilities.exact_stats:
            assert purged == 4  # ready + delayed (3 | 1 would be 3)
        stats = settled_stats(broker, longer, timings,
                              lambda s: (s.ready, s.delayed) == (3, 1))
        assert (stats.ready, stats.delayed, stats.reserved, stats.dead) == (3, 1, 0, 0)
        got = reserve_count(broker, [longer], 3, lease=timings.long_lease,
                            timeout=2 + timings.slack, tick=timings.tick)
        assert sorted(r.body for r in got) == [b"r1", b"r2", b"r3"]
        assert broker.reserve([queue], lease=timings.long_lease) == []

    def test_dead_letters_and_their_counts_stay_within_their_queue(
            self, broker: Broker, queue: str, named: Callable[[str], str],
            timings: BrokerTimings) -> None:
        longer = named(queue + "-more")
        broker.enqueue(longer, b"alive")
        broker.enqueue(queue, b"poison")
        [held] = reserve_within(broker, [queue], lease=timings.long_lease,
                                timeout=2 + timings.slack, tick=timings.tick)
        broker.dead_letter(held, reason="poison")
        assert broker.dead_letters(longer) == []
        stats = settled_stats(broker, longer, timings, lambda s: s.ready == 1)
        assert (stats.ready, stats.dead) == (1, 0)
        assert broker.delete_dead(longer) == 0
        assert [d.body for d in broker.dead_letters(queue)] == [b"poison"]
        [alive] = reserve_within(broker, [longer], lease=timings.long_lease,
                                 timeout=2 + timings.slack, tick=timings.tick)
        assert alive.body == b"alive"

    def test_several_queues_are_served_in_the_order_given(
            self, broker: Broker, new_queue: Callable[[], str], timings: BrokerTimings) -> None:
        first, second = new_queue(), new_queue()
        for name in (first, second):
            broker.enqueue_many(name, [name.encode() + b"-1", name.encode() + b"-2"])
        for order in ([second, first], [first, second]):
            got = reserve_count(broker, order, 4, lease=timings.long_lease,
                                timeout=2 + timings.slack, tick=timings.tick)
            assert [r.queue for r in got] == [order[0], order[0], order[1], order[1]], (
                "a later queue was served before an earlier one")
            for reservation in got:
                broker.nack(reservation)

    def test_an_earlier_queue_is_drained_first_within_one_reserve(
            self, broker: Broker, new_queue: Callable[[], str], timings: BrokerTimings) -> None:
        first, second = new_queue(), new_queue()
        broker.enqueue_many(second, [b"s1", b"s2"])
        broker.enqueue_many(first, [b"f1", b"f2"])
        held: list[Reservation] = []
        while len(held) < 2:
            got = reserve_within(broker, [first, second], lease=timings.long_lease, limit=3,
                                 timeout=2 + timings.slack, tick=timings.tick)
            assert got, "messages were not delivered"
            held += got
        queues = [r.queue for r in held]
        assert queues[:2] == [first, first], f"served {queues} for queues [first, second]"

    def test_queue_names_that_could_collide_are_kept_apart(
            self, broker: Broker, queue: str, named: Callable[[str], str],
            timings: BrokerTimings) -> None:
        names = variants(queue) + list(long_pair(queue, 200))
        accepted: list[str] = []
        for name in names:
            try:
                broker.enqueue(name, name.encode())
            except (ConfigurationError, ValueRefusedError):
                continue  # refused with a clear error: allowed
            accepted.append(named(name))
        assert queue in accepted, "the plain base name was refused"
        listed = broker.queues()  # best effort: may be empty, but not partial
        if listed:
            missing = [n for n in accepted if n not in listed]
            assert not missing, f"queues() lists some queues in use but not {missing}"
        for name in accepted:
            got = reserve_within(broker, [name], lease=timings.long_lease, limit=10,
                                 timeout=2 + timings.slack, tick=timings.tick)
            assert [(r.queue, r.body) for r in got] == [(name, name.encode())], (
                f"queue {name!r} received {[r.body for r in got]}")
            if name == queue:
                broker.dead_letter(got[0], reason="dead in the base queue")
            else:
                broker.ack(got[0])
        for name in accepted:
            left = broker.reserve([name], lease=timings.long_lease, limit=10, wait=timings.tick)
            assert left == [], f"queue {name!r} received {[r.body for r in left]}"
            dead = [d.body for d in broker.dead_letters(name)]
            assert dead == ([queue.encode()] if name == queue else []), (
                f"queue {name!r} holds dead letters {dead}")


class BrokerCoherenceContract(BrokerFixtures):
    """Two driver instances on one store see one state: nothing cached hides another's
    ack, purge or dead letter."""

    def test_ack_through_one_instance_is_final_for_another(
            self, broker: Broker, broker_factory: Callable[[], Broker], queue: str,
            timings: BrokerTimings) -> None:
        other = broker_factory()
        other.enqueue(queue, b"seen by both")
        [held] = reserve_within(broker, [queue], lease=timings.lease,
                                timeout=2 + timings.slack, tick=timings.tick)
        broker.ack(held)
        assert reserve_within(other, [queue], lease=timings.long_lease,
                              timeout=timings.lease + timings.slack, tick=timings.tick) == []

    def test_purge_and_dead_letters_through_one_instance_are_seen_by_another(
            self, broker: Broker, broker_factory: Callable[[], Broker], queue: str,
            timings: BrokerTimings) -> None:
        other = broker_factory()
        assert other.dead_letters(queue) == []  # a reader that looked first
        broker.enqueue(queue, b"poison")
        [held] = reserve_within(broker, [queue], lease=timings.long_lease,
                                timeout=2 + timings.slack, tick=timings.tick)
        broker.dead_letter(held, reason="poison")
        assert [d.body for d in other.dead_letters(queue)] == [b"poison"]
        assert other.delete_dead(queue) == 1
        assert broker.dead_letters(queue) == []
        broker.enqueue_many(queue, [b"a", b"b"])
        other.purge(queue)
        assert reserve_within(broker, [queue], lease=timings.long_lease,
                              timeout=timings.slack + timings.tick, tick=timings.tick) == []
