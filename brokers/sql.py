"""``sqlite:///file.db``, ``postgresql+psycopg://...``, ``mysql+pymysql://...``: a SQL broker.

One row per message (see :mod:`conveyor.stores.sql` for the tables). A message is *ready* when
``available_at <= now``, *delayed* when later and it has no lease, *reserved* when later and it
has a ``lease_token``. Reserving sets ``available_at = now + lease`` and a fresh token, so a
lease that runs out simply makes the message ready again: no sweeper process is needed. Every
change to a reserved message matches its token, so a stale reservation changes nothing.

Claims are atomic: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL and MySQL 8 / MariaDB 10.6+
(consumers skip each other's rows instead of waiting), ``BEGIN IMMEDIATE`` on SQLite (one
writer at a time, safe for several processes on one file in WAL mode).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import sqlalchemy as sa

from conveyor.broker import Broker, BrokerCapabilities, DeadLetter, QueueStats, Reservation
from conveyor.stores.sql import SQLStore, backoff, check_options
from conveyor.url import URL

_ID_LOCK = threading.Lock()
_last_ns = 0
_ACK_CHUNK = 500  # reservations per DELETE: well under every dialect's parameter limit


def _new_ids(count: int) -> list[str]:
    """Unique ids that sort by creation time within a process (ties of ``available_at``
    are broken by id, which keeps delivery close to FIFO)."""
    global _last_ns
    with _ID_LOCK:
        start = max(time.time_ns(), _last_ns + 1)
        _last_ns = start + count - 1
    # The time part is unique within the process; the random part (one per call: random,
    # not secrets, as os.urandom costs ~35 us a call on VMs) tells processes apart, so two
    # ids collide only when two processes draw the same 64 bits for the same nanosecond.
    tail = f"{random.getrandbits(64):016x}"
    return [f"{start + i:016x}{tail}" for i in range(count)]


_PG_NOW = "extract(epoch from statement_timestamp())::float8"


class _PostgresStatements:
    """The broker's hot statements in PostgreSQL's SQL, one round trip each (see
    :meth:`SQLStore.raw`). Table and channel names are validated identifiers."""

    def __init__(self, table: str, channel: str) -> None:
        # The id and body arrays go in binary (%b): in text form psycopg quotes and escapes
        # every element in Python (a regular expression search and substitution per body,
        # the bodies hex-encoded), half of the insert's client time for a batch of 10,000.
        insert = (f"INSERT INTO {table} (id, queue, body, available_at, lease_token, attempts, "
                  f"enqueued_at, precedence) SELECT m.id, %s, m.body, {_PG_NOW} + %s, NULL, 0, "
                  f"{_PG_NOW}, %s FROM unnest(%b::text[], %b::bytea[]) AS m(id, body)")
        #: Insert a batch and wake waiting consumers: the NOTIFY is delivered at the commit
        #: of this very statement (a data-modifying WITH runs to completion either way).
        #: Its payload is the queue, or ``~`` and the queue for delayed messages (see
        #: ``_DueTimes``).
        self.enqueue = f"WITH sent AS ({insert}) SELECT pg_notify('{channel}', %s)"
        #: The same for one message (``delay()``), its id and body as plain parameters:
        #: building and dumping two one-element arrays cost more client time than the rest
        #: of the statement's parameters.
        one = "(SELECT %b::text, %b::bytea) AS m(id, body)"
        arrays = "unnest(%b::text[], %b::bytea[]) AS m(id, body)"
        self.enqueue_one = self.enqueue.replace(arrays, one)
        #: Claim up to n ready messages of one queue in their order, skipping rows other
        #: consumers are claiming. The pick is an ARRAY(...) sub-select, which PostgreSQL
        #: runs once (an InitPlan) before the UPDATE whatever the plan, so LIMIT n bounds
        #: the claim by construction; then the primary key finds the rows. With ``id IN
        #: (SELECT ...)`` the shape of the join was the planner's choice: the prepared
        #: statement's generic plan (LIMIT unknown, 1,000 rows analyzed) was a Hash Semi
        #: Join over a Seq Scan of the whole table.
        self.claim = (
            f"UPDATE {table} SET available_at = {_PG_NOW} + %s, lease_token = %s, "
            f"attempts = attempts + 1 WHERE id = ANY(ARRAY(SELECT id FROM {table} "
            f"WHERE queue = %s AND available_at <= {_PG_NOW} "
            "ORDER BY precedence, available_at, id LIMIT %s FOR UPDATE SKIP LOCKED)) "
            "RETURNING id, body, attempts, precedence")
        #: Seconds until the earliest delayed message or lease of the queues is due, for a
        #: waiting reserve whose claim took nothing: sent only then, on the claim's
        #: connection. (Folded into the claim as one statement, it slowed every claim of a
        #: backlog: the drain of 10,000 tasks fell from 3,765 to 1,230/s.)
        self.due = (f"SELECT min(available_at) - {_PG_NOW} FROM {table} "
                    "WHERE queue = ANY(%s::text[])")
        #: Delete the messages still carrying their reservations' tokens.
        self.ack = (f"DELETE FROM {table} AS t USING unnest(%s::text[], %s::text[]) "
                    "AS a(id, token) WHERE t.id = a.id AND t.lease_token = a.token")


def _wake_payload(queue: str, delay: float) -> str:
    """The NOTIFY payload of a send or release: the queue, marked with ``~`` when the
    message is delayed (it can make the next due time earlier; see :class:`_DueTimes`)."""
    return f"~{queue}" if delay > 0 else queue


class _DueTimes:
    """When the next delayed message or lease of some queues is due, as a waiting reserve
    last read it on PostgreSQL, reused while nothing can have made it earlier.

    An idle worker's reserve returns every ``worker_poll_wait`` and a busy one's claim
    often comes back empty: each such claim was followed by a read of the next due time
    (a scan of the queue's index entries, dead ones included: 1-1.5 ms right after a
    burst). What can make that time earlier is a delayed send or release, which notifies
    with a ``~`` payload, or another worker's lease running out, which is at least a lease
    away; so a time read less than :data:`REUSE` seconds ago is reused unless a ``~``
    notification came since (or the listener lost track). Thread-safe (one dict item per
    tuple of queues, replaced whole)."""

    REUSE = 1.0

    def __init__(self) -> None:
        self._known: dict[tuple[str, ...], tuple[float, float, int]] = {}

    def get(self, queues: Sequence[str], listener: Any) -> float | None:
        """Seconds until due, if a recent read still holds; None: read it again."""
        if listener is None or not listener.alive:
            return None
        found = self._known.get(tuple(queues))
        if found is None:
            return None
        due_at, read_at, seen = found
        now = time.monotonic()
        if now - read_at > self.REUSE or due_at <= now:
            return None
        payloads = listener.payloads_since(seen)
        if payloads is None or any(p.startswith("~") for p in payloads):
            return None
        return due_at - now

    def put(self, queues: Sequence[str], due: float, seen: int) -> None:
        """Record a read of ``due`` seconds, taken after listener generation ``seen``."""
        now = time.monotonic()
        self._known[tuple(queues)] = (now + due, now, seen)


class SQLBroker(Broker):
    """A broker on SQLite, PostgreSQL or MySQL/MariaDB through SQLAlchemy Core.

    Options: ``table_prefix`` (default ``conveyor_``, a lower-case identifier),
    ``poll_interval`` (longest pause between polls while waiting, default 0.2 s),
    ``pool_size`` (connections kept per process, default 10; on PostgreSQL as many again for
    the hot statements, see :class:`~conveyor.stores.sql.RawConnections`).
    On PostgreSQL a waiting ``reserve`` wakes on ``NOTIFY`` within milliseconds.
    """

    capabilities: ClassVar[BrokerCapabilities] = BrokerCapabilities(time_resolution=0.001,
                                                                    priorities=True)

    def __init__(self, url: URL, *, table_prefix: str = "conveyor_",
                 poll_interval: float = 0.2, pool_size: int = 10, **options: Any) -> None:
        super().__init__(url)
        self.poll_interval = check_options("broker", options, poll_interval)
        self._db = SQLStore(url, "broker", table_prefix=table_prefix, pool_size=pool_size)
        self._t = self._db.tables.messages
        self._dead = self._db.tables.dead
        self._pg = _PostgresStatements(self._t.name, self._db.channel("messages")) \
            if self._db.dialect == "postgresql" else None
        self._due = _DueTimes()

    # -- producing ------------------------------------------------------------------------
    def enqueue(self, queue: str, message: bytes, *, delay: float = 0.0,
                priority: int = 0) -> str:
        """Insert one message; durable (committed) when it returns."""
        pg = self._pg
        if pg is None:
            return self.enqueue_many(queue, [message], delay=delay, priority=priority)[0]
        # PostgreSQL, as enqueue_many without the lists (delay()'s path): the single-row
        # statement, its id and body as plain parameters.
        self._db.check_queue_name(queue)
        [mid] = _new_ids(1)
        with self._db.raw() as conn:
            conn.execute(pg.enqueue_one, (queue, max(float(delay), 0.0), 9 - priority, mid,
                                          bytes(message), _wake_payload(queue, delay)),
                         prepare=True)
        return mid

    def enqueue_many(self, queue: str, messages: Sequence[bytes], *,
                     delay: float = 0.0, priority: int = 0) -> list[str]:
        """Insert all messages in one transaction: all are stored or none."""
        if not messages:
            return []
        self._db.check_queue_name(queue)
        self._db.refuse_oversized(max(len(m) for m in messages), "message")
        ids = _new_ids(len(messages))
        if self._pg is not None:
            bodies = [bytes(m) for m in messages]
            with self._db.raw() as conn:
                conn.execute(self._pg.enqueue, (queue, max(float(delay), 0.0), 9 - priority,
                                                ids, bodies, _wake_payload(queue, delay)),
                             prepare=True)
            return ids
        now = self._db.now()
        stmt = self._t.insert().values(available_at=now + max(float(delay), 0.0),
                                       enqueued_at=now, attempts=0,
                                       precedence=9 - priority)
        rows = [{"id": i, "queue": queue, "body": bytes(m)}
                for i, m in zip(ids, messages, strict=True)]
        with self._db.begin(single=len(rows) == 1) as conn:
            conn.execute(stmt, rows)
            if delay <= 0:
                self._db.notify(conn, "messages", queue)
        return ids

    # -- consuming ------------------------------------------------------------------------
    def reserve(self, queues: Sequence[str], *, lease: float, wait: float = 0.0,
                limit: int = 1) -> list[Reservation]:
        """Claim up to ``limit`` ready messages, earlier queues first, atomically.

        While waiting, PostgreSQL sleeps until a NOTIFY from ``enqueue``/``nack``; the others
        poll with backoff (2 ms doubling to ``poll_interval``). Either way a wait also ends
        when the next delayed message or lease is due.
        """
        if isinstance(queues, str):
            queues = [queues]
        for queue in queues:
            self._db.check_queue_name(queue, consuming=True)
        deadline = time.monotonic() + max(wait, 0.0)
        pause = backoff(0.002, self.poll_interval)
        listener = self._db.listener("messages") if wait > 0 else None
        while True:
            seen = listener.generation if listener is not None else 0
            known = self._due.get(queues, listener)
            taken, due = self._claim(queues, lease, limit, due=wait > 0 and known is None)
            left = deadline - time.monotonic()
            if taken or left <= 0:
                return taken
            if known is not None:
                due = known
            elif due is not None and listener is not None:
                self._due.put(queues, due, seen)
            if due is None:
                due = self._seconds_until_due(queues)
            if listener is not None and listener.alive:
                listener.wait(seen, min(left, due, 5.0))
            else:
                time.sleep(max(min(left, due, pause()), 0.001))

    def _claim(self, queues: Sequence[str], lease: float, limit: int, *,
               due: bool = False) -> tuple[list[Reservation], float | None]:
        """Claim up to ``limit`` messages; with ``due`` on PostgreSQL, when none was taken,
        also the seconds until the next one is due (as :meth:`_seconds_until_due`; None
        when not read here)."""
        t = self._t
        token = f"{random.getrandbits(128):032x}"
        if self._pg is not None:
            taken: list[Reservation] = []
            with self._db.raw() as conn:
                for queue in queues:
                    want = limit - len(taken)
                    if want <= 0:
                        break
                    rows = conn.execute(self._pg.claim, (float(lease), token, queue, want),
                                        prepare=True).fetchall()
                    # RETURNING has no order: restore the claim's (ids sort by send time).
                    rows.sort(key=lambda r: (r[3], r[0]))
                    taken += [Reservation(queue, mid, bytes(body), attempts, receipt=token)
                              for mid, body, attempts, _ in rows]
                if taken or not due:
                    return taken, None
                # Nothing taken: when is the next one due? One prepared statement on this
                # connection, not a transaction of SQLAlchemy's (an idle poll right after a
                # batch competes with the batch's tasks).
                gap = conn.execute(self._pg.due, (list(queues),), prepare=True).fetchone()[0]
            return [], float("inf") if gap is None else max(float(gap), 0.001)
        now = self._db.now()
        taken = []
        # One claim per queue, each atomic (UPDATE ... RETURNING) except on MySQL.
        with self._db.begin(single=True) as conn:
            for queue in queues:
                want = limit - len(taken)
                if want <= 0:
                    break
                pick = (sa.select(t.c.id).where(t.c.queue == queue, t.c.available_at <= now)
                        .order_by(t.c.precedence, t.c.available_at, t.c.id).limit(want)
                        .with_for_update(skip_locked=True))
                claim = t.update().values(available_at=now + lease, lease_token=token,
                                          attempts=t.c.attempts + 1)
                if self._db.dialect == "mysql":
                    # MySQL cannot UPDATE a table it selects from, nor UPDATE ... RETURNING.
                    rows = conn.execute(pick.add_columns(t.c.body, t.c.attempts)).all()
                    if rows:
                        conn.execute(claim.where(t.c.id.in_([r.id for r in rows])))
                    got = [(r.id, r.body, r.attempts + 1) for r in rows]
                else:
                    done = conn.execute(claim.where(t.c.id.in_(pick.scalar_subquery()))
                                        .returning(t.c.id, t.c.body, t.c.attempts,
                                                   t.c.precedence)).all()
                    # RETURNING has no order: restore the claim's (ids sort by send time).
                    got = [(r.id, r.body, r.attempts)
                           for r in sorted(done, key=lambda r: (r.precedence, r.id))]
                taken += [Reservation(queue, mid, bytes(body), attempts, receipt=token)
                          for mid, body, attempts in got]
        return taken, None

    def _seconds_until_due(self, queues: Sequence[str]) -> float:
        """Seconds until the earliest delayed message or lease of ``queues`` (inf if none)."""
        t = self._t
        with self._db.begin(read=True) as conn:
            gap = conn.scalar(sa.select(sa.func.min(t.c.available_at)
                                              - self._db.now())
                              .where(t.c.queue.in_(list(queues))))
        return float("inf") if gap is None else max(float(gap), 0.001)

    def _held(self, reservation: Reservation) -> Any:
        t = self._t
        return (t.c.id == reservation.message_id) & (t.c.lease_token == reservation.receipt)

    def info(self) -> dict[str, str]:
        """Dialect, table prefix and schema version, for ``conveyor check``."""
        return self._db.info()

    def ack(self, reservation: Reservation) -> None:
        """Delete the message if it still carries this reservation's token. Idempotent."""
        if self._pg is not None:
            self.ack_many([reservation])
            return
        with self._db.begin(single=True) as conn:
            conn.execute(self._t.delete().where(self._held(reservation)))

    def ack_many(self, reservations: Sequence[Reservation]) -> None:
        """Delete the messages still carrying their reservations' tokens, in one statement
        per 500 (each as :meth:`ack`)."""
        if self._pg is not None:
            if reservations:
                with self._db.raw() as conn:
                    conn.execute(self._pg.ack, ([r.message_id for r in reservations],
                                                [r.receipt for r in reservations]),
                                 prepare=True)
            return
        for start in range(0, len(reservations), _ACK_CHUNK):
            held = [self._held(r) for r in reservations[start:start + _ACK_CHUNK]]
            with self._db.begin(single=True) as conn:
                conn.execute(self._t.delete().where(sa.or_(*held)))

    def nack(self, reservation: Reservation, *, delay: float = 0.0) -> None:
        """Release the lease; ready again after ``delay``. No-op once re-delivered elsewhere."""
        now = self._db.now()
        with self._db.begin() as conn:
            done = conn.execute(self._t.update().where(self._held(reservation))
                                .values(available_at=now + max(float(delay), 0.0),
                                        lease_token=None))
            if done.rowcount:
                self._db.notify(conn, "messages", _wake_payload(reservation.queue, delay))

    def extend(self, reservation: Reservation, *, lease: float) -> bool:
        """Push the lease to ``lease`` seconds from now; False if it already ran out."""
        t = self._t
        now = self._db.now()
        with self._db.begin() as conn:
            done = conn.execute(t.update().where(self._held(reservation), t.c.available_at > now)
                                .values(available_at=now + lease))
            return bool(done.rowcount == 1)

    def dead_letter(self, reservation: Reservation, *, reason: str) -> None:
        """Copy the message into the dead table and delete it, in one transaction.

        If the lease was lost meanwhile, the message stays queued as well (a duplicate,
        never a loss)."""
        d = self._dead
        with self._db.begin() as conn:
            conn.execute(d.delete().where(d.c.id == reservation.message_id))
            conn.execute(d.insert().values(id=reservation.message_id, queue=reservation.queue,
                                           body=reservation.body, reason=str(reason),
                                           dead_at=self._db.now()))
            conn.execute(self._t.delete().where(self._held(reservation)))

    # -- administration -------------------------------------------------------------------
    def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters of ``queue``."""
        d = self._dead
        with self._db.begin(read=True) as conn:
            rows = conn.execute(sa.select(d.c.id, d.c.body, d.c.reason, d.c.dead_at)
                                .where(d.c.queue == queue)
                                .order_by(d.c.dead_at, d.c.id).limit(limit)).all()
        return [DeadLetter(queue, r.id, bytes(r.body), r.reason, float(r.dead_at))
                for r in rows]

    def delete_dead(self, queue: str, message_ids: Iterable[str] | None = None) -> int:
        """Delete the named dead letters of ``queue`` (all when None); return how many."""
        d = self._dead
        stmt = d.delete().where(d.c.queue == queue)
        if message_ids is not None:
            ids = list(message_ids)
            if not ids:
                return 0
            stmt = stmt.where(d.c.id.in_(ids))
        with self._db.begin() as conn:
            return int(conn.execute(stmt).rowcount)

    def purge(self, queue: str) -> int:
        """Delete the ready and delayed messages of ``queue``; reserved ones stay."""
        t = self._t
        now = self._db.now()
        with self._db.begin() as conn:
            done = conn.execute(t.delete().where(
                t.c.queue == queue,
                t.c.lease_token.is_(None) | (t.c.available_at <= now)))
            return int(done.rowcount)

    def stats(self, queue: str) -> QueueStats:
        """Exact counts, from one consistent read."""
        t, d = self._t, self._dead
        now = self._db.now()

        def count(cond: Any) -> Any:
            return sa.func.coalesce(sa.func.sum(sa.case((cond, 1), else_=0)), 0)

        later = t.c.available_at > now
        query = sa.select(count(t.c.available_at <= now),
                          count(later & t.c.lease_token.is_(None)),
                          count(later & t.c.lease_token.is_not(None))).where(t.c.queue == queue)
        dead = sa.select(sa.func.count()).select_from(d).where(d.c.queue == queue)
        with self._db.begin(read=True) as conn:
            ready, delayed, reserved = conn.execute(query).one()
            dead_count = conn.scalar(dead)
        return QueueStats(queue, int(ready), int(delayed), int(reserved), int(dead_count or 0))

    def queues(self) -> list[str]:
        """Queues that have messages or dead letters."""
        t, d = self._t, self._dead
        query = sa.union(sa.select(t.c.queue).distinct(), sa.select(d.c.queue).distinct())
        with self._db.begin(read=True) as conn:
            return sorted(conn.scalars(query).all())

    def ping(self) -> None:
        """One round trip to the database; raises ConnectionLostError/AuthenticationError."""
        with self._db.begin(read=True) as conn:
            conn.execute(sa.select(1))

    def close(self) -> None:
        """Release this broker's connections. Idempotent."""
        self._db.close()
