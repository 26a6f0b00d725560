"""Contract: priorities, for brokers declaring ``capabilities.priorities``.

Such a broker takes ``priority=`` (0..9) on ``enqueue``/``enqueue_many``; within one queue a
ready message of a higher priority is reserved before any of a lower one, equal priorities
keep the broker's usual order, and a message keeps its priority when it is nacked or its
lease runs out. A broker without the capability is never passed the keyword (the core checks
the flag), so for it these tests only check that every message still arrives.
"""

from __future__ import annotations

import inspect

from conveyor.broker import Broker
from conveyor.testing.broker import BrokerFixtures, BrokerTimings, reserve_count, reserve_within


class BrokerPriorityContract(BrokerFixtures):
    """Higher priorities first, kept through nack and lease expiry."""

    def test_a_broker_whose_enqueue_takes_a_priority_declares_it(self, broker: Broker) -> None:
        # The core passes priority= only to brokers declaring the capability: one that takes
        # the keyword but does not declare it silently loses every task's priority.
        for method in (broker.enqueue, broker.enqueue_many):
            if "priority" in inspect.signature(method).parameters:
                assert broker.capabilities.priorities, (
                    f"{type(broker).__name__}.{method.__name__} takes priority= but the "
                    "broker does not declare priorities=True")

    def _send(self, broker: Broker, queue: str, body: bytes, priority: int) -> None:
        if broker.capabilities.priorities:
            broker.enqueue(queue, body, priority=priority)  # type: ignore[call-arg]
        else:
            broker.enqueue(queue, body)

    def test_higher_priority_is_reserved_first(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        for i in range(3):
            self._send(broker, queue, f"low-{i}".encode(), 0)
        self._send(broker, queue, b"top", 9)
        self._send(broker, queue, b"mid", 5)
        got = reserve_count(broker, [queue], 5, lease=timings.long_lease,
                            timeout=2 + timings.slack, tick=timings.tick)
        bodies = [r.body for r in got]
        if not broker.capabilities.priorities:
            assert sorted(bodies) == sorted([b"low-0", b"low-1", b"low-2", b"top", b"mid"])
            return
        assert bodies[:2] == [b"top", b"mid"]
        assert sorted(bodies[2:]) == [b"low-0", b"low-1", b"low-2"]
        if broker.capabilities.fifo:
            assert bodies[2:] == [b"low-0", b"low-1", b"low-2"]

    def test_equal_priorities_keep_enqueue_order_if_fifo(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        bodies = [f"p5-{i}".encode() for i in range(8)]
        for body in bodies:
            self._send(broker, queue, body, 5)
        got = reserve_count(broker, [queue], 8, lease=timings.long_lease,
                            timeout=2 + timings.slack, tick=timings.tick)
        if broker.capabilities.fifo:
            assert [r.body for r in got] == bodies
        else:
            assert sorted(r.body for r in got) == sorted(bodies)

    def test_priority_is_kept_through_nack(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        self._send(broker, queue, b"urgent", 8)
        [held] = reserve_within(broker, [queue], lease=timings.long_lease,
                                timeout=2 + timings.slack, tick=timings.tick)
        self._send(broker, queue, b"plain", 0)
        broker.nack(held)
        got = reserve_count(broker, [queue], 2, lease=timings.long_lease,
                            timeout=2 + timings.slack, tick=timings.tick)
        if broker.capabilities.priorities:
            assert [r.body for r in got] == [b"urgent", b"plain"]
        else:
            assert sorted(r.body for r in got) == [b"plain", b"urgent"]

    def test_enqueue_many_takes_one_priority_for_the_batch(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        self._send(broker, queue, b"first-plain", 0)
        if broker.capabilities.priorities:
            broker.enqueue_many(queue, [b"a", b"b"], priority=7)  # type: ignore[call-arg]
        else:
            broker.enqueue_many(queue, [b"a", b"b"])
        got = reserve_count(broker, [queue], 3, lease=timings.long_lease,
                            timeout=2 + timings.slack, tick=timings.tick)
        bodies = [r.body for r in got]
        if broker.capabilities.priorities:
            assert sorted(bodies[:2]) == [b"a", b"b"] and bodies[2] == b"first-plain"
            if broker.capabilities.fifo:
                assert bodies[:2] == [b"a", b"b"]
        else:
            assert sorted(bodies) == [b"a", b"b", b"first-plain"]
