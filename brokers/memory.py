"""``memory://[name]``: an in-process broker for tests and for users' own unit tests.

Brokers with the same name in one process share their queues. Nothing leaves the process, so
workers in other processes cannot use it.
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
        times = [q.delayed[0][0] for n in names if (q := self.queue(n)).delayed]
        times += [u for n in names for u, _ in self.queue(n).reserved.values()]
        return min(times) if times else None


_STORES: dict[str, _Store] = {}
_STORES_LOCK = threading.Lock()


class MemoryBroker(Broker):
    """A thread-safe in-process broker (``memory://`` or ``memory://name``)."""

    capabilities: ClassVar[BrokerCapabilities] = BrokerCapabilities(
        fifo=True, shared_between_processes=False, priorities=True)

    def __init__(self, url: URL, **options: Any) -> None:
        super().__init__(url)
        name = url.raw.split("://", 1)[1].split("?", 1)[0] or "default"
        with _STORES_LOCK:
            self._store = _STORES.setdefault(name, _Store())

    def enqueue(self, queue: str, message: bytes, *, delay: float = 0.0,
                priority: int = 0) -> str:
        return self.enqueue_many(queue, [message], delay=delay, priority=priority)[0]

    def enqueue_many(self, queue: str, messages: Sequence[bytes], *,
                     delay: float = 0.0, priority: int = 0) -> list[str]:
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
        with self._store.cond:
            if self._held(reservation) is not None:
                del self._store.queue(reservation.queue).reserved[reservation.message_id]

    def nack(self, reservation: Reservation, *, delay: float = 0.0) -> None:
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
        with self._store.cond:
            msg = self._held(reservation)
            if msg is None:
                return False
            self._store.queue(reservation.queue).reserved[msg.message_id] = (
                time.time() + lease, msg)
            return True

    def dead_letter(self, reservation: Reservation, *, reason: str) -> None:
        with self._store.cond:
            if self._held(reservation) is None:
                return
            q = self._store.queue(reservation.queue)
            del q.reserved[reservation.message_id]
            q.dead[reservation.message_id] = DeadLetter(
                reservation.queue, reservation.message_id, reservation.body, reason, time.time())

    def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        with self._store.cond:
            return list(self._store.queue(queue).dead.values())[:limit]

    def delete_dead(self, queue: str, message_ids: Iterable[str] | None = None) -> int:
        with self._store.cond:
            dead = self._store.queue(queue).dead
            if message_ids is None:
                count = len(dead)
                dead.clear()
                return count
            return sum(dead.pop(mid, None) is not None for mid in message_ids)

    def purge(self, queue: str) -> int:
        with self._store.cond:
            self._store.promote(queue, time.time())
            q = self._store.queue(queue)
            count = len(q.ready) + len(q.delayed)
            q.ready.clear()
            q.delayed.clear()
            return count

    def stats(self, queue: str) -> QueueStats:
        with self._store.cond:
            self._store.promote(queue, time.time())
            q = self._store.queue(queue)
            return QueueStats(queue, len(q.ready), len(q.delayed), len(q.reserved), len(q.dead))

    def queues(self) -> list[str]:
        with self._store.cond:
            return sorted(n for n in self._store.queues if n != "__ping__")

    def ping(self) -> None:
        return None
