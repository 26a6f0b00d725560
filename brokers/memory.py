"""``memory://[name]``: an in-process broker for tests and for users' own unit tests.

Brokers with the same name in one process share their queues. Nothing leaves the process, so
workers in other processes cannot use it (``shared_between_processes=False``).

This is the reference driver of docs/driver-authors.md: each method's docstring names the
contract rule it keeps (the tests of :mod:`conveyor.testing` that check it) and how. One
``threading.Condition`` per name guards everything, which is what makes each operation atomic;
a server-backed driver gets the same atomicity from one statement, script or conditional write.

Layout per queue: ``ready`` (FIFO per priority level), ``delayed`` (a heap by due time),
``reserved`` (message id -> lease expiry and message), ``dead`` (id -> DeadLetter, in the order
they died). A delivery's token is ``_Message.token``, a new number on every reserve.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from conveyor.broker import Broker, BrokerCapabilities, DeadLetter, QueueStats, Reservation
from conveyor.url import URL


@dataclass
class _Message:
    message_id: str
    body: bytes
    attempts: int = 0
    token: int = 0  # changes on every delivery; a stale reservation no longer matches
    priority: int = 0


class _Ready:
    """Ready messages, one FIFO per priority; the highest non-empty one is served first."""

    def __init__(self) -> None:
        self.levels = [deque[_Message]() for _ in range(10)]

    def append(self, msg: _Message) -> None:
        self.levels[msg.priority].append(msg)

    def appendleft(self, msg: _Message) -> None:
        self.levels[msg.priority].appendleft(msg)

    def popleft(self) -> _Message:
        for level in reversed(self.levels):
            if level:
                return level.popleft()
        raise IndexError("no ready message")

    def clear(self) -> None:
        for level in self.levels:
            level.clear()

    def __len__(self) -> int:
        return sum(len(level) for level in self.levels)


@dataclass
class _Queue:
    ready: _Ready = field(default_factory=_Ready)
    delayed: list[tuple[float, int, _Message]] = field(default_factory=list)
    reserved: dict[str, tuple[float, _Message]] = field(default_factory=dict)
    dead: dict[str, DeadLetter] = field(default_factory=dict)


class _Store:
    """Queues shared by every MemoryBroker of one name."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.queues: dict[str, _Queue] = {}
        self.seq = itertools.count()

    def queue(self, name: str) -> _Queue:
        """The queue called exactly ``name`` (a dict key: no case folding, no patterns, so
        look-alike names stay apart: ``test_queue_names_that_could_collide_are_kept_apart``)."""
        return self.queues.setdefault(name, _Queue())

    def promote(self, name: str, now: float) -> None:
        """Move due delayed messages and expired leases back to ready (caller holds lock)."""
        q = self.queue(name)
        while q.delayed and q.delayed[0][0] <= now:
            q.ready.append(heapq.heappop(q.delayed)[2])
        for mid, (until, msg) in list(q.reserved.items()):
            if until <= now:
                del q.reserved[mid]
                q.ready.appendleft(msg)

    def next_due(self, names: Sequence[str]) -> float | None:
        """The earliest due time or lease expiry on ``names``: when a waiting reserve must
        look again (caller holds the lock)."""
        times = [q.delayed[0][0] for n in names if (q := self.queue(n)).delayed]
        times += [u for n in names for u, _ in self.queue(n).reserved.values()]
        return min(times) if times else None


_STORES: dict[str, _Store] = {}
_STORES_LOCK = threading.Lock()


class MemoryBroker(Broker):
    """A thread-safe in-process broker (``memory://`` or ``memory://name``).

    Capabilities, and why: ``fifo`` (one deque per priority level keeps enqueue order; a
    nacked or lapsed message returns to the front, as it waited longest), ``priorities`` (ten
    levels, highest served first: :class:`~conveyor.testing.BrokerPriorityContract`),
    ``shared_between_processes=False`` (the store is a dict in this process). Times are
    ``time.time()`` floats, so ``time_resolution`` keeps its 1 ms default; stats are exact.
    """

    capabilities: ClassVar[BrokerCapabilities] = BrokerCapabilities(
        fifo=True, shared_between_processes=False, priorities=True)

    def __init__(self, url: URL, **options: Any) -> None:
        """Join the store of the URL's name: two instances of one name are two clients of
        one server (``BrokerCoherenceContract``), as nothing is cached per instance."""
        super().__init__(url)
        name = url.raw.split("://", 1)[1].split("?", 1)[0] or "default"
        with _STORES_LOCK:
            self._store = _STORES.setdefault(name, _Store())

    def enqueue(self, queue: str, message: bytes, *, delay: float = 0.0,
                priority: int = 0) -> str:
        """One message through :meth:`enqueue_many` (same rules)."""
        return self.enqueue_many(queue, [message], delay=delay, priority=priority)[0]

    def enqueue_many(self, queue: str, messages: Sequence[bytes], *,
                     delay: float = 0.0, priority: int = 0) -> list[str]:
        """Store copies of the bytes under fresh uuid4 ids, due now or after ``delay``
        seconds (the delayed heap), at ``priority``; wake waiting consumers.

        Keeps: ``test_body_bytes_survive_the_roundtrip_exactly``,
        ``test_delayed_message_is_not_delivered_before_its_delay``,
        ``test_blocking_reserve_wakes_promptly_for_a_new_message``.
        """
        ids = []
        s = self._store
        with s.cond:
            q = s.queue(queue)
            for body in messages:
                msg = _Message(uuid.uuid4().hex, bytes(body), priority=priority)
                ids.append(msg.message_id)
                if delay > 0:
                    heapq.heappush(q.delayed, (time.time() + delay, next(s.seq), msg))
                else:
                    q.ready.append(msg)
            s.cond.notify_all()
        return ids

    def reserve(self, queues: Sequence[str], *, lease: float, wait: float = 0.0,
                limit: int = 1) -> list[Reservation]:
        """Take up to ``limit`` ready messages under one lock, queue by queue in the order
        given (``test_several_queues_are_served_in_the_order_given``), so no message gets two live
        leases (``test_racing_consumers_sharing_one_broker_get_each_message_exactly_once``).

        Due delays and lapsed leases are promoted first
        (``test_unacked_message_is_redelivered_after_its_lease``). Each delivery counts an
        attempt and gets a new token, the receipt every later call checks
        (``BrokerStaleReceiptContract``). With nothing ready it sleeps on the condition until an
        enqueue/nack wakes it, the next due time passes, or ``wait`` runs out (then ``[]``).
        """
        s = self._store
        deadline = time.monotonic() + wait
        with s.cond:
            while True:
                now = time.time()
                taken: list[Reservation] = []
                for name in queues:
                    s.promote(name, now)
                    q = s.queue(name)
                    while q.ready and len(taken) < limit:
                        msg = q.ready.popleft()
                        msg.attempts += 1
                        msg.token = next(s.seq)
                        q.reserved[msg.message_id] = (now + lease, msg)
                        taken.append(Reservation(name, msg.message_id, msg.body, msg.attempts,
                                                 receipt=msg.token))
                if taken:
                    return taken
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                due = s.next_due(queues)
                if due is not None:
                    left = min(left, max(due - now, 0.001))
                s.cond.wait(left)

    def _held(self, r: Reservation) -> _Message | None:
        """The message if ``r`` still holds its lease (caller holds the lock)."""
        q = self._store.queue(r.queue)
        entry = q.reserved.get(r.message_id)
        if entry is None or entry[1].token != r.receipt or entry[0] <= time.time():
            return None
        return entry[1]

    def ack(self, reservation: Reservation) -> None:
        """Delete the message only while ``reservation`` is its live delivery (same
        token, lease not lapsed), so acking twice, after the lease lapsed, or with a stale
        receipt changes nothing (``test_ack_is_idempotent``,
        ``test_stale_ack_does_not_hand_the_message_to_a_third_consumer``).
        """
        with self._store.cond:
            if self._held(reservation) is not None:
                del self._store.queue(reservation.queue).reserved[reservation.message_id]

    def nack(self, reservation: Reservation, *, delay: float = 0.0) -> None:
        """Give the message back (to the front of ready, or the delayed heap for
        ``delay``) only while ``reservation`` holds it: a stale or acked receipt cannot release the
        new holder or resurrect the message (``test_stale_nack_leaves_the_new_holder_alone``,
        ``test_receipts_of_an_acked_delivery_change_nothing``).
        """
        s = self._store
        with s.cond:
            msg = self._held(reservation)
            if msg is None:
                return
            q = s.queue(reservation.queue)
            del q.reserved[reservation.message_id]
            if delay > 0:
                heapq.heappush(q.delayed, (time.time() + delay, next(s.seq), msg))
            else:
                q.ready.appendleft(msg)
            s.cond.notify_all()

    def extend(self, reservation: Reservation, *, lease: float) -> bool:
        """Move the lease to ``lease`` seconds from now and return True while
        ``reservation`` holds it; False once it lapsed, was redelivered or acked
        (``test_extend_after_redelivery_returns_false_and_keeps_the_new_lease``).
        """
        with self._store.cond:
            msg = self._held(reservation)
            if msg is None:
                return False
            self._store.queue(reservation.queue).reserved[msg.message_id] = (
                time.time() + lease, msg)
            return True

    def dead_letter(self, reservation: Reservation, *, reason: str) -> None:
        """Move the message to the queue's dead letters with ``reason`` and the time, only
        while ``reservation`` holds it: a stale verdict never takes the message from the worker now
        running it (``test_stale_dead_letter_leaves_the_new_holder_alone``). Never delivered again
        (``test_dead_message_is_not_delivered_again``).
        """
        with self._store.cond:
            if self._held(reservation) is None:
                return
            q = self._store.queue(reservation.queue)
            del q.reserved[reservation.message_id]
            q.dead[reservation.message_id] = DeadLetter(
                reservation.queue, reservation.message_id, reservation.body, reason, time.time())

    def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters of this queue only, as dicts keep insertion
        order (``test_dead_letters_are_listed_oldest_first``,
        ``test_dead_letters_are_kept_per_queue``).
        """
        with self._store.cond:
            return list(self._store.queue(queue).dead.values())[:limit]

    def delete_dead(self, queue: str, message_ids: Iterable[str] | None = None) -> int:
        """Delete the named dead letters (all when None) and count those that existed
        (``test_delete_dead_by_id_deletes_only_those``).
        """
        with self._store.cond:
            dead = self._store.queue(queue).dead
            if message_ids is None:
                count = len(dead)
                dead.clear()
                return count
            return sum(dead.pop(mid, None) is not None for mid in message_ids)

    def purge(self, queue: str) -> int:
        """Delete this queue's ready and delayed messages and count them. Lapsed leases are
        promoted first, since such a message is ready again
        (``test_purge_deletes_a_message_whose_lease_lapsed``); live leases and dead letters stay
        (``test_purge_keeps_reserved_and_dead_messages``); other queues are untouched, whatever
        their names (``test_purge_and_stats_stay_within_their_queue``).
        """
        with self._store.cond:
            self._store.promote(queue, time.time())
            q = self._store.queue(queue)
            count = len(q.ready) + len(q.delayed)
            q.ready.clear()
            q.delayed.clear()
            return count

    def stats(self, queue: str) -> QueueStats:
        """Exact counts of this queue, after promoting due delays and lapsed leases so that
        a lapsed lease counts as ready, not reserved
        (``test_stats_count_a_lapsed_lease_as_ready_not_reserved``).
        """
        with self._store.cond:
            self._store.promote(queue, time.time())
            q = self._store.queue(queue)
            return QueueStats(queue, len(q.ready), len(q.delayed), len(q.reserved), len(q.dead))

    def queues(self) -> list[str]:
        """Every queue name used in this store (best effort in the interface; exact here)."""
        with self._store.cond:
            return sorted(n for n in self._store.queues if n != "__ping__")

    def ping(self) -> None:
        """Nothing to reach: an in-process store is always up (the outage contract does
        not apply: ``shared_between_processes=False``).
        """
        return None
