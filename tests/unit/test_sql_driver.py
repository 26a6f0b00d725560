"""What the SQL broker and backend promise beyond the contract: configuration errors, schema,
SQLite across processes, error translation, and a claim that stays indexed at 100,000 rows."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from conveyor.backend import StoredRecord
from conveyor.backends.sql import SQLResultBackend
from conveyor.brokers.sql import SQLBroker
from conveyor.exceptions import (
    AuthenticationError,
    ConfigurationError,
    ConnectionLostError,
    DriverError,
)
from conveyor.registry import backend_from_url, broker_from_url
from conveyor.stores.sql import SCHEMA_VERSION
from conveyor.url import URL
from tests.servers import free_port
from tests.servers.postgres import fresh_database


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}_"


def _discard(store: SQLBroker | SQLResultBackend) -> None:
    """Drop the tables a test's own prefix made, then close the store."""
    with store._db.engine.begin() as conn:
        store._db.tables.metadata.drop_all(conn)
    store.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'conveyor.db'}"


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'conveyor.db'}"
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def broker(any_url: str) -> Iterator[SQLBroker]:
    built = SQLBroker(URL(any_url), table_prefix=_prefix())
    yield built
    with built._db.engine.begin() as conn:
        built._db.tables.metadata.drop_all(conn)
    built.close()


def _count(broker: SQLBroker, table: Any) -> int:
    with broker._db.engine.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


# -- configuration ---------------------------------------------------------------------------

def test_sqlite_file_in_a_missing_directory_names_the_directory(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    with pytest.raises(ConfigurationError, match=str(missing)):
        SQLBroker(URL(f"sqlite:///{missing / 'q.db'}"))
    with pytest.raises(ConfigurationError, match=str(missing)):
        SQLResultBackend(URL(f"sqlite:///{missing / 'r.db'}"))


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://"])
def test_in_memory_sqlite_is_refused_with_a_pointer_to_memory_scheme(url: str) -> None:
    with pytest.raises(ConfigurationError, match="memory://"):
        SQLBroker(URL(url))


@pytest.mark.parametrize("prefix", ["", "Conveyor_", "1abc", "a-b", "x; drop table y", "a" * 32])
def test_invalid_table_prefix_is_refused(sqlite_url: str, prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="table_prefix"):
        SQLBroker(URL(sqlite_url), table_prefix=prefix)


def test_unknown_option_is_refused(sqlite_url: str) -> None:
    with pytest.raises(ConfigurationError, match="visibility"):
        SQLBroker(URL(sqlite_url), visibility=3)  # type: ignore[call-arg]


def test_registry_builds_the_sql_drivers_for_sqlite(sqlite_url: str) -> None:
    broker = broker_from_url(sqlite_url)
    backend = backend_from_url(sqlite_url)
    try:
        assert isinstance(broker, SQLBroker)
        assert isinstance(backend, SQLResultBackend)
    finally:
        broker.close()
        backend.close()


# -- schema ----------------------------------------------------------------------------------

def test_schema_version_is_recorded_per_component(sqlite_url: str) -> None:
    broker = SQLBroker(URL(sqlite_url))
    backend = SQLResultBackend(URL(sqlite_url))
    try:
        broker.ping()
        backend.ping()
        schema = broker._db.tables.schema
        with broker._db.engine.connect() as conn:
            rows = dict(conn.execute(sa.select(schema.c.component, schema.c.version)).all())
        assert rows == {"broker": SCHEMA_VERSION, "backend": SCHEMA_VERSION}
        assert sa.inspect(broker._db.engine).has_table("conveyor_messages")
    finally:
        broker.close()
        backend.close()


def test_tables_of_a_newer_schema_version_are_refused(sqlite_url: str) -> None:
    first = SQLBroker(URL(sqlite_url))
    first.ping()
    schema = first._db.tables.schema
    with first._db.engine.begin() as conn:
        conn.execute(schema.update().values(version=SCHEMA_VERSION + 1))
    first.close()
    second = SQLBroker(URL(sqlite_url))
    try:
        with pytest.raises(ConfigurationError, match="upgrade conveyor"):
            second.ping()
    finally:
        second.close()


def test_sqlite_runs_in_wal_mode(sqlite_url: str) -> None:
    broker = SQLBroker(URL(sqlite_url))
    try:
        with broker._db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        broker.close()


# -- rows ------------------------------------------------------------------------------------

def test_acked_and_dead_lettered_rows_are_removed(broker: SQLBroker) -> None:
    broker.enqueue_many("q", [b"a", b"b"])
    first, second = broker.reserve(["q"], lease=30, limit=2)
    broker.ack(first)
    broker.dead_letter(second, reason="bad")
    assert _count(broker, broker._db.tables.messages) == 0
    assert _count(broker, broker._db.tables.dead) == 1


def test_expired_results_are_deleted_by_purge_and_kept_otherwise(any_url: str) -> None:
    backend = SQLResultBackend(URL(any_url), table_prefix=_prefix())
    try:
        backend.store(StoredRecord("old", "SUCCESS", b"x"), ttl=0.05)
        backend.store(StoredRecord("new", "SUCCESS", b"y"), ttl=60)
        backend.store(StoredRecord("forever", "SUCCESS", b"z"), ttl=None)
        time.sleep(0.3)
        assert backend.purge_expired() == 1
        assert set(backend.get_many(["old", "new", "forever"])) == {"new", "forever"}
    finally:
        _discard(backend)


_CLAIMER = """
import os, sys, time
from conveyor.url import URL
from conveyor.brokers.sql import SQLBroker
broker = SQLBroker(URL(sys.argv[1]))
broker.stats("q")  # connect before the race starts
barrier, racers = sys.argv[2], int(sys.argv[3])
open(os.path.join(barrier, str(os.getpid())), "w").close()
deadline = time.monotonic() + 60
while len(os.listdir(barrier)) < racers and time.monotonic() < deadline:
    time.sleep(0.01)  # start together however slowly each process imported
idle_until = time.monotonic() + 3
while time.monotonic() < idle_until:
    got = broker.reserve(["q"], lease=60, limit=3, wait=0.2)
    for r in got:
        print(r.message_id, flush=True)
        broker.ack(r)
    if got:
        idle_until = time.monotonic() + 1
        time.sleep(0.002)  # leave the others a turn at the write lock
"""


def test_processes_claiming_from_one_sqlite_file_never_claim_a_message_twice(
        sqlite_url: str, tmp_path: Path) -> None:
    broker = SQLBroker(URL(sqlite_url))
    ids = broker.enqueue_many("q", [b"m%d" % i for i in range(300)])
    barrier = tmp_path / "ready"
    barrier.mkdir()
    workers = [subprocess.Popen([sys.executable, "-c", _CLAIMER, sqlite_url, str(barrier), "3"],
                                stdout=subprocess.PIPE, text=True) for _ in range(3)]
    claimed = [w.communicate(timeout=90)[0].split() for w in workers]
    broker.close()
    every = [mid for got in claimed for mid in got]
    assert sorted(every) == sorted(ids)  # each message once: none lost, none twice
    assert sum(1 for got in claimed if got) >= 2, "the processes did not actually race"


# -- PostgreSQL ------------------------------------------------------------------------------

def test_postgres_scheme_maps_to_psycopg(postgres_url: str) -> None:
    url = "postgres://" + postgres_url.split("://", 1)[1]
    broker = broker_from_url(url)
    try:
        broker.ping()
        assert isinstance(broker, SQLBroker)
        assert broker._db.engine.dialect.driver == "psycopg"
    finally:
        broker.close()


def test_waiting_reserve_on_postgres_wakes_on_notify(postgres_url: str) -> None:
    broker = SQLBroker(URL(postgres_url), table_prefix=_prefix(), poll_interval=2.0)
    try:
        broker.ping()
        sent: list[float] = []

        def send() -> None:
            broker.enqueue("q", b"hello")
            sent.append(time.monotonic())

        # 1.5 s falls between two polls of the backoff (1.27 s and 2.55 s), so only a
        # notification can wake the reserve within 0.2 s.
        threading.Timer(1.5, send).start()
        got = broker.reserve(["q"], lease=30, wait=5)
        woke = time.monotonic()
        assert [r.body for r in got] == [b"hello"]
        assert woke - sent[0] < 0.2
    finally:
        _discard(broker)


@contextlib.contextmanager
def _recording(store: SQLBroker | SQLResultBackend) -> Iterator[list[tuple[str, Any]]]:
    """Record what ``store``'s raw connections are really sent (query, params) while in the
    block: hot statements go to psycopg through SQLStore.raw(), not through SQLAlchemy's
    execution events."""
    seen: list[tuple[str, Any]] = []
    real_raw = store._db.raw

    class Recording:
        def __init__(self, conn: Any) -> None:
            self._conn = conn

        def execute(self, query: str, params: Any = None, **kwargs: Any) -> Any:
            seen.append((query, params))
            return self._conn.execute(query, params, **kwargs)

    @contextlib.contextmanager
    def recording_raw() -> Iterator[Any]:
        with real_raw() as conn:
            yield Recording(conn)

    store._db.raw = recording_raw  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        store._db.raw = real_raw  # type: ignore[method-assign]


def test_claim_uses_the_index_with_100000_queued_rows(postgres_url: str) -> None:
    broker = SQLBroker(URL(postgres_url), table_prefix=_prefix())
    t = broker._db.tables.messages
    try:
        broker.enqueue("other", b"x")
        with broker._db.engine.begin() as conn:  # bulk rows the fast way; claims go through
            conn.exec_driver_sql(
                f"INSERT INTO {t.name} (id, queue, body, available_at, attempts, enqueued_at) "
                "SELECT lpad(to_hex(g), 32, '0'), 'busy', 'x'::bytea, "
                "extract(epoch from now()) - 100000 + g, 0, extract(epoch from now()) "
                "FROM generate_series(1, 100000) g")
            conn.exec_driver_sql(f"ANALYZE {t.name}")
        with _recording(broker) as seen:
            got = broker.reserve(["busy"], lease=30, limit=10)
        assert len(got) == 10
        assert [r.message_id for r in got] == [f"{g:032x}" for g in range(1, 11)]
        assert broker._pg is not None
        claims = [(q, p) for q, p in seen if q == broker._pg.claim]
        assert len(claims) == 1, seen
        statement, params = claims[0]
        assert params[2:] == ("busy", 10)
        with broker._db.raw() as conn:  # EXPLAIN plans the UPDATE without running it
            custom = "\n".join(row[0] for row in conn.execute("EXPLAIN " + statement, params))
            # The statement is prepared, so after a few runs PostgreSQL may use its generic
            # plan (parameters unknown, LIMIT included): that one must be indexed too.
            generic = _generic_plan(conn, statement, "float8, text, text, int", params)
        for plan in (custom, generic):
            assert f"{broker._db.prefix}messages_ranked" in plan, plan
            assert "Seq Scan" not in plan, plan
    finally:
        _discard(broker)


def _generic_plan(conn: Any, statement: str, types: str, values: tuple[Any, ...]) -> str:
    """The plan PostgreSQL caches for ``statement`` once prepared (parameters unknown)."""
    import psycopg.sql

    numbered = iter(range(1, 20))
    conn.execute(f"PREPARE conveyor_plan ({types}) AS "
                 + re.sub("%s", lambda _: f"${next(numbered)}", statement))
    conn.execute("SET plan_cache_mode = force_generic_plan")
    try:
        literals = psycopg.sql.SQL(", ").join(map(psycopg.sql.Literal, values))
        return "\n".join(row[0] for row in conn.execute(psycopg.sql.SQL(
            "EXPLAIN EXECUTE conveyor_plan ({})").format(literals)))
    finally:
        conn.execute("RESET plan_cache_mode")
        conn.execute("DEALLOCATE conveyor_plan")


def test_hot_statements_prepared_on_empty_tables_stay_indexed_on_postgres(
        postgres_url: str) -> None:
    # A worker that starts on an empty queue prepares its statements while the tables hold
    # nothing: the generic plan made then is kept when the tables grow (no ANALYZE has run),
    # and a Seq Scan in it scans the whole table on every claim, ack and read.
    prefix = _prefix()
    broker = SQLBroker(URL(postgres_url), table_prefix=prefix)
    backend = SQLResultBackend(URL(postgres_url), table_prefix=prefix)
    try:
        broker.ping()
        assert backend.get("nothing") is None  # the tables exist, empty and never analyzed
        assert broker._pg is not None and backend._pg is not None
        statements = [
            (broker._pg.claim, "float8, text, text, int", (30.0, "t", "q", 10)),
            (broker._pg.due, "text[]", (["q"],)),
            (broker._pg.ack, "text[], text[]", (["a"], ["t"])),
            (backend._pg.get, "text[]", (["a", "b"],)),
        ]
        with broker._db.raw() as conn:  # conveyor's own connection, with its settings
            for statement, types, values in statements:
                plan = _generic_plan(conn, statement, types, values)
                assert f"Seq Scan on {prefix}" not in plan, f"{statement}\n{plan}"
                assert "Index" in plan, plan
    finally:
        backend.close()
        _discard(broker)


def _terminate_others(postgres_url: str) -> int:
    """End every other session of the server, as a restart would; how many were ended."""
    dsn = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as admin:
        return int(admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND datname = current_database() "
            "AND backend_type = 'client backend'").fetchone()[0])


def test_after_a_dropped_session_broker_and_backend_reconnect_together_on_postgres(
        postgres_url: str) -> None:
    # A restarted server drops every session: the first statement that meets a dead one
    # fails (retryable), and every other connection opened before it is replaced too, the
    # backend's as well as the broker's (one URL, one set of connections): no second failure.
    # A database of its own: the sessions ended are this test's only.
    with fresh_database(postgres_url) as url:
        _reconnect_together(url)


def _reconnect_together(postgres_url: str) -> None:
    prefix = _prefix()
    broker = SQLBroker(URL(postgres_url), table_prefix=prefix)
    backend = SQLResultBackend(URL(postgres_url), table_prefix=prefix)
    try:
        broker.enqueue("q", b"before")
        backend.store(StoredRecord("t1", "SUCCESS", b"{}"), ttl=60)
        assert backend.get("t1") is not None
        with broker._db.raw(), backend._db.raw():
            pass  # two connections open and idle now, as under load
        assert _terminate_others(postgres_url) >= 2
        with pytest.raises(ConnectionLostError):
            broker.enqueue("q", b"lost")
        found = backend.get("t1")  # would meet its own dead connection without the sharing
        assert found is not None and found.state == "SUCCESS"
        broker.enqueue("q", b"after")
        got = broker.reserve(["q"], lease=30, limit=10)
        assert sorted(r.body for r in got) == [b"after", b"before"]
    finally:
        backend.close()
        _discard(broker)


def test_a_forked_child_opens_its_own_connections_on_postgres(postgres_url: str) -> None:
    # The processes pool forks: a child must never use (or close) its parent's sessions.
    import os

    broker = SQLBroker(URL(postgres_url), table_prefix=_prefix())
    try:
        broker.enqueue("q", b"parent-1")
        pid = os.fork()
        if pid == 0:  # the child: send one, exit without running any cleanup
            code = 1
            try:
                broker.enqueue("q", b"child")
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        broker.enqueue("q", b"parent-2")  # the parent's connection still works
        got = broker.reserve(["q"], lease=30, limit=10)
        assert sorted(r.body for r in got) == [b"child", b"parent-1", b"parent-2"]
    finally:
        _discard(broker)


def test_consecutive_empty_waits_on_postgres_read_the_next_due_time_once(
        postgres_url: str) -> None:
    # An idle worker's reserve returns every poll wait and starts again: the next due time
    # it read is reused while no delayed send could have made it earlier, and read again
    # as soon as one did (that send notifies), so a delayed message still comes on time.
    broker = SQLBroker(URL(postgres_url), table_prefix=_prefix())
    try:
        assert broker._pg is not None
        broker.reserve(["idle"], lease=30, wait=0.05)  # the listener is up
        with _recording(broker) as seen:
            for _ in range(5):
                assert broker.reserve(["idle"], lease=30, wait=0.05) == []
            reads = [query for query, _ in seen]
            assert reads.count(broker._pg.due) <= 1, reads
            other = SQLBroker(URL(postgres_url), table_prefix=broker._db.prefix)
            try:
                other.enqueue("idle", b"soon", delay=0.4)  # from another client
            finally:
                other.close()
            started = time.monotonic()
            got = broker.reserve(["idle"], lease=30, wait=3.0)
            took = time.monotonic() - started
        assert [r.body for r in got] == [b"soon"]
        assert took < 1.2, f"the delayed message came {took:.2f}s into the wait"
    finally:
        _discard(broker)


def test_an_idle_waiting_reserve_on_postgres_reads_when_next_is_due_on_its_connection(
        postgres_url: str) -> None:
    # An empty claim reads when the next message is due on its own connection (a prepared
    # statement), not in a separate SQLAlchemy transaction. A delayed message due during
    # the wait is still taken then.
    broker = SQLBroker(URL(postgres_url), table_prefix=_prefix())
    try:
        broker.enqueue("idle", b"later", delay=0.3)

        def no_separate_read(queues: Any) -> float:
            raise AssertionError("an empty PostgreSQL claim read the next due time again")

        broker._seconds_until_due = no_separate_read  # type: ignore[method-assign]
        got = broker.reserve(["empty", "idle"], lease=30, wait=5)
        assert [r.body for r in got] == [b"later"]
        taken, due = broker._claim(["empty", "idle"], 30, 1, due=True)
        assert taken == [] and due is not None and 25 < due <= 30  # its lease
        assert broker._claim(["empty"], 30, 1, due=True) == ([], float("inf"))
        broker.enqueue("idle", b"now")
        taken, due = broker._claim(["empty", "idle"], 30, 5, due=True)
        assert [r.body for r in taken] == [b"now"] and due is None
    finally:
        _discard(broker)


@pytest.mark.parametrize("size", [0, 4096, 4097, 20000])
def test_postgres_wait_returns_the_record_its_notification_carries(postgres_url: str,
                                                                   size: int) -> None:
    # A lone terminal write of up to 4 KiB of data sends the record in its NOTIFY: the waiter
    # returns it without reading the table again. Larger ones are read, as before.
    backend = SQLResultBackend(URL(postgres_url), table_prefix=_prefix())
    try:
        backend.ping()
        task_id = "an id with  spaces, é and = signs "
        data = bytes(range(256)) * (size // 256) + b"\n" * (size % 256)
        reads: list[str] = []
        real_get = backend.get

        def counted_get(tid: str) -> Any:
            reads.append(tid)
            return real_get(tid)

        backend.get = counted_get  # type: ignore[method-assign,assignment]
        threading.Timer(0.3, lambda: backend.store(
            StoredRecord(task_id, "SUCCESS", data), ttl=60)).start()
        record = backend.wait(task_id, timeout=10)
        assert record is not None
        assert (record.task_id, record.state, record.data) == (task_id, "SUCCESS", data)
        assert len(reads) == (1 if size <= 4096 else 2)
    finally:
        _discard(backend)


def test_postgres_wait_is_not_answered_by_another_tasks_notification(postgres_url: str) -> None:
    backend = SQLResultBackend(URL(postgres_url), table_prefix=_prefix())
    try:
        backend.ping()

        def finish() -> None:
            backend.store(StoredRecord("other", "SUCCESS", b"theirs"), ttl=60)
            backend.store(StoredRecord("mine", "STARTED", b"running"), ttl=60)
            time.sleep(0.2)
            backend.store(StoredRecord("mine", "FAILURE", b"mine"), ttl=60)

        threading.Timer(0.2, finish).start()
        record = backend.wait("mine", timeout=10)
        assert record is not None and (record.state, record.data) == ("FAILURE", b"mine")
        # Batches notify '*': each waiter reads its own record.
        threading.Timer(0.2, lambda: backend.store_many(
            [StoredRecord("a", "SUCCESS", b"1"), StoredRecord("b", "SUCCESS", b"2")],
            ttl=60)).start()
        record = backend.wait("b", timeout=10)
        assert record is not None and record.data == b"2"
    finally:
        _discard(backend)


# -- error translation -----------------------------------------------------------------------

def test_unreachable_postgres_is_a_connection_lost_error() -> None:
    broker = SQLBroker(URL(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x"))
    try:
        with pytest.raises(ConnectionLostError) as caught:
            broker.ping()
        assert caught.value.retryable
        assert isinstance(caught.value.__cause__, sa.exc.OperationalError)
        # The hot statements check a connection out of the pool themselves (SQLStore.raw):
        # a refused connection there is the same retryable error, never psycopg's own.
        broker._db._ready = True  # past the schema step, straight to the raw checkout
        with pytest.raises(ConnectionLostError) as caught:
            broker.enqueue("q", b"x")
        assert caught.value.retryable
        assert isinstance(caught.value.__cause__, sa.exc.OperationalError)
    finally:
        broker.close()


def test_postgres_connections_the_server_dropped_fail_once_then_are_replaced(
        postgres_url: str) -> None:
    """A restarted server drops every pooled connection: the first statement to meet one is
    a retryable ConnectionLostError, and the pool's other stale connections are replaced
    rather than failing one by one."""
    import psycopg

    broker = SQLBroker(URL(postgres_url), table_prefix=_prefix())
    backend = SQLResultBackend(URL(postgres_url), table_prefix=broker._db.prefix)
    plain = sa.make_url(postgres_url).set(drivername="postgresql")
    try:
        broker.enqueue("q", b"first")
        backend.store(StoredRecord("t1", "SUCCESS", b"{}"), ttl=None)
        with broker._db.raw() as a, broker._db.raw() as b, broker._db.raw() as c:
            pids = [conn.info.backend_pid for conn in (a, b, c)]  # three pooled connections
        with psycopg.connect(plain.render_as_string(hide_password=False),
                             autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(p) FROM unnest(%s::int[]) AS p", (pids,))
            while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                                (pids,)).fetchone() != (0,):
                time.sleep(0.01)
        with pytest.raises(ConnectionLostError) as caught:
            broker.enqueue("q", b"lost")
        assert caught.value.retryable
        assert isinstance(caught.value.__cause__, sa.exc.OperationalError)
        broker.enqueue("q", b"second")
        assert backend.get("t1") == StoredRecord("t1", "SUCCESS", b"{}")
        got = broker.reserve(["q"], lease=30, limit=10)
        assert [r.body for r in got] == [b"first", b"second"]
    finally:
        with broker._db.engine.begin() as conn:
            broker._db.tables.metadata.drop_all(conn)
        backend.close()
        broker.close()


def test_unknown_postgres_database_is_an_authentication_error(postgres_url: str) -> None:
    url = sa.make_url(postgres_url).set(database="no_such_db_here")
    backend = SQLResultBackend(URL(url.render_as_string(hide_password=False)))
    try:
        with pytest.raises(AuthenticationError, match="no_such_db_here") as caught:
            backend.get("x")
        assert "\n" not in str(caught.value)
    finally:
        backend.close()


def test_mysql_bad_password_is_an_authentication_error(mysql_url: str) -> None:
    url = sa.make_url(mysql_url).set(username="conveyor_nobody", password="wrong")
    broker = SQLBroker(URL(url.render_as_string(hide_password=False)))
    try:
        with pytest.raises(AuthenticationError) as caught:
            broker.ping()
        assert "wrong" not in str(caught.value)  # the password never shows
        assert "\n" not in str(caught.value)
    finally:
        broker.close()


def test_other_database_errors_are_driver_errors(sqlite_url: str) -> None:
    broker = SQLBroker(URL(sqlite_url))
    try:
        broker.ping()
        with broker._db.engine.begin() as conn:
            broker._db.tables.metadata.drop_all(conn)
        with pytest.raises(DriverError) as caught:
            broker.enqueue("q", b"x")
        assert not isinstance(caught.value, ConnectionLostError)
    finally:
        broker.close()
