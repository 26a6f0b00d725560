"""The broker contract: what every :class:`~conveyor.broker.Broker` driver must do, as tests.

Subclass :class:`BrokerContract` (or only some of its area mixins) in a ``Test*`` class and
provide a ``broker_url`` fixture. Every test works on fresh queues named ``contract-<uuid>``, so
a shared server is fine. Waits are derived from the driver's :class:`BrokerCapabilities`
(see :class:`BrokerTimings`), so a driver with a one-second clock gets longer but still correct
waits. A test that needs a capability the driver does not declare is skipped, naming it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest

from conveyor.broker import Broker, BrokerCapabilities, QueueStats, Reservation
from conveyor.registry import broker_from_url

#: Bodies every driver must carry byte for byte: NUL, every byte value, invalid UTF-8.
ODD_BODIES: tuple[bytes, ...] = (
    b"x",
    b'{"task": "add", "args": [1, 2]}',
    bytes(range(256)),
    b"\x00\x00\x00",
    b"\xff\xfe\xfd not utf-8 \xc3\x28",
    "snowman \u2603, emoji \U0001f600".encode(),
    b" leading and trailing spaces \n",
)
LARGE_BODY_SIZE = 256 * 1024


def _clamp(value: float, limit: float | None) -> float:
    return value if limit is None else min(value, limit)


@dataclass(frozen=True)
class BrokerTimings:
    """Waits the suite uses, derived from a driver's capabilities (seconds)."""

    #: the server clock's step for delays and leases
    resolution: float
    #: a pause short enough to keep the suite fast yet one the driver can tell apart
    tick: float
    #: allowance for the clock step, scheduling and network on top of a lease or delay
    slack: float
    #: a short lease the tests wait out
    lease: float
    #: a lease no test outlives
    long_lease: float
    #: a short delay the tests wait out
    delay: float
    #: a delay no test outlives
    long_delay: float

    @classmethod
    def of(cls, caps: BrokerCapabilities) -> BrokerTimings:
        """Timings for a driver declaring ``caps``."""
        res = caps.time_resolution
        return cls(
            resolution=res,
            tick=max(0.2, 2 * res),
            slack=max(0.3, 2 * res),
            lease=_clamp(max(0.5, 2 * res), caps.max_lease),
            long_lease=_clamp(60.0, caps.max_lease),
            delay=_clamp(max(0.5, 3 * res), caps.max_delay),
            long_delay=_clamp(600.0, caps.max_delay),
        )


def reserve_within(broker: Broker, queues: Sequence[str], *, lease: float, timeout: float,
                   tick: float, limit: int = 1) -> list[Reservation]:
    """Reserve, retrying with waits of at most ``tick``, until something comes or ``timeout``.

    Short waits keep the suite lenient about whether a driver's blocking ``reserve`` wakes for
    a delay or lease that runs out mid-wait (the interface only promises it for new messages).
    """
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        got = broker.reserve(queues, lease=lease, wait=max(0.0, min(tick, left)), limit=limit)
        if got or left <= 0:
            return got


def reserve_count(broker: Broker, queues: Sequence[str], count: int, *, lease: float,
                  timeout: float, tick: float) -> list[Reservation]:
    """Reserve until ``count`` reservations are held or ``timeout`` passes; return them all."""
    deadline = time.monotonic() + timeout
    held: list[Reservation] = []
    while len(held) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        held += reserve_within(broker, queues, lease=lease, timeout=left, tick=tick,
                               limit=min(10, count - len(held)))
    return held


def redelivered(broker: Broker, queue: str, body: bytes, timings: BrokerTimings
                ) -> tuple[Reservation, Reservation]:
    """Send ``body``, reserve it under a short lease, let the lease lapse and reserve it
    again: ``(stale, fresh)``, the first delivery and the one that now holds the message."""
    broker.enqueue(queue, body)
    [stale] = reserve_within(broker, [queue], lease=timings.lease,
                             timeout=2 + timings.slack, tick=timings.tick)
    [fresh] = reserve_within(broker, [queue], lease=timings.long_lease,
                             timeout=timings.lease + timings.slack + timings.tick,
                             tick=timings.tick)
    return stale, fresh


#: How long an inexact driver's counts may take to settle (``exact_stats=False``).
STATS_SETTLE = 10.0


def settled_stats(broker: Broker, queue: str, timings: BrokerTimings,
                  settled: Callable[[QueueStats], bool]) -> QueueStats:
    """``broker.stats(queue)``: at once for an exact driver; for one declaring
    ``exact_stats=False`` (approximate, eventually consistent counts, as SQS's), the first
    reading within :data:`STATS_SETTLE` seconds (plus the clock step) that ``settled``
    accepts, else the last one. The caller asserts on it either way."""
    stats = broker.stats(queue)
    deadline = time.monotonic() + STATS_SETTLE + timings.resolution
    while not broker.capabilities.exact_stats and not settled(stats) and (
            time.monotonic() < deadline):
        time.sleep(timings.tick / 2)
        stats = broker.stats(queue)
    return stats


def require_capability(condition: bool, broker: Broker, what: str) -> None:
    """Skip the calling test, naming the capability ``what`` the driver does not declare."""
    if not condition:
        pytest.skip(f"{type(broker).__name__} does not declare {what}")


def require_delay(broker: Broker, timings: BrokerTimings) -> None:
    """Skip the calling test when the driver's ``max_delay`` is too short to observe."""
    needed = max(0.2, 2 * timings.resolution)
    if timings.delay < needed:
        pytest.skip(f"{type(broker).__name__} declares max_delay="
                    f"{broker.capabilities.max_delay}, shorter than the {needed}s this test needs")


class BrokerFixtures:
    """Fixtures shared by the broker contract areas.

    Provide ``broker_url``. A driver that is not installed through the ``conveyor.brokers``
    entry point group may override ``broker_factory`` (a callable building a new, open broker)
    instead; ``broker`` and the tests that need several instances use it.
    """

    @pytest.fixture
    def broker_url(self, request: pytest.FixtureRequest) -> str:
        """The URL of the driver under test. Override it; with the opt-in plugin
        (``-p conveyor.testing.plugin``) it defaults to ``--conveyor-broker-url``."""
        try:
            return str(request.getfixturevalue("conveyor_broker_url"))
        except pytest.FixtureLookupError:
            pytest.fail("define a `broker_url` fixture returning the driver's URL, or run "
                        "pytest with `-p conveyor.testing.plugin --conveyor-broker-url=URL`",
                        pytrace=False)

    @pytest.fixture
    def broker_factory(self, broker_url: str) -> Iterator[Callable[[], Broker]]:
        """Builds brokers from ``broker_url`` through the registry; closes them at teardown."""
        made: list[Broker] = []

        def make() -> Broker:
            made.append(broker_from_url(broker_url))
            return made[-1]

        yield make
        for built in made:
            built.close()

    @pytest.fixture
    def broker(self, broker_factory: Callable[[], Broker]) -> Broker:
        """The driver under test."""
        return broker_factory()

    @pytest.fixture
    def timings(self, broker: Broker) -> BrokerTimings:
        """Waits derived from the driver's declared capabilities."""
        return BrokerTimings.of(broker.capabilities)

    @pytest.fixture
    def new_queue(self, broker: Broker) -> Iterator[Callable[[], str]]:
        """Makes unique queue names; purges them and their dead letters at teardown."""
        names: list[str] = []

        def make() -> str:
            names.append(f"contract-{uuid.uuid4().hex[:16]}")
            return names[-1]

        yield make
        for name in names:
            broker.purge(name)
            broker.delete_dead(name)

    @pytest.fixture
    def queue(self, new_queue: Callable[[], str]) -> str:
        """A fresh queue of this test's own."""
        return new_queue()


class BrokerEnqueueReserveContract(BrokerFixtures):
    """enqueue / enqueue_many / reserve: bytes, order, limits, queue priority, waiting."""

    def test_reservation_carries_the_enqueued_id_queue_and_body(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        message_id = broker.enqueue(queue, b"hello")
        assert isinstance(message_id, str)
        assert message_id
        [got] = broker.reserve([queue], lease=timings.long_lease)
        assert (got.queue, got.message_id, got.body, got.attempts) == (
            queue, message_id, b"hello", 1)

    def test_body_bytes_survive_the_roundtrip_exactly(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        ids = {broker.enqueue(queue, body): body for body in ODD_BODIES}
        got = reserve_count(broker, [queue], len(ids), lease=timings.long_lease,
                            timeout=5 + timings.slack, tick=timings.tick)
        assert {r.message_id: r.body for r in got} == ids
        assert all(type(r.body) is bytes for r in got)

    def test_large_body_survives_the_roundtrip(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        body = (bytes(range(256)) * (LARGE_BODY_SIZE // 256))[:LARGE_BODY_SIZE]
        message_id = broker.enqueue(queue, body)
        [got] = reserve_within(broker, [queue], lease=timings.long_lease,
                               timeout=5 + timings.slack, tick=timings.tick)
        assert got.message_id == message_id
        assert got.body == body
        declared = broker.capabilities.max_message_size
        assert declared is None or declared >= LARGE_BODY_SIZE, (
            f"declares max_message_size={declared}, below the {LARGE_BODY_SIZE}-byte body it "
            "just carried: the core refuses to send any body over the declared size")

    def test_every_enqueued_message_is_delivered(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        ids = {broker.enqueue(queue, b"m%d" % i) for i in range(20)}
        got = reserve_count(broker, [queue], 20, lease=timings.long_lease,
                            timeout=5 + timings.slack, tick=timings.tick)
        assert sorted(r.message_id for r in got) == sorted(ids)

    def test_messages_on_one_queue_arrive_once_each_in_order_if_fifo(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        ids = [broker.enqueue(queue, b"m%d" % i) for i in range(10)]
        ids += broker.enqueue_many(queue, [b"n%d" % i for i in range(10)])
        got = [r.message_id for r in reserve_count(
            broker, [queue], 20, lease=timings.long_lease, timeout=2 + timings.slack,
            tick=timings.tick)]
        assert sorted(got) == sorted(ids)  # every message, once
        if broker.capabilities.fifo:
            assert got == ids  # and, as declared, in enqueue order

    def test_reserve_returns_at_most_limit_messages(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        broker.enqueue_many(queue, [b"a", b"b", b"c", b"d", b"e"])
        first = reserve_within(broker, [queue], lease=timings.long_lease, limit=3,
                               timeout=2 + timings.slack, tick=timings.tick)
        assert 1 <= len(first) <= 3
        rest = reserve_count(broker, [queue], 5 - len(first), lease=timings.long_lease,
                             timeout=5 + timings.slack, tick=timings.tick)
        assert len({r.message_id for r in first + rest}) == 5
        assert broker.reserve([queue], lease=timings.long_lease, limit=10) == []

    def test_reserve_with_limit_one_returns_one_message(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        broker.enqueue_many(queue, [b"a", b"b", b"c"])
        got = reserve_within(broker, [queue], lease=timings.long_lease,
                             timeout=2 + timings.slack, tick=timings.tick)
        assert len(got) == 1

    def test_earlier_queues_are_served_first(
            self, broker: Broker, new_queue: Callable[[], str], timings: BrokerTimings) -> None:
        high, low = new_queue(), new_queue()
        low_id = broker.enqueue(low, b"low")
        high_id = broker.enqueue(high, b"high")
        [first] = reserve_within(broker, [high, low], lease=timings.long_lease,
                                 timeout=2 + timings.slack, tick=timings.tick)
        assert (first.queue, first.message_id) == (high, high_id)
        [second] = reserve_within(broker, [high, low], lease=timings.long_lease,
                                  timeout=2 + timings.slack, tick=timings.tick)
        assert (second.queue, second.message_id) == (low, low_id)

    def test_reserve_on_an_empty_queue_without_wait_returns_empty_list_at_once(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        started = time.monotonic()
        assert broker.reserve([queue], lease=timings.lease, wait=0.0) == []
        assert time.monotonic() - started < 1.0 + timings.slack

    def test_reserve_blocks_for_its_wait_then_returns_empty_list(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        wait = max(0.5, 2 * timings.resolution)
        started = time.monotonic()
        assert broker.reserve([queue], lease=timings.lease, wait=wait) == []
        elapsed = time.monotonic() - started
        assert elapsed >= wait - timings.resolution - 0.05, f"returned after {elapsed:.3f}s"
        assert elapsed < wait + 1.0 + timings.slack, f"returned after {elapsed:.3f}s"

    def test_reserve_with_a_tiny_wait_returns_promptly(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        # What is left of a wait after one round trip can be a fraction of a millisecond; it
        # must not become a server's "block forever" (a 0 s timeout) when the driver rounds it.
        trips = []
        for _ in range(3):
            started = time.monotonic()
            broker.reserve([queue], lease=timings.lease, wait=0.0)
            trips.append(time.monotonic() - started)
        trip = sorted(trips)[1]
        waits = [0.0005, 0.001] + [trip + k * 0.0002 for k in range(1, 9)]
        for wait in waits:
            started = time.monotonic()
            assert broker.reserve([queue], lease=timings.lease, wait=wait) == []
            elapsed = time.monotonic() - started
            assert elapsed < 1.0 + timings.slack, f"wait={wait} returned after {elapsed:.3f}s"

    def test_message_arriving_during_a_wait_is_returned(
            self, broker: Broker, broker_factory: Callable[[], Broker], queue: str,
            timings: BrokerTimings) -> None:
        producer = broker_factory()
        timer = threading.Timer(timings.tick, producer.enqueue, (queue, b"late"))
        timer.start()
        try:
            got = broker.reserve([queue], lease=timings.long_lease,
                                 wait=timings.tick + 3.0 + timings.slack)
        finally:
            timer.join()
        assert [r.body for r in got] == [b"late"]

    def test_blocking_reserve_wakes_promptly_for_a_new_message(
            self, broker: Broker, broker_factory: Callable[[], Broker], queue: str,
            timings: BrokerTimings) -> None:
        require_capability(broker.capabilities.blocking_reserve, broker, "blocking_reserve=True")
        lag = _wake_lag(broker, broker_factory(), queue, timings, after=timings.tick, wait=10.0)
        assert lag < max(0.5, 2 * timings.resolution), f"woke {lag:.3f}s after the enqueue"

    def test_blocking_reserve_still_wakes_promptly_late_in_a_long_wait(
            self, broker: Broker, broker_factory: Callable[[], Broker], queue: str,
            timings: BrokerTimings) -> None:
        # A driver that polls while it waits must cap its backoff: a message sent 3 s into a
        # 15 s wait is found within a second, not at the end of a pause that kept doubling.
        require_capability(broker.capabilities.blocking_reserve, broker, "blocking_reserve=True")
        lag = _wake_lag(broker, broker_factory(), queue, timings, after=3.0, wait=15.0)
        assert lag < max(1.0, 2 * timings.resolution), f"woke {lag:.3f}s after the enqueue"

    def test_enqueue_many_stores_every_message_with_distinct_ids(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        bodies = [b"batch-%d" % i for i in range(25)]
        ids = broker.enqueue_many(queue, bodies)
        assert len(ids) == len(set(ids)) == 25
        got = reserve_count(broker, [queue], 25, lease=timings.long_lease,
                            timeout=5 + timings.slack, tick=timings.tick)
        assert {r.message_id: r.body for r in got} == dict(zip(ids, bodies, strict=True))

    def test_enqueue_many_of_nothing_returns_empty_list(self, broker: Broker, queue: str) -> None:
        assert broker.enqueue_many(queue, []) == []

    def test_attempts_count_every_delivery(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        broker.enqueue(queue, b"again")
        [first] = reserve_within(broker, [queue], lease=timings.long_lease,
                                 timeout=2 + timings.slack, tick=timings.tick)
        broker.nack(first)
        [second] = reserve_within(broker, [queue], lease=timings.lease,
                                  timeout=2 + timings.slack, tick=timings.tick)
        [third] = reserve_within(broker, [queue], lease=timings.long_lease,
                                 timeout=timings.lease + timings.slack + timings.tick,
                                 tick=timings.tick)
        assert [first.attempts, second.attempts, third.attempts] == [1, 2, 3]
        assert first.message_id == second.message_id == third.message_id


class BrokerLeaseContract(BrokerFixtures):
    """Leases: one live lease per message, redelivery after expiry, extend, ack, nack."""

    def test_reserved_message_is_not_delivered_twice_while_leased(
            self, broker: Broker, broker_factory: Callable[[], Broker], queue: str,
            timings: BrokerTimings) -> None:
        broker.enqueue(queue, b"once")
        held = reserve_within(broker, [queue], lease=timings.long_lease,
                              timeout=2 + timings.slack, tick=timings.tick)
        assert len(held) == 1
        other = broker_factory()
        assert broker.reserve([queue], lease=timings.long_lease, wait=timings.tick) == []
        assert other.reserve([queue], lease=timings.long_lease, wait=timings.tick) == []

    def test_unacked_message_is_redelivered_after_its_lease(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        message_id = broker.enqueue(queue, b"come back")
        [_first] = reserve_within(broker, [queue], lease=timings.lease,
                                 timeout=2 + timings.slack, tick=timings.tick)
        reserved_at = time.monotonic()
        [again] = reserve_within(broker, [queue], lease=timings.long_lease,
                                 timeout=timings.lease + timings.slack + timings.tick,
                                 tick=timings.tick)
        assert time.monotonic() - reserved_at >= timings.lease - timings.resolution - 0.05
        assert (again.message_id, again.body, again.attempts) == (message_id, b"come back", 2)

    def test_acked_message_is_never_delivered_again(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        broker.enqueue(queue, b"done")
        [held] = reserve_within(broker, [queue], lease=timings.lease,
                                timeout=2 + timings.slack, tick=timings.tick)
        broker.ack(held)
        assert reserve_within(broker, [queue], lease=timings.lease,
                              timeout=timings.lease + timings.slack, tick=timings.tick) == []

    def test_ack_is_idempotent(self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        broker.enqueue(queue, b"twice")
        [held] = reserve_within(broker, [queue], lease=timings.long_lease,
                                timeout=2 + timings.slack, tick=timings.tick)
        broker.ack(held)
        broker.ack(held)
        assert broker.reserve([queue], lease=timings.lease) == []
        if broker.capabilities.exact_stats:
            stats = broker.stats(queue)
            assert (stats.ready, stats.reserved) == (0, 0)

    def test_ack_many_acks_each_held_message(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        broker.enqueue_many(queue, [b"a", b"b", b"c"])
        held = reserve_count(broker, [queue], 3, lease=timings.long_lease,
                             timeout=2 + timings.slack, tick=timings.tick)
        assert len(held) == 3
        broker.ack_many(held[:2])
        broker.ack_many(held[:2])  # idempotent, like ack
        broker.ack_many([])
        broker.nack(held[2])
        [left] = reserve_within(broker, [queue], lease=timings.long_lease,
                                timeout=2 + timings.slack, tick=timings.tick)
        assert left.body == held[2].body

    def test_extend_keeps_the_message_away_and_returns_true(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        broker.enqueue(queue, b"long task")
        [held] = reserve_within(broker, [queue], lease=timings.lease,
                                timeout=2 + timings.slack, tick=timings.tick)
        reserved_at = time.monotonic()
        time.sleep(timings.lease / 2)
        assert broker.extend(held, lease=timings.lease + 3 * timings.slack) is True
        # Past the original lease, well inside the extended one.
        time.sleep(max(0.0, reserved_at + timings.lease + timings.slack - time.monotonic()))
        assert broker.reserve([queue], lease=timings.lease) == []
        assert broker.extend(held, lease=timings.long_lease) is True
        broker.ack(held)

    def test_extend_after_the_lease_expired_returns_false(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        broker.enqueue(queue, b"too late")
        [held] = reserve_within(broker, [queue], lease=timings.lease,
                                timeout=2 + timings.slack, tick=timings.tick)
        time.sleep(timings.lease + timings.slack)
        assert broker.extend(held, lease=timings.long_lease) is False

    def test_extend_after_redelivery_returns_false_and_keeps_the_new_lease(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        stale, fresh = redelivered(broker, queue, b"taken over", timings)
        assert broker.extend(stale, lease=timings.long_lease) is False
        assert broker.extend(fresh, lease=timings.long_lease) is True

    def test_extend_after_ack_returns_false(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        broker.enqueue(queue, b"finished")
        [held] = reserve_within(broker, [queue], lease=timings.long_lease,
                                timeout=2 + timings.slack, tick=timings.tick)
        broker.ack(held)
        assert broker.extend(held, lease=timings.long_lease) is False

    def test_stale_ack_does_not_hand_the_message_to_a_third_consumer(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        # The interface allows a stale ack to be ignored or to remove the message (its first
        # holder did finish); it must not release the new holder's lease or raise.
        stale, fresh = redelivered(broker, queue, b"stale ack", timings)
        assert fresh.attempts == 2
        broker.ack(stale)
        assert broker.reserve([queue], lease=timings.long_lease, wait=timings.tick) == []
        broker.ack(fresh)
        assert broker.reserve([queue], lease=timings.long_lease) == []

    def test_stale_ack_in_a_batch_leaves_the_new_holder_alone(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        stale, fresh = redelivered(broker, queue, b"stale in a batch", timings)
        broker.enqueue(queue, b"held")
        [other] = reserve_within(broker, [queue], lease=timings.long_lease,
                                 timeout=2 + timings.slack, tick=timings.tick)
        broker.ack_many([stale, other])
        assert broker.reserve([queue], lease=timings.long_lease, wait=timings.tick) == []
        assert broker.extend(fresh, lease=timings.long_lease) is True  # still the holder
        broker.ack_many([fresh])
        assert broker.reserve([queue], lease=timings.long_lease) == []
        if broker.capabilities.exact_stats:
            stats = broker.stats(queue)
            assert (stats.ready, stats.reserved) == (0, 0)

    def test_nack_makes_the_message_deliverable_again_at_once(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        message_id = broker.enqueue(queue, b"retry me")
        [held] = reserve_within(broker, [queue], lease=timings.long_lease,
                                timeout=2 + timings.slack, tick=timings.tick)
        broker.nack(held)
        [again] = reserve_within(broker, [queue], lease=timings.long_lease,
                                 timeout=timings.slack + timings.tick, tick=timings.tick)
        assert (again.message_id, again.body, again.attempts) == (message_id, b"retry me", 2)

    def test_nack_with_delay_keeps_the_message_away_for_the_delay(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        require_delay(broker, timings)
        message_id = broker.enqueue(queue, b"later")
        [held] = reserve_within(broker, [queue], lease=timings.long_lease,
                                timeout=2 + timings.slack, tick=timings.tick)
        nacked_at = time.monotonic()
        broker.nack(held, delay=timings.delay)
        assert broker.reserve([queue], lease=timings.long_lease,
                              wait=timings.delay / 2) == []
        [again] = reserve_within(broker, [queue], lease=timings.long_lease,
                                 timeout=timings.delay + timings.slack + timings.tick,
                                 tick=timings.tick)
        assert time.monotonic() - nacked_at >= timings.delay - timings.resolution - 0.05
        assert (again.message_id, again.attempts) == (message_id, 2)


class BrokerDelayContract(BrokerFixtures):
    """Delays are kept by the broker: not visible before, visible after, counted as delayed."""

    def test_delayed_message_is_not_delivered_before_its_delay(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        require_delay(broker, timings)
        broker.enqueue(queue, b"not yet", delay=timings.delay)
        assert broker.reserve([queue], lease=timings.long_lease) == []
        assert broker.reserve([queue], lease=timings.long_lease,
                              wait=timings.delay / 2) == []

    def test_delayed_message_is_delivered_after_its_delay(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        require_delay(broker, timings)
        enqueued_at = time.monotonic()
        message_id = broker.enqueue(queue, b"now", delay=timings.delay)
        [got] = reserve_within(broker, [queue], lease=timings.long_lease,
                               timeout=timings.delay + timings.slack + timings.tick,
                               tick=timings.tick)
        assert time.monotonic() - enqueued_at >= timings.delay - timings.resolution - 0.05
        assert (got.message_id, got.body, got.attempts) == (message_id, b"now", 1)

    def test_delayed_messages_do_not_hold_back_ready_ones(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        broker.enqueue(queue, b"later", delay=timings.long_delay)
        ready_id = broker.enqueue(queue, b"ready")
        got = reserve_within(broker, [queue], lease=timings.long_lease, limit=10,
                             timeout=2 + timings.slack, tick=timings.tick)
        assert [r.message_id for r in got] == [ready_id]

    def test_enqueue_many_with_delay_delays_every_message(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        require_delay(broker, timings)
        ids = broker.enqueue_many(queue, [b"d1", b"d2", b"d3"], delay=timings.delay)
        assert broker.reserve([queue], lease=timings.long_lease, limit=10) == []
        got = reserve_count(broker, [queue], 3, lease=timings.long_lease,
                            timeout=timings.delay + timings.slack + 2 * timings.tick,
                            tick=timings.tick)
        assert sorted(r.message_id for r in got) == sorted(ids)

    def test_the_longest_declared_delay_is_accepted(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        limit = broker.capabilities.max_delay
        broker.enqueue(queue, b"far away", delay=3600.0 if limit is None else limit)
        assert broker.reserve([queue], lease=timings.long_lease) == []

    def test_stats_count_a_delayed_message_as_delayed(
            self, broker: Broker, queue: str, timings: BrokerTimings) -> None:
        broker.enqueue(queue, b"counted", delay=timings.long_delay)
        stats = settled_stats(broker, queue, timings,
                              lambda s: (s.ready, s.delayed, s.reserved) == (0, 1, 0))
        assert (stats.ready, stats.delayed, stats.reserved) == (0, 1, 0)


def _wake_lag(broker: Broker, producer: Broker, queue: str, timings: BrokerTimings, *,
              after: float, wait: float) -> float:
    """Seconds between ``producer`` enqueuing a message ``after`` seconds into a
    ``broker.reserve(wait=wait)`` and that reserve returning it (asserted)."""
    sent_at: list[float] = []

    def send() -> None:
        producer.enqueue(queue, b"wake")
        sent_at.append(time.monotonic())

    timer = threading.Timer(after, send)
    timer.start()
    try:
        got = broker.reserve([queue], lease=timings.long_lease, wait=wait)
        received_at = time.monotonic()
    finally:
        timer.join()
    assert [r.body for r in got] == [b"wake"]
    return received_at - sent_at[0]
