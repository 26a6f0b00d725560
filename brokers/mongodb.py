"""``mongodb://`` and ``mongodb+srv://``: a MongoDB broker on one collection of messages.

Collections (prefix ``conveyor_`` by default; see :mod:`conveyor.stores.mongodb`)::

    <p>messages  _id, queue, priority, body, visible_at, token, attempts
                 index (queue, priority desc, visible_at): the claim reads it in order
    <p>dead      _id (the message id), queue, body, reason, dead_at
                 index (queue, dead_at)

A message is *ready* when ``visible_at <= now``, *delayed* when later with no ``token``,
*reserved* when later with one. A claim sets ``visible_at = now + lease``, a fresh token and
``attempts + 1`` in one atomic update, so a lease that runs out makes the message ready again
with no sweeper. ``ack``, ``nack``, ``extend`` and ``dead_letter`` match the token, so a stale
reservation changes nothing. Times are the server's clock in float seconds.

Idle consumers wake on a change stream of inserts and released leases where the server has
one (replica sets, Atlas, SecantusDB); on a standalone ``mongod`` they poll with backoff
(10 ms doubling to ``poll_interval``). The choice is made once, on the first waiting
``reserve``, and shown by ``conveyor check``.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from conveyor.broker import Broker, BrokerCapabilities, DeadLetter, QueueStats, Reservation
from conveyor.exceptions import AuthenticationError, ConfigurationError, DriverError
from conveyor.stores.mongodb import MongoStore
from conveyor.url import URL

_Indexes = list[tuple[list[tuple[str, int]], dict[str, Any]]]
_MESSAGES: tuple[str, _Indexes] = (
    "messages", [([("queue", 1), ("priority", -1), ("visible_at", 1)], {})])
_DEAD: tuple[str, _Indexes] = ("dead", [([("queue", 1), ("dead_at", 1)], {})])
# No _id tie-break: the index serves this sort as it is, and equal keys come back in
# insertion order anyway. (nx-27017 also cannot index _id inside a compound index.)
_ORDER = [("priority", -1), ("visible_at", 1)]
_CHUNK = 500  # ids per $in list, reservations per delete
_ID_LOCK = threading.Lock()
_last_ns = 0
# Events that can make a message ready: an insert, a lease given back (nack sets the token
# to null; a claim sets a string). Projected down so message bodies never travel.
_WAKE_EVENTS = [
    {"$match": {"$or": [
        {"operationType": "insert"},
        {"operationType": "update",
         "updateDescription.updatedFields.token": {"$type": "null"}}]}},
    {"$project": {"operationType": 1}},
]


def _new_ids(count: int) -> list[str]:
    """Unique ids that sort by creation time within a process (they order dead letters
    written in the same millisecond)."""
    global _last_ns
    with _ID_LOCK:
        start = max(time.time_ns(), _last_ns + 1)
        _last_ns = start + count - 1
    return [f"{start + i:016x}{random.getrandbits(64):016x}" for i in range(count)]


def _token() -> str:
    return f"{random.getrandbits(128):032x}"


class _Waker:
    """Wakes waiting consumers when a change stream reports work; polls when it is down.

    One daemon thread per broker tails the stream; each event bumps ``generation``. While
    the stream is lost (server restart) or invalidated (its collection dropped) ``alive`` is
    False and waiters poll instead; the thread reopens it with backoff and wakes everyone,
    since events may have been missed.
    """

    def __init__(self, broker: MongoBroker, stream: Any) -> None:
        self._broker = broker
        self._cond = threading.Condition()
        self.generation = 0
        self.alive = True
        self._stopped = threading.Event()
        threading.Thread(target=self._run, args=(stream,), name="conveyor-mongo-wake",
                         daemon=True).start()

    def wait(self, seen: int, timeout: float) -> None:
        """Return when ``generation`` moves past ``seen``, the stream is lost, or after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.generation == seen and self.alive and not self._stopped.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)

    def _bump(self, alive: bool) -> None:
        with self._cond:
            self.generation += 1
            self.alive = alive
            self._cond.notify_all()

    def _run(self, stream: Any) -> None:
        from pymongo.errors import InvalidOperation, PyMongoError

        pause = 0.1
        while not self._stopped.is_set():
            try:
                if stream is None:
                    stream = self._broker._open_stream()
                    self._bump(alive=True)
                    pause = 0.1
                while not self._stopped.is_set():
                    if stream.try_next() is not None:
                        self._bump(alive=True)
                    elif not stream.alive:
                        # Invalidated (the collection was dropped or renamed): try_next
                        # would return None at once forever. Reopen it like a lost one.
                        stream.close()
                        raise InvalidOperation("the change stream was invalidated")
            except PyMongoError:
                stream = None
                if self._stopped.is_set():
                    break
                self._bump(alive=False)
                self._stopped.wait(pause)
                pause = min(pause * 2, 2.0)
        self._bump(alive=False)

    def stop(self) -> None:
        self._stopped.set()
        self._bump(alive=False)


class MongoBroker(Broker):
    """A MongoDB broker. Thread-safe (one pymongo pool); claims are atomic on the server.

    Options: ``prefix`` (collection name prefix, default ``conveyor_``; also accepted in the
    URL's query), ``poll_interval`` (longest pause between polls where there is no change
    stream, default 0.2 s); anything else goes to ``pymongo.MongoClient``.
    """

    capabilities: ClassVar[BrokerCapabilities] = BrokerCapabilities(
        time_resolution=0.001, priorities=True,
        # BSON's 16 MiB document limit, less room for the other fields.
        max_message_size=16_000_000)

    def __init__(self, url: URL, *, prefix: str | None = None, poll_interval: float = 0.2,
                 **options: Any) -> None:
        super().__init__(url)
        if not poll_interval > 0:
            raise ConfigurationError(f"poll_interval must be > 0 seconds, not {poll_interval!r}")
        self.poll_interval = float(poll_interval)
        self._db = MongoStore(url, prefix=prefix, **options)
        self._errors = self._db.errors
        self._waker: _Waker | None = None
        self._wake_mode: str | None = None
        self._wake_lock = threading.Lock()

    @property
    def _messages(self) -> Any:
        return self._db.collection(*_MESSAGES)

    @property
    def _dead(self) -> Any:
        return self._db.collection(*_DEAD)

    # -- producing ------------------------------------------------------------------------
    def enqueue(self, queue: str, message: bytes, *, delay: float = 0.0,
                priority: int = 0) -> str:
        """Insert one message; durable (as the URL's write concern says) when it returns.
        Ready messages of a higher ``priority`` (0..9) are reserved first."""
        return self.enqueue_many(queue, [message], delay=delay, priority=priority)[0]

    def enqueue_many(self, queue: str, messages: Sequence[bytes], *,
                     delay: float = 0.0, priority: int = 0) -> list[str]:
        """Insert the messages with one ``insert_many`` (batched by pymongo). Not atomic as
        a whole: on an error some may be stored, and the error is raised."""
        if not messages:
            return []
        ids = _new_ids(len(messages))
        with self._errors:
            at = self._db.now() + max(float(delay), 0.0)
            self._messages.insert_many(
                [{"_id": i, "queue": queue, "priority": int(priority), "body": bytes(m),
                  "visible_at": at, "token": None, "attempts": 0}
                 for i, m in zip(ids, messages, strict=True)], ordered=True)
        return ids

    # -- consuming ------------------------------------------------------------------------
    def reserve(self, queues: Sequence[str], *, lease: float, wait: float = 0.0,
                limit: int = 1) -> list[Reservation]:
        """Claim up to ``limit`` ready messages, earlier queues first, each atomically.

        While waiting, sleeps until the change stream reports an insert or a released lease
        (or polls, without one); a wait also ends when the next delay or lease is due.
        """
        if isinstance(queues, str):
            queues = [queues]
        if not queues or limit < 1:
            return []
        deadline = time.monotonic() + max(wait, 0.0)
        pause = 0.005
        waker = self._start_waking() if wait > 0 else None
        while True:
            seen = waker.generation if waker is not None else 0
            taken = self._claim(queues, lease, limit)
            left = deadline - time.monotonic()
            if taken or left <= 0:
                return taken
            due = self._seconds_until_due(queues)
            if waker is not None and waker.alive:
                waker.wait(seen, min(left, due, 5.0))
            else:
                pause = min(pause * 2, self.poll_interval)
                time.sleep(max(min(left, due, pause), 0.001))

    def _claim(self, queues: Sequence[str], lease: float, limit: int) -> list[Reservation]:
        from pymongo import ReturnDocument

        taken: list[Reservation] = []
        with self._errors:
            coll = self._messages
            for queue in queues:
                want = limit - len(taken)
                if want <= 0:
                    break
                now = self._db.now()
                ready = {"queue": queue, "visible_at": {"$lte": now}}
                token = _token()
                claim = {"$set": {"token": token, "visible_at": now + lease},
                         "$inc": {"attempts": 1}}
                docs: list[dict[str, Any]] = []
                if want > 1:
                    # Several in three round trips: pick candidates, claim those still ready
                    # (each update atomic, re-checked by the server), read back our token's.
                    ids = [d["_id"] for d in coll.find(ready, {"_id": 1}).sort(_ORDER)
                           .limit(want)]
                    if ids and coll.update_many({"_id": {"$in": ids}, **ready},
                                                claim).modified_count:
                        order = {mid: i for i, mid in enumerate(ids)}
                        docs = sorted(coll.find({"_id": {"$in": ids}, "token": token}),
                                      key=lambda d: order[d["_id"]])
                    if ids and not docs:
                        want = 1  # lost every race: take one the atomic way
                if want == 1:
                    doc = coll.find_one_and_update(ready, claim, sort=_ORDER,
                                                   return_document=ReturnDocument.AFTER)
                    docs = [doc] if doc is not None else []
                taken += [Reservation(queue, d["_id"], bytes(d["body"]), int(d["attempts"]),
                                      receipt=d["token"]) for d in docs]
        return taken

    def _seconds_until_due(self, queues: Sequence[str]) -> float:
        """Seconds until the earliest delayed message or lease of ``queues`` (inf if none)."""
        with self._errors:
            first = self._messages.find_one({"queue": {"$in": list(queues)}},
                                            {"visible_at": 1}, sort=[("visible_at", 1)])
            if first is None:
                return float("inf")
            return max(float(first["visible_at"]) - self._db.now(), 0.001)

    def _open_stream(self) -> Any:
        return self._messages.watch(_WAKE_EVENTS, max_await_time_ms=1000)

    def _start_waking(self) -> _Waker | None:
        """The waker, started on first use; None when the server has no change streams
        (a standalone mongod), which is then remembered: consumers poll."""
        from pymongo.errors import OperationFailure

        if self._wake_mode is not None:
            return self._waker
        with self._wake_lock:
            if self._wake_mode is None:
                try:
                    with self._errors:
                        stream = self._open_stream()
                except DriverError as exc:
                    if (not isinstance(exc.__cause__, OperationFailure)
                            or isinstance(exc, AuthenticationError)):
                        raise  # unreachable or refused: decide once that is fixed
                    self._wake_mode = f"polling (no change streams: {exc.__cause__.code})"
                else:
                    self._waker = _Waker(self, stream)
                    self._wake_mode = "change stream"
        return self._waker

    def _held(self, reservation: Reservation) -> dict[str, Any]:
        return {"_id": reservation.message_id, "token": reservation.receipt}

    def ack(self, reservation: Reservation) -> None:
        """Delete the message if it still carries this reservation's token. Idempotent."""
        with self._errors:
            self._messages.delete_one(self._held(reservation))

    def ack_many(self, reservations: Sequence[Reservation]) -> None:
        """Delete the messages still carrying their reservations' tokens (each as
        :meth:`ack`): one ``delete_many`` per reserve call they came from (they share its
        token), not one ``$or`` of them all, which SecantusDB answers by scanning."""
        by_token: dict[str, list[str]] = {}
        for r in reservations:
            by_token.setdefault(r.receipt, []).append(r.message_id)
        with self._errors:
            for token, ids in by_token.items():
                for start in range(0, len(ids), _CHUNK):
                    self._messages.delete_many(
                        {"_id": {"$in": ids[start:start + _CHUNK]}, "token": token})

    def nack(self, reservation: Reservation, *, delay: float = 0.0) -> None:
        """Release the lease; ready again after ``delay``. No-op once re-delivered elsewhere."""
        with self._errors:
            self._messages.update_one(self._held(reservation), {"$set": {
                "visible_at": self._db.now() + max(float(delay), 0.0), "token": None}})

    def extend(self, reservation: Reservation, *, lease: float) -> bool:
        """Push the lease to ``lease`` seconds from now; False if it already ran out."""
        with self._errors:
            now = self._db.now()
            done = self._messages.update_one(
                {**self._held(reservation), "visible_at": {"$gt": now}},
                {"$set": {"visible_at": now + lease}})
            return bool(done.matched_count == 1)

    def dead_letter(self, reservation: Reservation, *, reason: str) -> None:
        """Write the dead letter, then delete the message if it still carries this token.

        Two writes, in this order: a crash between them, or a lease lost meanwhile, leaves
        the message queued as well (a duplicate, never a loss)."""
        with self._errors:
            # _id repeated in the replacement: nx-27017 would otherwise invent one.
            self._dead.replace_one({"_id": reservation.message_id}, {
                "_id": reservation.message_id, "queue": reservation.queue,
                "body": reservation.body, "reason": str(reason), "dead_at": self._db.now()},
                upsert=True)
            self._messages.delete_one(self._held(reservation))

    # -- administration -------------------------------------------------------------------
    def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters of ``queue``."""
        if limit < 1:
            return []
        with self._errors:
            docs = list(self._dead.find({"queue": queue})
                        .sort([("dead_at", 1), ("_id", 1)]).limit(limit))
        return [DeadLetter(queue, d["_id"], bytes(d["body"]), d["reason"], float(d["dead_at"]))
                for d in docs]

    def delete_dead(self, queue: str, message_ids: Iterable[str] | None = None) -> int:
        """Delete the named dead letters of ``queue`` (all when None); return how many."""
        if message_ids is None:
            with self._errors:
                return int(self._dead.delete_many({"queue": queue}).deleted_count)
        ids = list(message_ids)
        deleted = 0
        with self._errors:
            for start in range(0, len(ids), _CHUNK):
                deleted += self._dead.delete_many(
                    {"queue": queue, "_id": {"$in": ids[start:start + _CHUNK]}}).deleted_count
        return deleted

    def purge(self, queue: str) -> int:
        """Delete the ready and delayed messages of ``queue``; reserved ones stay."""
        with self._errors:
            done = self._messages.delete_many({"queue": queue, "$or": [
                {"token": None}, {"visible_at": {"$lte": self._db.now()}}]})
            return int(done.deleted_count)

    def stats(self, queue: str) -> QueueStats:
        """Exact counts: one aggregation over the queue's messages, one count of its dead."""
        with self._errors:
            now = self._db.now()
            due = {"$lte": ["$visible_at", now]}
            held = {"$eq": [{"$type": "$token"}, "string"]}
            rows = list(self._messages.aggregate([
                {"$match": {"queue": queue}},
                {"$group": {"_id": None, "total": {"$sum": 1},
                            "ready": {"$sum": {"$cond": [due, 1, 0]}},
                            "reserved": {"$sum": {"$cond": [
                                {"$and": [{"$not": [due]}, held]}, 1, 0]}}}}]))
            dead = self._dead.count_documents({"queue": queue})
        row = rows[0] if rows else {"total": 0, "ready": 0, "reserved": 0}
        ready, reserved = int(row["ready"]), int(row["reserved"])
        return QueueStats(queue, ready, int(row["total"]) - ready - reserved, reserved,
                          int(dead))

    def queues(self) -> list[str]:
        """Queues that have messages or dead letters."""
        with self._errors:
            names = set(self._messages.distinct("queue")) | set(self._dead.distinct("queue"))
        return sorted(names)

    def info(self) -> dict[str, str]:
        """Server, database, prefix, and how idle consumers wake (change stream or polling),
        for ``conveyor check``."""
        facts = self._db.server_info()
        self._start_waking()
        return facts | {"wake": self._wake_mode or "undecided"}

    def ping(self) -> None:
        """One round trip; raises ConnectionLostError/AuthenticationError."""
        self._db.ping()

    def close(self) -> None:
        """Stop the change stream and close the pool. Idempotent."""
        if self._waker is not None:
            self._waker.stop()
        self._db.close()
