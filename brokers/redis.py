"""``redis://`` and ``rediss://`` (TLS): a Redis broker built on lists, sorted sets and Lua.

Key layout (prefix ``conveyor:`` by default; ``{queue}`` is a hash tag, so one queue's keys
share a Cluster slot)::

    conveyor:{q}:ready      LIST  ids ready now, taken from the left
    conveyor:{q}:delayed    ZSET  id -> due time, ms by the server's clock
    conveyor:{q}:reserved   ZSET  id -> lease expiry, ms by the server's clock
    conveyor:{q}:body       HASH  id -> message bytes
    conveyor:{q}:attempts   HASH  id -> deliveries so far (doubles as the lease token)
    conveyor:{q}:wake       LIST  at most one token that blocked consumers BLPOP
    conveyor:{q}:dead       ZSET  id -> time dead-lettered (µs, strictly increasing)
    conveyor:{q}:deadbody   HASH  id -> message bytes
    conveyor:{q}:reason     HASH  id -> why it was dead-lettered
    conveyor:{q}:ranked     ZSET  ready ids with a priority above 0, served first
    conveyor:{q}:priority   HASH  id -> priority (above 0 only), kept until acked
    conveyor:queues         SET   names of queues ever enqueued to

Every state change is one call of ``redis_broker.lua`` (read it for the details) or, for
enqueue, the smaller ``redis_enqueue.lua``, so each is atomic and one round trip (a single
``enqueue`` does not even wait for its reply: ``redis_sender.py``). ``reserve``
promotes due delayed messages and expired leases itself (a dead worker's messages come back
without any daemon), and when nothing is ready it blocks in BLPOP on the queues' wake lists,
capped at the next due time, with the next reserve sent behind it in the same write, so an
idle consumer costs two commands per wait, never a poll loop, and a woken one gets its
messages in the same round trip. Needs Redis >= 6.2 (LPOP with a count).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, ClassVar, cast

from conveyor.broker import Broker, BrokerCapabilities, DeadLetter, QueueStats, Reservation
from conveyor.brokers.redis_sender import PipelinedSender
from conveyor.stores.redis import (
    RedisErrors,
    block_timeout,
    make_client,
    run_script,
    server_info,
)
from conveyor.url import URL

if TYPE_CHECKING:
    from redis.commands.core import Script

_SUFFIXES = ("ready", "delayed", "reserved", "body", "attempts", "wake", "dead", "deadbody",
             "reason", "ranked", "priority")
_WAKE = _SUFFIXES.index("wake")
_ENQUEUE_KEYS = tuple(_SUFFIXES.index(s) for s in ("ready", "delayed", "body", "wake"))
_CHUNK = 1000  # messages or ids per script call: keeps each call short for other clients


@cache
def _lua(name: str) -> str:
    return resources.files("conveyor.brokers").joinpath(name).read_text("utf-8")


def _ms(seconds: float) -> int:
    return max(round(seconds * 1000), 0)


def _new_id() -> str:
    # random, not os.urandom: ~35 µs a call on virtual machines; ids need only be unique.
    return f"{random.getrandbits(128):032x}"


class RedisBroker(Broker):
    """A Redis broker. Thread-safe (one connection pool, plus one held connection per sending
    thread); every operation is one round trip.

    Options: ``prefix`` (default ``"conveyor:"``); anything else goes to
    ``redis.Redis.from_url`` (e.g. ``max_connections``, ``socket_connect_timeout``).
    """

    capabilities: ClassVar[BrokerCapabilities] = BrokerCapabilities(
        time_resolution=0.001, fifo=True, priorities=True,
        max_message_size=512 << 20)  # proto-max-bulk-len

    def __init__(self, url: URL, *, prefix: str = "conveyor:", **options: Any) -> None:
        super().__init__(url)
        self._prefix = prefix
        self._errors = RedisErrors(url)
        self._client = make_client(url, **options)
        self._main = self._client.register_script(_lua("redis_broker.lua"))
        self._enqueue = self._client.register_script(_lua("redis_enqueue.lua"))
        self._sender = PipelinedSender(self._client, _lua("redis_enqueue.lua"), self._errors)
        self._keys: dict[str, tuple[bytes, ...]] = {}
        self._enqueue_keys: dict[str, tuple[bytes, ...]] = {}
        self._multi: dict[tuple[str, ...], tuple[tuple[bytes, ...], list[bytes]]] = {}
        self._known: set[str] = set()

    def _queue_keys(self, queue: str) -> tuple[bytes, ...]:
        keys = self._keys.get(queue)
        if keys is None:
            keys = tuple(f"{self._prefix}{{{queue}}}:{s}".encode() for s in _SUFFIXES)
            self._keys[queue] = keys
        return keys

    def _eval(self, script: Script, keys: Sequence[bytes], args: Sequence[Any]) -> Any:
        self._sender.confirm()  # this thread's last send lands before anything it does next
        with self._errors:
            return run_script(self._client, script, keys, args)

    def _call(self, queue: str, *args: Any) -> Any:
        return self._eval(self._main, self._queue_keys(queue), args)

    # -- producing ------------------------------------------------------------------------
    def _enqueue_keys_of(self, queue: str) -> tuple[bytes, ...]:
        keys = self._enqueue_keys.get(queue)
        if keys is None:
            if queue not in self._known:
                with self._errors:
                    self._client.sadd(f"{self._prefix}queues", queue)
                self._known.add(queue)
            every = self._queue_keys(queue)
            keys = self._enqueue_keys[queue] = tuple(every[i] for i in _ENQUEUE_KEYS)
        return keys

    def enqueue(self, queue: str, message: bytes, *, delay: float = 0.0,
                priority: int = 0) -> str:
        """Store one message (atomic), without waiting for Redis's reply.

        Returns once the command is written to this thread's connection; the reply is read
        before the thread's next broker call (see :mod:`conveyor.brokers.redis_sender`), so
        an error in storing it is raised there, never lost. A message with a priority is
        stored with one confirmed script call instead.
        """
        if priority:
            return self.enqueue_many(queue, [message], delay=delay, priority=priority)[0]
        message_id = _new_id()
        self._sender.send(self._enqueue_keys_of(queue), (_ms(delay), message_id, message))
        return message_id

    def enqueue_many(self, queue: str, messages: Sequence[bytes], *,
                     delay: float = 0.0, priority: int = 0) -> list[str]:
        """Store messages with one script call per 1,000 (each call atomic)."""
        ids = [_new_id() for _ in messages]
        delay_ms = _ms(delay)
        keys = self._enqueue_keys_of(queue)
        for start in range(0, len(ids), _CHUNK):
            args: list[Any] = ["enqueue", delay_ms, int(priority)] if priority else [delay_ms]
            for message_id, body in zip(ids[start:start + _CHUNK],
                                        messages[start:start + _CHUNK], strict=True):
                args += (message_id, body)
            if priority:
                self._call(queue, *args)
            else:
                self._eval(self._enqueue, keys, args)
        return ids

    # -- consuming ------------------------------------------------------------------------
    def reserve(self, queues: Sequence[str], *, lease: float, wait: float = 0.0,
                limit: int = 1) -> list[Reservation]:
        """Take up to ``limit`` messages, earlier queues first, atomically in one script call.

        When nothing is ready, blocks in BLPOP until a message is enqueued, a delayed message
        or a lease comes due, or ``wait`` runs out (then returns ``[]``).
        """
        if not queues or limit < 1:
            return []
        names = tuple(queues)
        entry = self._multi.get(names)
        if entry is None:
            keys = tuple(k for q in names for k in self._queue_keys(q))
            entry = (keys, [self._queue_keys(q)[_WAKE] for q in names])
            self._multi[names] = entry
        keys, wake_keys = entry
        args = ("reserve", max(_ms(lease), 1), limit)
        deadline = time.monotonic() + wait
        out = self._eval(self._main, keys, args)
        while True:
            if len(out) > 1:
                return [Reservation(names[out[i] - 1], out[i + 1].decode(), out[i + 2],
                                    out[i + 3], receipt=out[i + 3])
                        for i in range(1, len(out), 4)]
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            if out[0] >= 0:
                left = min(left, out[0] / 1000)
            out = self._wait_then_reserve(wake_keys, block_timeout(self._client, left),
                                          keys, args)

    def _wait_then_reserve(self, wake_keys: list[bytes], timeout: float,
                           keys: Sequence[bytes], args: Sequence[Any]) -> Any:
        """BLPOP a wake token and run the reserve script, sent together: the server runs the
        script the moment the BLPOP returns (a blocked client's next command waits in its
        input buffer), so a woken consumer gets its messages without another round trip."""
        from redis.exceptions import NoScriptError

        with self._errors:
            pipe = self._client.pipeline(transaction=False)
            pipe.blpop(wake_keys, timeout=timeout)
            pipe.evalsha(self._main.sha, len(keys), *keys, *args)
            try:
                return pipe.execute()[1]
            except NoScriptError:
                pass  # the server restarted and lost the script: _eval loads it again
        return self._eval(self._main, keys, args)

    def ack(self, reservation: Reservation) -> None:
        """Delete the message unless it was delivered again since (then a no-op: the new
        holder keeps its lease). Idempotent. An expired lease nobody took over still acks."""
        self._call(reservation.queue, "ack", reservation.message_id, reservation.receipt)

    def ack_many(self, reservations: Sequence[Reservation]) -> None:
        """Ack several reservations with one script call per queue (per 1,000), each ack
        with :meth:`ack`'s rules; atomic per call."""
        by_queue: dict[str, list[Any]] = {}
        for r in reservations:
            by_queue.setdefault(r.queue, []).extend((r.message_id, r.receipt))
        for queue, pairs in by_queue.items():
            for start in range(0, len(pairs), 2 * _CHUNK):
                self._call(queue, "ackmany", *pairs[start:start + 2 * _CHUNK])

    def nack(self, reservation: Reservation, *, delay: float = 0.0) -> None:
        """Give the message back (to the front of ready, or delayed by ``delay`` seconds by
        the server's clock). A no-op when it was delivered again since."""
        self._call(reservation.queue, "nack", reservation.message_id, reservation.receipt,
                   _ms(delay))

    def extend(self, reservation: Reservation, *, lease: float) -> bool:
        """Set the lease to expire ``lease`` seconds from now (server clock); False when lost."""
        return bool(self._call(reservation.queue, "extend", reservation.message_id,
                               reservation.receipt, max(_ms(lease), 1)))

    def dead_letter(self, reservation: Reservation, *, reason: str) -> None:
        """Move the message to the dead-letter queue atomically. When it was delivered again
        since, the new delivery is left alone (it may be dead-lettered then): never lost."""
        self._call(reservation.queue, "dead", reservation.message_id, reservation.receipt,
                   reason)

    # -- administration -------------------------------------------------------------------
    def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters, with reasons, in one round trip."""
        if limit < 1:
            return []
        rows = self._call(queue, "deadlist", limit)
        return [DeadLetter(queue, rows[i].decode(), rows[i + 1], rows[i + 2].decode(),
                           float(rows[i + 3]) / 1e6)
                for i in range(0, len(rows), 4)]

    def delete_dead(self, queue: str, message_ids: Iterable[str] | None = None) -> int:
        """Delete the named dead letters (all when ``None``); return how many existed."""
        if message_ids is None:
            return int(self._call(queue, "deldead"))
        ids = list(message_ids)
        return sum(int(self._call(queue, "deldead", *ids[i:i + _CHUNK]))
                   for i in range(0, len(ids), _CHUNK))

    def purge(self, queue: str) -> int:
        """Atomically delete ``queue``'s ready and delayed messages; return how many."""
        return int(self._call(queue, "purge"))

    def stats(self, queue: str) -> QueueStats:
        """Exact counts at one instant; due delayed messages and expired leases count as
        ready, as the next ``reserve`` would see them."""
        ready, delayed, reserved, dead = self._call(queue, "stats")
        return QueueStats(queue, int(ready), int(delayed), int(reserved), int(dead))

    def queues(self) -> list[str]:
        """Queues ever enqueued to through any RedisBroker with the same prefix."""
        self._sender.confirm()
        with self._errors:
            names = cast("set[bytes]", self._client.smembers(f"{self._prefix}queues"))
        return sorted(n.decode() for n in names)

    def info(self) -> dict[str, str]:
        """The server's name and version, and the key prefix."""
        return server_info(self._client, self._errors) | {"prefix": self._prefix}

    def ping(self) -> None:
        """Send PING; raises :class:`~conveyor.exceptions.ConnectionLostError` when down."""
        with self._errors:
            self._client.ping()

    def close(self) -> None:
        """Confirm this thread's last send, close the pool's connections. Idempotent; a later
        call reconnects."""
        self._sender.confirm(quietly=True)
        with self._errors:
            self._client.close()
