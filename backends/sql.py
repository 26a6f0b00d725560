"""``sqlite:///f.db``, ``postgresql+psycopg://...``, ``mysql+pymysql://...``: SQL result backend.

One row per task in ``<prefix>results`` (see :mod:`conveyor.stores.sql`). The first terminal
write wins inside the database, by a conditional write: an upsert whose update only applies
while the stored state is not terminal (or the row has expired). Expired rows are hidden from
reads, may be overwritten, and are deleted by :meth:`SQLResultBackend.purge_expired`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite

from conveyor.backend import BackendCapabilities, ResultBackend, StoredRecord
from conveyor.states import READY_STATES
from conveyor.stores.sql import SQLStore, backoff, check_options
from conveyor.url import URL

_TERMINAL = sorted(READY_STATES)
_CHUNK = 500  # ids per IN (...) list: well under every dialect's parameter limit
_MYSQL_DUPLICATE_KEY = 1062


class SQLResultBackend(ResultBackend):
    """A result backend on SQLite, PostgreSQL or MySQL/MariaDB through SQLAlchemy Core.

    Options: ``table_prefix`` (default ``conveyor_``), ``poll_interval`` (longest pause of
    ``wait`` between reads, default 0.2 s), ``pool_size`` (default 10). On PostgreSQL ``wait``
    wakes on ``NOTIFY`` as soon as a terminal state is stored.
    """

    capabilities: ClassVar[BackendCapabilities] = BackendCapabilities()

    def __init__(self, url: URL, *, table_prefix: str = "conveyor_",
                 poll_interval: float = 0.2, pool_size: int = 10, **options: Any) -> None:
        super().__init__(url)
        self.poll_interval = check_options("result backend", options, poll_interval)
        self._db = SQLStore(url, "backend", table_prefix=table_prefix, pool_size=pool_size)
        self._t = self._db.tables.results

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
        now = self._db.now()
        values = {"task_id": record.task_id, "state": str(record.state),
                  "data": bytes(record.data), "updated_at": now,
                  "expires_at": None if ttl is None else now + float(ttl)}
        if self._db.dialect == "mysql":
            written = self._store_mysql(values, now)
        else:
            insert = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
            stmt = insert(self._t).values(values)
            stmt = stmt.on_conflict_do_update(
                index_elements=[self._t.c.task_id],
                set_={k: stmt.excluded[k] for k in ("state", "data", "updated_at",
                                                      "expires_at")},
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
        now = self._db.now()
        expires = None if ttl is None else now + float(ttl)
        rows = [{"task_id": r.task_id, "state": str(r.state), "data": bytes(r.data),
                 "updated_at": now, "expires_at": expires} for r in batch]
        insert = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
        upsert = insert(self._t).values(rows)
        # The row-by-row rule of _writable(), with the state being written taken from
        # EXCLUDED: an expired row always; a live one unless it is terminal or the write is
        # PENDING.
        writable = ~self._live(now) | ((upsert.excluded.state != "PENDING")
                                       & self._t.c.state.not_in(_TERMINAL))
        stmt = upsert.on_conflict_do_update(
            index_elements=[self._t.c.task_id],
            set_={k: upsert.excluded[k] for k in ("state", "data", "updated_at", "expires_at")},
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
        with self._db.begin(read=True) as conn:
            for start in range(0, len(ids), _CHUNK):
                query = (sa.select(t.c.task_id, t.c.state, t.c.data)
                         .where(t.c.task_id.in_(ids[start:start + _CHUNK]),
                                self._live(self._db.now())))
                for row in conn.execute(query):
                    found[row.task_id] = StoredRecord(row.task_id, row.state, bytes(row.data))
        return found

    def forget(self, task_id: str) -> None:
        """Delete the record. Idempotent."""
        with self._db.begin() as conn:
            conn.execute(self._t.delete().where(self._t.c.task_id == task_id))

    def wait(self, task_id: str, *, timeout: float | None) -> StoredRecord | None:
        """Block until a terminal record exists; None on timeout. PostgreSQL wakes on NOTIFY;
        elsewhere this polls with backoff (10 ms doubling to ``poll_interval``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = backoff(0.01, self.poll_interval)
        listener = self._db.listener("results")
        while True:
            seen = listener.generation if listener is not None else 0
            record = self.get(task_id)
            if record is not None and record.ready:
                return record
            left = float("inf") if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return None
            if listener is not None and listener.alive:
                listener.wait(seen, min(left, 5.0))
            else:
                time.sleep(max(min(left, pause()), 0.001))

    def purge_expired(self) -> int:
        """Delete expired records now; return how many."""
        t = self._t
        now = self._db.now()
        with self._db.begin() as conn:
            return int(conn.execute(t.delete().where(t.c.expires_at <= now)).rowcount)

    def ping(self) -> None:
        """One round trip; raises ConnectionLostError/AuthenticationError."""
        with self._db.begin(read=True) as conn:
            conn.execute(sa.select(1))

    def close(self) -> None:
        """Release this backend's connections. Idempotent."""
        self._db.close()

