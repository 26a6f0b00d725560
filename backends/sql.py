"""``sqlite:///f.db``, ``postgresql+psycopg://...``, ``mysql+pymysql://...``: SQL result backend.

One row per task in ``<prefix>results`` (see :mod:`conveyor.stores.sql`). The first terminal
write wins inside the database, by a conditional write: an upsert whose update only applies
while the stored state is not terminal (or the row has expired). Expired rows are hidden from
reads, may be overwritten, and are deleted by :meth:`SQLResultBackend.purge_expired`.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable
from typing import Any, ClassVar, cast

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql as mysql_dialect
from sqlalchemy.dialects import postgresql, sqlite

from conveyor.backend import (
    BackendCapabilities,
    RecordPage,
    RecordQuery,
    ResultBackend,
    StoredRecord,
    decode_cursor,
    encode_cursor,
)
from conveyor.exceptions import DriverError
from conveyor.states import READY_STATES
from conveyor.stores.sql import SQLStore, backoff, check_options
from conveyor.url import URL

_TERMINAL = sorted(READY_STATES)
_CHUNK = 500  # ids per IN (...) list: well under every dialect's parameter limit
_MYSQL_DUPLICATE_KEY = 1062
#: Columns a write replaces (all but the key).
_WRITTEN = ("state", "data", "updated_at", "expires_at", "name", "queue", "worker")


_PG_NOW = "extract(epoch from statement_timestamp())::float8"
#: Largest record data a NOTIFY carries: base64 of 4 KiB plus a 255-character id (4 bytes
#: each at most) stays under PostgreSQL's 8,000-byte payload limit.
_NOTIFIED_DATA = 4096


class _PostgresStatements:
    """The backend's hot statements in PostgreSQL's SQL, one round trip each (see
    :meth:`SQLStore.raw`). Table and channel names are validated identifiers."""

    def __init__(self, table: str, channel: str) -> None:
        terminal = ", ".join(f"'{s}'" for s in _TERMINAL)
        live = f"(t.expires_at IS NULL OR t.expires_at > {_PG_NOW})"
        #: A multi-row upsert with store()'s rule per row (an expired row always; a live one
        #: unless it is terminal or the write is PENDING), returning the rows written; when
        #: one of them is terminal, one NOTIFY wakes every waiter. When it is the only one
        #: and small, the NOTIFY carries it (see _notified: its waiter needs no read, one
        #: round trip less on the way back); otherwise the payload is '*' and each waiter
        #: re-reads its own record. The NOTIFY row comes back as a NULL task id.
        #: The arrays go in binary (%b): in text form psycopg quotes and escapes every
        #: element in Python, and the records' data is hex-encoded (a batch of PENDING
        #: records, written behind a producer's sends, took it client time they compete for).
        self.store = (
            f"WITH w AS (INSERT INTO {table} AS t (task_id, state, data, updated_at, "
            "expires_at, name, queue, worker) "
            f"SELECT r.task_id, r.state, r.data, {_PG_NOW}, {_PG_NOW} + %s::float8, "
            "r.name, r.queue, r.worker FROM unnest(%b::text[], %b::text[], %b::bytea[], "
            "%b::text[], %b::text[], %b::text[]) AS r(task_id, state, data, name, queue, "
            "worker) ON CONFLICT (task_id) DO UPDATE SET state = EXCLUDED.state, "
            "data = EXCLUDED.data, updated_at = EXCLUDED.updated_at, "
            "expires_at = EXCLUDED.expires_at, name = EXCLUDED.name, "
            "queue = EXCLUDED.queue, worker = EXCLUDED.worker "
            f"WHERE NOT {live} OR (EXCLUDED.state <> 'PENDING' AND t.state NOT IN "
            f"({terminal})) RETURNING t.task_id, t.state, t.data) "
            "SELECT task_id FROM w UNION ALL "
            f"SELECT NULLIF(pg_notify('{channel}', CASE WHEN ready.n = 1 AND "
            f"octet_length(ready.data) <= {_NOTIFIED_DATA} THEN '=' || ready.state || ' ' || "
            "translate(encode(ready.data, 'base64'), E'\\n', '') || ' ' || ready.task_id "
            "ELSE '*' END)::text, '') FROM "
            "(SELECT w.task_id, w.state, w.data, count(*) OVER () AS n FROM w "
            f"WHERE w.state IN ({terminal}) LIMIT 1) AS ready")
        #: Live records of a list of ids.
        self.get = (f"SELECT task_id, state, data FROM {table} AS t "
                    f"WHERE task_id = ANY(%s::text[]) AND {live}")


def _notified(task_id: str, payloads: list[str] | None) -> StoredRecord | None:
    """The terminal record of ``task_id`` carried by one of ``payloads`` (see
    ``_PostgresStatements.store``: ``=STATE BASE64DATA TASK_ID``), else None. The NOTIFY
    was sent by the very statement that wrote the record, and is delivered only once that
    committed: the record is stored, and a terminal record is never overwritten while live."""
    for payload in payloads or ():
        if payload.startswith("="):
            state, data, found = payload[1:].split(" ", 2)
            if found == task_id and state in READY_STATES:
                return StoredRecord(task_id, state, base64.b64decode(data))
    return None


class SQLResultBackend(ResultBackend):
    """A result backend on SQLite, PostgreSQL or MySQL/MariaDB through SQLAlchemy Core.

    Options: ``table_prefix`` (default ``conveyor_``), ``poll_interval`` (longest pause of
    ``wait`` between reads, default 0.2 s), ``pool_size`` (default 10). On PostgreSQL ``wait``
    wakes on ``NOTIFY`` as soon as a terminal state is stored.

    ``finished_many`` is the interface's default (``get_many`` filtered): a ``state IN
    (...)`` filter in the statement was measured on PostgreSQL and saved the client nothing
    while costing the server more (bench/README.md, the pick-up section).
    """

    capabilities: ClassVar[BackendCapabilities] = BackendCapabilities(coordination=True,
                                                                      query=True)

    def __init__(self, url: URL, *, table_prefix: str = "conveyor_",
                 poll_interval: float = 0.2, pool_size: int = 10, **options: Any) -> None:
        super().__init__(url)
        self.poll_interval = check_options("result backend", options, poll_interval)
        self._db = SQLStore(url, "backend", table_prefix=table_prefix, pool_size=pool_size)
        self._t = self._db.tables.results
        self._joins = self._db.tables.joins
        self._entries = self._db.tables.entries
        self._bytewise: bool | None = None
        self._pg = _PostgresStatements(self._t.name, self._db.channel("results")) \
            if self._db.dialect == "postgresql" else None

    def _live(self, now: Any) -> Any:
        t = self._t
        return t.c.expires_at.is_(None) | (t.c.expires_at > now)

    def _writable(self, now: Any, state: str) -> Any:
        """True for a stored row that a write of ``state`` may replace: any expired row; a
        live one unless it is terminal, or the write is PENDING."""
        if state == "PENDING":
            return ~self._live(now)
        return self._t.c.state.not_in(_TERMINAL) | ~self._live(now)

    def info(self) -> dict[str, str]:
        """Dialect, table prefix and schema version, for ``conveyor check``."""
        return self._db.info()

    def store(self, record: StoredRecord, *, ttl: float | None) -> bool:
        """Write ``record`` unless a live terminal record exists; atomic, returns whether it
        was written. A terminal write also wakes PostgreSQL waiters."""
        if self._pg is not None:
            return self.store_many([record], ttl=ttl)[0]
        self._db.refuse_oversized(len(record.data), "result record")
        now = self._db.now()
        values = {"task_id": record.task_id, "state": str(record.state),
                  "data": bytes(record.data), "updated_at": now,
                  "expires_at": None if ttl is None else now + float(ttl),
                  "name": record.name, "queue": record.queue, "worker": record.worker}
        if self._db.dialect == "mysql":
            written = self._store_mysql(values, now)
        else:
            insert = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
            stmt = insert(self._t).values(values)
            stmt = stmt.on_conflict_do_update(
                index_elements=[self._t.c.task_id],
                set_={k: stmt.excluded[k] for k in _WRITTEN},
                where=self._writable(now, values["state"]))
            with self._db.begin(single=True) as conn:
                # Both dialects count a row the WHERE skipped as 0, an insert or update as 1.
                done = conn.execute(stmt, execution_options={"preserve_rowcount": True})
                written = done.rowcount == 1
                if written and record.ready:
                    self._db.notify(conn, "results", record.task_id)
        return written

    def store_many(self, records: Iterable[StoredRecord], *, ttl: float | None) -> list[bool]:
        """Store several records with :meth:`store`'s rules, in one statement on PostgreSQL
        and SQLite (a multi-row upsert whose RETURNING says which rows were written), in one
        transaction on MySQL."""
        batch = list(records)
        if not batch:
            return []
        if self._db.dialect == "mysql" or len({r.task_id for r in batch}) < len(batch):
            # MySQL has no RETURNING; and an upsert may not touch one row twice.
            return [self.store(r, ttl=ttl) for r in batch]
        if self._pg is not None:
            with self._db.raw() as conn:
                rows = conn.execute(self._pg.store, (
                    None if ttl is None else float(ttl),
                    [r.task_id for r in batch], [str(r.state) for r in batch],
                    [bytes(r.data) for r in batch], [r.name for r in batch],
                    [r.queue for r in batch], [r.worker for r in batch]),
                    prepare=True).fetchall()
            stored = {row[0] for row in rows}
            return [r.task_id in stored for r in batch]
        now = self._db.now()
        expires = None if ttl is None else now + float(ttl)
        rows = [{"task_id": r.task_id, "state": str(r.state), "data": bytes(r.data),
                 "updated_at": now, "expires_at": expires, "name": r.name, "queue": r.queue,
                 "worker": r.worker} for r in batch]
        insert = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
        upsert = insert(self._t).values(rows)
        # The row-by-row rule of _writable(), with the state being written taken from
        # EXCLUDED: an expired row always; a live one unless it is terminal or the write is
        # PENDING.
        writable = ~self._live(now) | ((upsert.excluded.state != "PENDING")
                                       & self._t.c.state.not_in(_TERMINAL))
        stmt = upsert.on_conflict_do_update(
            index_elements=[self._t.c.task_id],
            set_={k: upsert.excluded[k] for k in _WRITTEN},
            where=writable).returning(self._t.c.task_id)
        with self._db.begin(single=True) as conn:
            written = {row[0] for row in conn.execute(stmt)}
            if any(r.ready and r.task_id in written for r in batch):
                # One notification wakes every waiter; each re-reads its own record.
                self._db.notify(conn, "results", "*")
        return [r.task_id in written for r in batch]

    def _store_mysql(self, values: dict[str, Any], now: Any) -> bool:
        # ON DUPLICATE KEY UPDATE assigns columns left to right, each seeing the ones before,
        # so "IF(old state was writable, new, old)" per column cannot be written correctly;
        # and its row count is ambiguous. Instead: a conditional UPDATE (counting matched
        # rows, the dialect sets CLIENT_FOUND_ROWS), else a plain INSERT; when that INSERT
        # hits a row created meanwhile, the UPDATE decides once more.
        t = self._t
        update = (t.update().where(t.c.task_id == values["task_id"],
                                   self._writable(now, values["state"]))
                  .values({k: v for k, v in values.items() if k != "task_id"}))
        with self._db.begin() as conn:
            if conn.execute(update).rowcount:
                return True
        try:
            with self._db.begin() as conn:
                conn.execute(t.insert().values(values))
            return True
        except Exception as exc:
            cause = exc.__cause__
            if not (isinstance(cause, sa_exc.IntegrityError) and cause.orig is not None
                    and cause.orig.args[:1] == (_MYSQL_DUPLICATE_KEY,)):
                raise
        with self._db.begin() as conn:
            return bool(conn.execute(update).rowcount)

    def get(self, task_id: str) -> StoredRecord | None:
        """The live record of ``task_id``, or None (missing or expired)."""
        return self.get_many([task_id]).get(task_id)

    def get_many(self, task_ids: Iterable[str]) -> dict[str, StoredRecord]:
        """Live records of ``task_ids`` in one query per 500 ids."""
        t = self._t
        ids = list(dict.fromkeys(task_ids))
        found: dict[str, StoredRecord] = {}
        if self._pg is not None:
            if ids:
                with self._db.raw() as conn:
                    for row in conn.execute(self._pg.get, (ids,), prepare=True):
                        found[row[0]] = StoredRecord(row[0], row[1], bytes(row[2]))
            return found
        with self._db.begin(read=True) as conn:
            for start in range(0, len(ids), _CHUNK):
                query = (sa.select(t.c.task_id, t.c.state, t.c.data)
                         .where(t.c.task_id.in_(ids[start:start + _CHUNK]),
                                self._live(self._db.now())))
                for row in conn.execute(query):
                    found[row.task_id] = StoredRecord(row.task_id, row.state, bytes(row.data))
        return found

    def query(self, query: RecordQuery) -> RecordPage:
        """One indexed query: the database walks ``results_by_name``, ``_by_queue`` or
        ``_by_state`` (the first filter given, in that order) or ``results_recent``, newest
        first, from the cursor on. A worker or id-prefix filter alone walks
        ``results_recent`` and tests each row (fast while matches are common)."""
        t = self._t
        cursor = None if query.cursor is None else decode_cursor(query.cursor)
        where = [self._live(self._db.now())]
        for column, value in (("state", query.state), ("name", query.name),
                              ("queue", query.queue), ("worker", query.worker)):
            if value is not None:
                where.append(t.c[column] == value)
        if query.id_prefix:
            prefix = query.id_prefix
            # VARBINARY on MySQL counts bytes; the other dialects count characters.
            length = len(prefix.encode()) if self._db.dialect == "mysql" else len(prefix)
            # Equality with the id's start, not LIKE (SQLite's LIKE ignores case, and '%'
            # and '_' would need escaping).
            where.append(sa.func.substr(t.c.task_id, 1, length)
                         == sa.type_coerce(prefix, t.c.task_id.type))
            if self._ids_sort_bytewise() and ord(prefix[-1]) < 0x10FFFF:
                # Where ids sort by code point, the prefix is also a range the primary key
                # serves (the equality above keeps the answer exact either way).
                after = prefix[:-1] + chr(ord(prefix[-1]) + 1)
                where.append(t.c.task_id >= prefix)
                where.append(t.c.task_id < after)
        if query.since is not None:
            where.append(t.c.updated_at >= float(query.since))
        if query.until is not None:
            where.append(t.c.updated_at < float(query.until))
        if cursor is not None:
            where.append((t.c.updated_at < cursor[0])
                         | ((t.c.updated_at == cursor[0]) & (t.c.task_id < cursor[1])))
        limit = max(int(query.limit), 1)
        select = (sa.select(t.c.task_id, t.c.state, t.c.data, t.c.updated_at, t.c.name,
                            t.c.queue, t.c.worker)
                  .where(*where).order_by(t.c.updated_at.desc(), t.c.task_id.desc())
                  .limit(limit + 1))
        with self._db.begin(read=True) as conn:
            rows = conn.execute(select).all()
        page = rows[:limit]
        records = [StoredRecord(r.task_id, r.state, bytes(r.data), r.name, r.queue, r.worker)
                   for r in page]
        more = len(rows) > limit
        return RecordPage(records, encode_cursor(float(page[-1].updated_at), page[-1].task_id)
                          if more else None)

    def _ids_sort_bytewise(self) -> bool:
        """Whether task ids compare by code point here (SQLite's BINARY; PostgreSQL with a
        C/POSIX collation), so an id prefix is an index range. MySQL pads: no."""
        if self._bytewise is None:
            if self._db.dialect == "sqlite":
                self._bytewise = True
            elif self._db.dialect == "postgresql":
                with self._db.begin(read=True) as conn:
                    collation = str(conn.scalar(sa.text(
                        "SELECT datcollate FROM pg_database WHERE datname = current_database()"
                    )) or "")
                self._bytewise = collation in ("C", "POSIX") or collation.startswith("C.")
            else:
                self._bytewise = False
        return self._bytewise

    def forget(self, task_id: str) -> None:
        """Delete the record. Idempotent."""
        with self._db.begin() as conn:
            conn.execute(self._t.delete().where(self._t.c.task_id == task_id))

    def wait(self, task_id: str, *, timeout: float | None) -> StoredRecord | None:
        """Block until a terminal record exists; None on timeout. PostgreSQL wakes on NOTIFY;
        elsewhere this polls with backoff (2 ms doubling to ``poll_interval``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = backoff(0.002, self.poll_interval)
        listener = self._db.listener("results")
        notified: StoredRecord | None = None
        while True:
            seen = listener.generation if listener is not None else 0
            record = notified or self.get(task_id)
            if record is not None and record.ready:
                return record
            left = float("inf") if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return None
            if listener is not None and listener.alive:
                listener.wait(seen, min(left, 5.0))
                notified = _notified(task_id, listener.payloads_since(seen))
            else:
                time.sleep(max(min(left, pause()), 0.001))

    def purge_expired(self) -> int:
        """Delete expired records now; return how many (expired join sets and entries are
        deleted too, uncounted)."""
        t = self._t
        now = self._db.now()
        with self._db.begin() as conn:
            count = int(conn.execute(t.delete().where(t.c.expires_at <= now)).rowcount)
            for area in (self._joins, self._entries):
                conn.execute(area.delete().where(area.c.expires_at <= now))
        return count

    # -- coordination -----------------------------------------------------------------------
    def _insert(self, table: Any, values: dict[str, Any], *,
                replace: tuple[str, ...] = ()) -> Any:
        """An INSERT that leaves an existing row alone, or with ``replace`` updates those
        columns of it."""
        if self._db.dialect == "mysql":
            if not replace:
                return table.insert().values(values).prefix_with("IGNORE")
            upsert = mysql_dialect.insert(table).values(values)
            return upsert.on_duplicate_key_update({c: upsert.inserted[c] for c in replace})
        insert = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
        stmt: Any = insert(table).values(values)
        keys = [c for c in table.primary_key.columns]
        if not replace:
            return stmt.on_conflict_do_nothing(index_elements=keys)
        return stmt.on_conflict_do_update(index_elements=keys,
                                          set_={c: stmt.excluded[c] for c in replace})

    @staticmethod
    def _check_key(what: str, value: str, limit: int) -> None:
        if len(value) > limit:
            raise DriverError(f"{what} is {len(value)} characters long; the SQL backend keeps "
                              f"at most {limit}")

    def join(self, key: str, member: str, *, ttl: float | None) -> int:
        """One transaction serialized per key by a lock on the key's head row (SELECT ... FOR
        UPDATE; SQLite's write lock): reset when expired, insert the member if absent,
        refresh the expiry, count."""
        self._check_key("join key", key, 256)
        self._check_key("join member", member, 255)
        j = self._joins
        with self._db.begin() as conn:
            now = float(conn.scalar(sa.select(self._db.now())))
            expires = None if ttl is None else now + float(ttl)
            head = self._lock_head(conn, key, expires)
            if head is not None and head <= now:
                conn.execute(j.delete().where(j.c.key == key, j.c.member != ""))
            conn.execute(self._insert(j, {"key": key, "member": "m" + member,
                                          "expires_at": expires}))
            conn.execute(j.update().where(j.c.key == key).values(expires_at=expires))
            return int(conn.scalar(sa.select(sa.func.count())
                                   .where(j.c.key == key, j.c.member != "")))

    def _lock_head(self, conn: Any, key: str, expires: float | None) -> float | None:
        """Create or lock the head row of ``key`` in one upsert that takes the row's write
        lock at once (a plain INSERT IGNORE then SELECT FOR UPDATE deadlocks on MySQL, two
        shared locks upgrading); return the set's expiry before this join."""
        j = self._joins
        values = {"key": key, "member": "", "expires_at": expires}
        if self._db.dialect == "mysql":
            upsert = mysql_dialect.insert(j).values(values)
            conn.execute(upsert.on_duplicate_key_update(expires_at=j.c.expires_at))
            return cast("float | None", conn.scalar(
                sa.select(j.c.expires_at).where(j.c.key == key, j.c.member == "")))
        insert = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
        stmt: Any = insert(j).values(values)
        # Setting the column to itself keeps the old expiry but still locks the row.
        stmt = stmt.on_conflict_do_update(index_elements=[j.c.key, j.c.member],
                                          set_={"expires_at": j.c.expires_at})
        return cast("float | None", conn.scalar(stmt.returning(j.c.expires_at)))

    def put_entry(self, key: str, value: bytes, *, ttl: float | None) -> None:
        """One upsert."""
        self._check_key("entry key", key, 512)
        with self._db.begin(single=True) as conn:
            now = float(conn.scalar(sa.select(self._db.now())))
            conn.execute(self._insert(
                self._entries, {"key": key, "value": bytes(value),
                                "expires_at": None if ttl is None else now + float(ttl)},
                replace=("value", "expires_at")))

    def entries(self, prefix: str) -> dict[str, bytes]:
        """One query. The prefix is compared for equality with the key's start, not by LIKE
        (SQLite's LIKE ignores case) or a range (PostgreSQL collations do not sort bytes)."""
        e = self._entries
        # VARBINARY on MySQL counts bytes; the other dialects count characters.
        length = len(prefix.encode()) if self._db.dialect == "mysql" else len(prefix)
        start = sa.func.substr(e.c.key, 1, length) if length else sa.literal("")
        query = sa.select(e.c.key, e.c.value).where(
            start == sa.type_coerce(prefix, e.c.key.type),
            e.c.expires_at.is_(None) | (e.c.expires_at > self._db.now()))
        with self._db.begin(read=True) as conn:
            return {row.key: bytes(row.value) for row in conn.execute(query)}

    def delete_entry(self, key: str) -> None:
        """One DELETE. Idempotent."""
        with self._db.begin(single=True) as conn:
            conn.execute(self._entries.delete().where(self._entries.c.key == key))

    def ping(self) -> None:
        """One round trip; raises ConnectionLostError/AuthenticationError."""
        with self._db.begin(read=True) as conn:
            conn.execute(sa.select(1))

    def close(self) -> None:
        """Release this backend's connections. Idempotent."""
        self._db.close()

