"""The PostgreSQL-native peers of ``bench/run.py --pg-peers``: clients, schemas and cleaners.

Every peer is driven through its own documented API:

- **pgqueuer** (``Queries.enqueue`` with a scalar per call, with lists for a bulk insert,
  on an asyncpg connection; the worker is a ``QueueManager`` in ``pgqueuer_app.py``).
  pgqueuer keeps no return value: a job is done when its row has left the ``pgqueuer``
  table.
- **procrastinate** (``Task.defer_async`` per call, ``Task.batch_defer_async`` for bulk; the
  worker is ``App.run_worker_async`` in ``procrastinate_app.py``). It stores no return value
  either: a job is done when its row has status ``succeeded``.
- **Celery on PostgreSQL** (kombu's SQLAlchemy transport, ``sqla+postgresql+psycopg://``,
  and Celery's SQLAlchemy result backend, ``db+postgresql+psycopg://``; ``celery_app.py``):
  a task is done when ``celery_taskmeta`` says ``SUCCESS``.

The two asyncio libraries are timed inside one coroutine per measurement (``enqueue`` awaits
one call per task, in sequence), so no event-loop entry is charged per task. Round trips
of the two poll the job's row every :data:`RT_POLL` seconds on a separate connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
RT_POLL = 0.0005  # seconds between polls of one job's row in a peer's round trip
DSN_ENV = "BENCH_PG_DSN"

#: tables each peer fills, emptied between measurements (those that exist)
TABLES: dict[str, list[str]] = {
    "pgqueuer": ["pgqueuer", "pgqueuer_log", "pgqueuer_statistics"],
    "procrastinate": ["procrastinate_jobs", "procrastinate_events",
                      "procrastinate_periodic_defers", "procrastinate_workers"],
    "celery-sqla": ["kombu_message", "celery_taskmeta", "celery_tasksetmeta"],
}


def libpq(url: str) -> str:
    """``url`` as a libpq ``postgresql://`` DSN (drops ``sqla+``, ``db+``, ``+psycopg``)."""
    for prefix in ("sqla+", "db+"):
        url = url.removeprefix(prefix)
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def with_database(url: str, name: str) -> str:
    """``url`` (any of the forms above) pointing at database ``name`` instead."""
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


class _Sync:
    """A private event loop for an asyncio library driven from synchronous code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, awaitable: Awaitable[T]) -> T:
        return self.loop.run_until_complete(awaitable)


class _Poller:
    """One autocommit connection reused for the done-checks of a watcher or a round trip."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.conn = psycopg.connect(dsn, autocommit=True)

    def ids(self, sql: str, ids: list[Any]) -> set[Any]:
        """The first column of ``sql`` run with ``ids`` as its one parameter; nothing while
        its table does not exist yet (Celery's results table is made on first use)."""
        import psycopg

        try:
            return {row[0] for row in self.conn.execute(sql, (ids,))}
        except psycopg.errors.UndefinedTable:
            return set()


class PgqueuerClient(_Sync):
    """Sends no-op jobs to the ``add`` entrypoint through ``pgqueuer.Queries``."""

    PRESENT = "SELECT id FROM pgqueuer WHERE id = ANY(%s)"

    def __init__(self) -> None:
        super().__init__()
        import asyncpg  # type: ignore[import-untyped]
        from pgqueuer import AsyncpgDriver, Queries

        self.dsn = os.environ[DSN_ENV]
        self.conn = self.run(asyncpg.connect(self.dsn))
        self.queries = Queries(AsyncpgDriver(self.conn))
        self.poller = _Poller(self.dsn)

    @staticmethod
    def payload(i: int) -> bytes:
        return json.dumps([i, i]).encode()

    def warm(self) -> None:
        async def go() -> None:
            for i in range(3):
                await self.queries.enqueue("bench_warmup", self.payload(i))
            await self.queries.enqueue(["bench_warmup"] * 2, [b"[0, 0]"] * 2, [0, 0])
        self.run(go())

    def enqueue(self, n: int) -> tuple[float, list[str]]:
        async def go() -> tuple[float, list[str]]:
            enqueue, payload = self.queries.enqueue, self.payload
            t0 = time.perf_counter()
            ids = [(await enqueue("add", payload(i)))[0] for i in range(n)]
            return time.perf_counter() - t0, [str(i) for i in ids]
        return self.run(go())

    def bulk(self, n: int) -> list[str]:
        ids = self.run(self.queries.enqueue(
            ["add"] * n, [self.payload(i) for i in range(n)], [0] * n))
        return [str(i) for i in ids]

    def done(self, ids: list[str]) -> set[str]:
        present = self.poller.ids(self.PRESENT, [int(i) for i in ids])
        return {i for i in ids if int(i) not in present}

    def roundtrip(self) -> Any:
        job = self.run(self.queries.enqueue("add", self.payload(1)))[0]
        while self.poller.ids(self.PRESENT, [job]):
            time.sleep(RT_POLL)


class ProcrastinateClient(_Sync):
    """Defers the ``add`` task of ``procrastinate_app.py`` through its ``App``."""

    SUCCEEDED = "SELECT id FROM procrastinate_jobs WHERE id = ANY(%s) AND status = 'succeeded'"

    def __init__(self) -> None:
        super().__init__()
        os.environ.setdefault("BENCH_PROCRASTINATE_DSN", os.environ[DSN_ENV])
        from procrastinate_app import add, app

        self.app, self.add = app, add
        self.run(app.open_async())
        self.poller = _Poller(os.environ[DSN_ENV])

    def warm(self) -> None:
        async def go() -> None:
            warmup = self.add.configure(queue="bench_warmup")
            for i in range(3):
                await warmup.defer_async(x=i, y=i)
            await warmup.batch_defer_async({"x": 0, "y": 0}, {"x": 1, "y": 1})
        self.run(go())

    def enqueue(self, n: int) -> tuple[float, list[str]]:
        async def go() -> tuple[float, list[str]]:
            defer = self.add.defer_async
            t0 = time.perf_counter()
            ids = [await defer(x=i, y=i) for i in range(n)]
            return time.perf_counter() - t0, [str(i) for i in ids]
        return self.run(go())

    def bulk(self, n: int) -> list[str]:
        kwargs: list[Any] = [{"x": i, "y": i} for i in range(n)]
        ids = self.run(self.add.batch_defer_async(*kwargs))
        return [str(i) for i in ids]

    def done(self, ids: list[str]) -> set[str]:
        return {str(i) for i in self.poller.ids(self.SUCCEEDED, [int(i) for i in ids])}

    def roundtrip(self) -> Any:
        job = self.run(self.add.defer_async(x=1, y=2))
        while not self.poller.ids(self.SUCCEEDED, [job]):
            time.sleep(RT_POLL)


class CelerySqlaClient:
    """Celery (``celery_app.py``) on kombu's SQLAlchemy transport and the database backend."""

    SUCCEEDED = "SELECT task_id FROM celery_taskmeta WHERE task_id = ANY(%s) AND status = 'SUCCESS'"

    def __init__(self) -> None:
        from celery_app import add, app

        self.app, self.add = app, add
        self.poller = _Poller(os.environ[DSN_ENV])

    def warm(self) -> None:
        for i in range(3):
            self.add.apply_async((i, i), queue="bench-warmup")

    def send(self, i: int) -> str:
        return str(self.add.delay(i, i).id)

    def bulk(self, n: int) -> list[str]:
        from celery import group

        return [r.id for r in group(self.add.s(i, i) for i in range(n)).apply_async().results]

    def done(self, ids: list[str]) -> set[str]:
        return self.poller.ids(self.SUCCEEDED, ids)

    def roundtrip(self) -> Any:
        return self.add.delay(1, 2).get(timeout=30, interval=0.005)


CLIENTS: dict[str, Callable[[], Any]] = {
    "pgqueuer": PgqueuerClient, "procrastinate": ProcrastinateClient,
    "celery-sqla": CelerySqlaClient}


# -- the orchestrator's side: databases, schemas, cleaners -----------------------------------
@contextlib.contextmanager
def databases(admin_url: str, names: list[str]) -> Iterator[dict[str, str]]:
    """Fresh databases ``names`` on ``admin_url``'s server (dropped first if left over, and
    on exit); yields name -> libpq DSN."""
    import psycopg

    admin = libpq(admin_url)

    def drop(conn: psycopg.Connection[Any], name: str) -> None:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    with psycopg.connect(admin, autocommit=True) as conn:
        for name in names:
            drop(conn, name)
            conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {name: with_database(admin, name) for name in names}
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in names:
                with contextlib.suppress(psycopg.Error):
                    drop(conn, name)


def install(kind: str, dsn: str) -> None:
    """Install ``kind``'s schema into the empty database ``dsn`` with the library's own API."""
    if kind == "pgqueuer":
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries

        async def go() -> None:
            conn = await asyncpg.connect(dsn)
            try:
                await Queries(AsyncpgDriver(conn)).install()
            finally:
                await conn.close()
        asyncio.run(go())
    elif kind == "procrastinate":
        from procrastinate import App, SyncPsycopgConnector

        app = App(connector=SyncPsycopgConnector(conninfo=dsn))
        with app.open():
            app.schema_manager.apply_schema()


def truncate(dsn: str, tables: list[str]) -> Callable[[], None]:
    """A cleaner that empties those of ``tables`` that exist (CASCADE)."""
    import psycopg

    def clean() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            present = [r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename = ANY(%s)", (tables,))]
            if present:
                conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in present) + " CASCADE")
    return clean


def server_version(dsn: str) -> str:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        fsync = conn.execute("SHOW fsync").fetchone()
    return f"{row[0] if row else '?'} (fsync={fsync[0] if fsync else '?'})"


@contextlib.contextmanager
def mysql_database(url: str) -> Iterator[str]:
    """A fresh database on ``url``'s MySQL/MariaDB server, dropped on exit."""
    import uuid

    import sqlalchemy as sa

    name = f"conveyor_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield sa.make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with contextlib.suppress(sa.exc.DBAPIError), admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
        admin.dispose()


def truncate_mysql(url: str) -> Callable[[], None]:
    """A cleaner that empties conveyor's tables in a MySQL/MariaDB database."""
    import sqlalchemy as sa

    def clean() -> None:
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                tables = [r[0] for r in conn.exec_driver_sql(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = "
                    "DATABASE() AND table_name LIKE 'conveyor\\\\_%%' "
                    "AND table_name <> 'conveyor_schema'")]
                for table in tables:
                    conn.exec_driver_sql(f"TRUNCATE TABLE `{table}`")
        finally:
            engine.dispose()
    return clean


def remove_sqlite(path: str) -> Callable[[], None]:
    """A cleaner that deletes a SQLite database file with its WAL and shared-memory files."""

    def clean() -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path + suffix)
    return clean

