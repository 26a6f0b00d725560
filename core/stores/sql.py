"""What the SQL broker and result backend share: engines, tables, schema, clock and errors.

Tables (``<p>`` is the ``table_prefix``, ``conveyor_`` by default)::

    <p>messages  id, queue, body, available_at, lease_token, attempts, enqueued_at,
                 precedence (9 - priority: 0 is served first, so one ascending index orders
                 the claim on every dialect)
                 index (queue, precedence, available_at, id): the claim reads it in order
    <p>dead      id, queue, body, reason, dead_at
    <p>results   task_id, state, data, expires_at, updated_at, name, queue, worker (the
                 task's name, queue and worker in the clear, for ``query``); indexes on
                 updated_at and on (state | name | queue, updated_at)
    <p>joins     key, member, expires_at: the sets of ``ResultBackend.join``; a head row
                 (member '') per key holds the set's lock and expiry, members are stored
                 as 'm' + member
    <p>entries   key, value, expires_at: the entry area of the coordination primitives
    <p>schema    component, version: written when a component's tables are created

Times are float epoch seconds read from the **database server's clock** (``now()``), so
workers on hosts whose clocks drift apart still agree on when a lease runs out. SQLite has no
server: there it is the local clock, which every process on the file shares anyway.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import make_url

from conveyor.exceptions import (
    AuthenticationError,
    ConfigurationError,
    ConnectionLostError,
    DriverError,
    ValueRefusedError,
)
from conveyor.registry import require
from conveyor.url import URL

_PREFIX = re.compile(r"^[a-z_][a-z0-9_]{0,30}$")
#: v2: ``messages.precedence`` (priorities) and the claim index that orders by it.
#: v3: ``results.name/queue/worker`` and the query indexes.
SCHEMA_VERSION = 3
_TABLES_OF = {"broker": ("messages", "dead"), "backend": ("results", "joins", "entries")}
_CLIENT_FOR = {"postgresql": ("psycopg", "postgres"), "mysql": ("pymysql", "mysql"),
               "mariadb": ("pymysql", "mysql")}
# Connection refusals that mean "fix your settings", not "try again later".
_MYSQL_AUTH_CODES = {1044, 1045, 1049, 1698}
_PG_AUTH_STATES = {"28000", "28P01", "3D000"}
_PG_AUTH_WORDS = ("password authentication failed", "no password supplied",
                  "does not exist", "authentication failed")


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a safe SQL identifier prefix, else raise ConfigurationError."""
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise ConfigurationError(
            f"invalid table_prefix {prefix!r}: use 1-31 lower-case letters, digits or '_', "
            "starting with a letter or '_' (for example 'conveyor_')")
    return prefix


class ExactKey(sa.types.TypeDecorator[str]):
    """A string compared byte for byte on every dialect. MySQL/MariaDB's ``utf8mb4_bin``
    still pads: ``'a'`` and ``'a '`` would be one key there, so keys are VARBINARY."""

    impl = sa.String
    cache_ok = True

    def __init__(self, length: int) -> None:
        super().__init__(length)
        self.length = length

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name in ("mysql", "mariadb"):
            # Four bytes per character: the longest UTF-8 encoding.
            return dialect.type_descriptor(mysql.VARBINARY(self.length * 4))
        return dialect.type_descriptor(sa.String(self.length))

    def process_bind_param(self, value: str | None, dialect: Any) -> Any:
        if value is not None and dialect.name in ("mysql", "mariadb"):
            return value.encode()
        return value

    def process_result_value(self, value: Any, dialect: Any) -> str | None:
        return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class Tables:
    """The Core ``Table`` objects of one prefix."""

    metadata: Any
    messages: Any
    dead: Any
    results: Any
    schema: Any
    joins: Any
    entries: Any


def build_tables(prefix: str) -> Tables:
    """Define conveyor's tables under ``prefix`` on a fresh ``MetaData``."""
    def key(length: int) -> Any:
        # MySQL compares strings case-insensitively by default; queue names and ids must not.
        return sa.String(length).with_variant(
            mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb")

    blob = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
    md = sa.MetaData()
    messages = sa.Table(
        f"{prefix}messages", md,
        sa.Column("id", key(40), primary_key=True),
        sa.Column("queue", key(255), nullable=False),
        sa.Column("body", blob, nullable=False),
        sa.Column("available_at", sa.Double(), nullable=False),
        sa.Column("lease_token", sa.String(32), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("enqueued_at", sa.Double(), nullable=False),
        sa.Column("precedence", sa.SmallInteger(), nullable=False, server_default="9"),
        sa.Index(f"{prefix}messages_ranked", "queue", "precedence", "available_at", "id"),
    )
    dead = sa.Table(
        f"{prefix}dead", md,
        sa.Column("id", key(40), primary_key=True),
        sa.Column("queue", key(255), nullable=False),
        sa.Column("body", blob, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("dead_at", sa.Double(), nullable=False),
        sa.Index(f"{prefix}dead_queue", "queue", "dead_at"),
    )
    results = sa.Table(
        f"{prefix}results", md,
        # Byte-exact: MariaDB's utf8mb4_bin pads, so 'id' and 'id ' were one record there.
        sa.Column("task_id", ExactKey(255), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("data", blob, nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=True),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.Column("name", key(255), nullable=True),
        sa.Column("queue", key(255), nullable=True),
        sa.Column("worker", key(255), nullable=True),
        sa.Index(f"{prefix}results_expiry", "expires_at"),
        # The query walks one of these newest first (see SQLResultBackend.query).
        sa.Index(f"{prefix}results_recent", "updated_at", "task_id"),
        sa.Index(f"{prefix}results_by_state", "state", "updated_at"),
        sa.Index(f"{prefix}results_by_name", "name", "updated_at"),
        sa.Index(f"{prefix}results_by_queue", "queue", "updated_at"),
    )
    schema = sa.Table(
        f"{prefix}schema", md,
        sa.Column("component", sa.String(32), primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False),
    )
    joins = sa.Table(
        f"{prefix}joins", md,
        sa.Column("key", ExactKey(256), primary_key=True),
        sa.Column("member", ExactKey(256), primary_key=True),
        sa.Column("expires_at", sa.Double(), nullable=True),
    )
    entries = sa.Table(
        f"{prefix}entries", md,
        sa.Column("key", ExactKey(512), primary_key=True),
        sa.Column("value", blob, nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=True),
    )
    return Tables(md, messages, dead, results, schema, joins, entries)


# -- errors ---------------------------------------------------------------------------------

def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_auth_failure(orig: BaseException | None) -> bool:
    if orig is None:
        return False
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):  # PyMySQL: (errno, message)
        return args[0] in _MYSQL_AUTH_CODES
    if getattr(orig, "sqlstate", None) in _PG_AUTH_STATES:
        return True
    text = str(orig).lower()
    return "fatal" in text and any(word in text for word in _PG_AUTH_WORDS)


#: MySQL/MariaDB ``max_allowed_packet`` per URL, read when a connection opens: a statement
#: over it makes the server drop the connection, which looks like an outage but is not.
_MAX_PACKET: dict[str, int] = {}
#: MySQL errors that refuse the statement itself (packet too large, row size too large).
_MYSQL_REFUSED_CODES = {1153, 1118, 1301, 1406, 1366, 1265}


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def _largest_value(params: Any) -> int:
    """The size in bytes of the largest bound value in a statement's parameters."""
    if isinstance(params, dict):
        params = params.values()
    elif not isinstance(params, list | tuple):
        return 0
    largest = 0
    for value in params:
        if isinstance(value, bytes | bytearray | memoryview | str):
            largest = max(largest, len(value))
        elif isinstance(value, dict | list | tuple):
            largest = max(largest, _largest_value(value))
    return largest


def max_packet(url: URL) -> int | None:
    """The server's ``max_allowed_packet`` for a MySQL/MariaDB URL once a connection has
    opened; None elsewhere (or before)."""
    return _MAX_PACKET.get(url.raw)


def refuse_oversized(url: URL, size: int, what: str) -> None:
    """Raise :class:`ValueRefusedError` when ``size`` bytes cannot fit one MySQL packet, before
    sending it (the server would drop the connection instead of answering)."""
    limit = _MAX_PACKET.get(url.raw)
    if limit is not None and size + 1024 > limit:
        raise ValueRefusedError(
            f"{url.masked}: {what} too large for the server: {_mib(size)} over its "
            f"max_allowed_packet of {_mib(limit)} (raise max_allowed_packet, or keep large "
            "values elsewhere and pass a reference)")


def translate(exc: BaseException, url: URL) -> BaseException:
    """The conveyor error for a SQLAlchemy/DBAPI exception (the caller raises it ``from``).

    "The server is down" becomes the retryable :class:`ConnectionLostError`; "the server
    refuses this value" (too long for its column, a NUL in PostgreSQL text, a statement over
    MySQL's ``max_allowed_packet``) becomes :class:`ValueRefusedError`, never retried.
    """
    where = url.masked
    if isinstance(exc, sa_exc.DBAPIError):
        orig = exc.orig
        detail = _first_line(orig) if orig is not None else _first_line(exc)
        if _is_auth_failure(orig):
            return AuthenticationError(f"{where} refused the connection: {detail}")
        code = getattr(orig, "args", (None,))[0] if getattr(orig, "args", None) else None
        if isinstance(exc, sa_exc.DataError) or (
                isinstance(code, int) and code in _MYSQL_REFUSED_CODES):
            return ValueRefusedError(f"{where} refused the value: {detail}")
        limit = _MAX_PACKET.get(url.raw)
        largest = _largest_value(exc.params)
        if limit is not None and largest + len(exc.statement or "") >= limit:
            return ValueRefusedError(
                f"{where}: value too large for the server: {_mib(largest)} over its "
                f"max_allowed_packet of {_mib(limit)} ({detail})")
        if exc.connection_invalidated or isinstance(
                exc, sa_exc.OperationalError | sa_exc.InterfaceError):
            if isinstance(exc, sa_exc.OperationalError) and "no such table" in detail:
                return DriverError(f"{where}: {detail}")
            return ConnectionLostError(f"{where} is unavailable: {detail}")
        return DriverError(f"{where}: {detail}")
    if isinstance(exc, sa_exc.TimeoutError):
        return ConnectionLostError(f"{where}: no free connection in the pool: {exc}")
    return DriverError(f"{where}: {_first_line(exc)}")


@contextlib.contextmanager
def errors(url: URL) -> Iterator[None]:
    """Translate SQLAlchemy errors raised inside the block into conveyor's, ``from`` the cause."""
    try:
        yield
    except sa_exc.SQLAlchemyError as exc:
        raise translate(exc, url) from exc


# -- raw PostgreSQL connections -----------------------------------------------------------

@dataclass
class RawConnection:
    """One of :class:`RawConnections`: the psycopg connection, the SQLAlchemy fairy it was
    detached from, and when it was opened (``time.monotonic``)."""

    conn: Any
    fairy: Any
    opened: float


class RawConnections:
    """The autocommit psycopg connections of one engine, for :meth:`SQLStore.raw` (the
    broker's and the backend's on one URL share them). Each comes from the engine (so with
    its connect settings), detached from SQLAlchemy's pool: a checkout from that pool, with
    its reset and the autocommit switch both ways, cost 18 us of CPU per statement; a take
    and give here, 5 us. At most 3 x ``pool_size`` in use at once (the engine's pool_size plus
    its overflow); ``pool_size`` kept idle. Thread-safe; fork-safe (a child opens its own).
    """

    def __init__(self, engine: Any, url: URL, pool_size: int) -> None:
        self._engine = engine
        self._url = url
        self._size = pool_size
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._idle: list[RawConnection] = []
        self._slots = threading.BoundedSemaphore(3 * self._size)
        self._stale_before = 0.0
        self._closed = False

    def take(self, error: Callable[..., BaseException]) -> RawConnection:
        """An idle connection, else a new one. Blocks up to 30 s while all are in use, then
        raises :class:`ConnectionLostError`; a failed connect raises ``error(exc,
        broken=True)``."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    # Not the parent's sockets, not even to close them; only the forking
                    # thread exists in the child, so every slot is free again.
                    self._reset()
        if not self._slots.acquire(timeout=30.0):
            raise ConnectionLostError(f"{self._url.masked}: no free connection for 30 s")
        try:
            with self._lock:
                while self._idle:
                    taken = self._idle.pop()
                    if taken.opened >= self._stale_before:
                        return taken
                    _close_quietly(taken.conn)
            return self._open(error)
        except BaseException:
            self._slots.release()
            raise

    def _open(self, error: Callable[..., BaseException]) -> RawConnection:
        dbapi = self._engine.dialect.loaded_dbapi
        opened = time.monotonic()
        try:
            with errors(self._url):
                fairy = self._engine.raw_connection()
        except dbapi.Error as exc:
            # The pool hands over psycopg's own error when it cannot connect (the server is
            # down or restarting): SQLAlchemy wraps it only on Engine.connect().
            raised = error(exc, broken=True)
            raise raised from raised.__cause__
        conn = fairy.driver_connection
        fairy.detach()
        conn.autocommit = True
        return RawConnection(conn, fairy, opened)

    def give(self, taken: RawConnection) -> None:
        """Return what :meth:`take` gave: kept if healthy, idle in no transaction, opened
        after the last :meth:`invalidate` and there is room; closed otherwise."""
        from psycopg import pq

        if self._pid != os.getpid():
            return  # taken before a fork: the parent's (see take)
        conn = taken.conn
        try:
            healthy = not (conn.closed or conn.broken) and (
                conn.info.transaction_status == pq.TransactionStatus.IDLE)
            with self._lock:
                if (healthy and not self._closed and taken.opened >= self._stale_before
                        and len(self._idle) < self._size):
                    self._idle.append(taken)
                    return
            _close_quietly(conn)
        finally:
            self._slots.release()

    def invalidate(self) -> None:
        """Every connection opened before now is stale (the server dropped them): the idle
        ones are closed at once, those in use when they are given back."""
        with self._lock:
            self._stale_before = time.monotonic()
            idle, self._idle = self._idle, []
        for taken in idle:
            _close_quietly(taken.conn)

    def close(self) -> None:
        """Close the idle connections; those in use are closed when given back."""
        with self._lock:
            self._closed = True
            idle, self._idle = (self._idle, []) if self._pid == os.getpid() else ([], [])
        for taken in idle:
            _close_quietly(taken.conn)


def _close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.close()


# -- engines --------------------------------------------------------------------------------

_ENGINES: dict[tuple[int, str], list[Any]] = {}  # (pid, url) -> [engine, users]
_ENGINES_LOCK = threading.Lock()


def _forget_engines_in_child() -> None:
    # A forked child must not share the parent's sockets; it opens its own connections.
    for engine, _users in _ENGINES.values():
        engine.dispose(close=False)
    _ENGINES.clear()


os.register_at_fork(after_in_child=_forget_engines_in_child)


def _sqlite_url(url: URL, sa_url: Any) -> None:
    database = sa_url.database or ""
    if database in ("", ":memory:") or "mode=memory" in database:
        raise ConfigurationError(
            f"{url.masked}: an in-memory SQLite database is private to one connection and one "
            "process; use a file such as 'sqlite:///conveyor.db', or 'memory://' for tests")
    if database.startswith("file:"):
        return
    directory = os.path.dirname(os.path.abspath(database))
    if not os.path.isdir(directory):
        raise ConfigurationError(
            f"{url.masked}: the directory {directory!r} of the SQLite database does not exist; "
            "create it first")


def _on_sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own handling defers it).
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA busy_timeout = 30000")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.close()


def _on_sqlite_begin(conn: Any) -> None:
    # Writers take the write lock up front: a deferred transaction that later upgrades fails
    # with SQLITE_BUSY at once instead of waiting, and would break with several processes.
    mode = "BEGIN" if conn.get_execution_options().get("conveyor_read") else "BEGIN IMMEDIATE"
    conn.exec_driver_sql(mode)


def _on_mysql_connect(dbapi_conn: Any, _record: Any) -> None:
    # UNIX_TIMESTAMP(NOW(6)) is exact only in UTC: a local zone repeats an hour in autumn.
    cursor = dbapi_conn.cursor()
    cursor.execute("SET time_zone = '+00:00'")
    cursor.close()


def _on_postgres_connect(dbapi_conn: Any, _record: Any) -> None:
    # Every statement conveyor sends on PostgreSQL is meant to be driven by an index, and the
    # hot ones are prepared. A prepared statement's generic plan is made once, while a queue's
    # tables may still be nearly empty, where a Seq Scan is the cheapest plan; it stays cached
    # when the tables grow to thousands of rows (no ANALYZE has run yet), and every claim, ack
    # and record read then scans the whole table: a drain of 10,000 tasks ran 2.7x slower and
    # round trips took 10-20 ms. Without Seq Scans the plan is the index's at any size.
    dbapi_conn.execute("SET enable_seqscan = off")
    dbapi_conn.commit()


def _read_max_packet(url: URL, dbapi_conn: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("SELECT @@max_allowed_packet")
    row = cursor.fetchone()
    cursor.close()
    if row and row[0]:
        _MAX_PACKET[url.raw] = int(row[0])


def _create_engine(url: URL, pool_size: int) -> Any:
    try:
        sa_url = make_url(url.raw)
    except Exception as exc:
        raise ConfigurationError(f"invalid SQL URL {url.masked!r}: {exc}") from exc
    backend, _, driver = sa_url.drivername.partition("+")
    backend = {"postgres": "postgresql"}.get(backend, backend)
    if backend == "postgresql" and driver in ("", "psycopg"):
        sa_url = sa_url.set(drivername="postgresql+psycopg")
    elif backend in ("mysql", "mariadb") and driver in ("", "pymysql"):
        sa_url = sa_url.set(drivername=f"{backend}+pymysql")
    if backend in _CLIENT_FOR:
        module, extra = _CLIENT_FOR[backend]
        if sa_url.drivername.endswith(f"+{module}"):
            require(module, extra=extra)
    # No pool_pre_ping: it costs a round trip per checkout (a fifth of a worker's time on
    # PostgreSQL). A connection found dead raises ConnectionLostError, SQLAlchemy drops the
    # pool's stale connections, and the core's retries (worker writes, publish) try again.
    kwargs: dict[str, Any] = {}
    if backend == "sqlite":
        _sqlite_url(url, sa_url)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30.0}
        kwargs["poolclass"] = sa.pool.QueuePool
    elif backend in ("mysql", "mariadb"):
        # No gap locks: a claim's range lock would otherwise block producers' inserts.
        kwargs["isolation_level"] = "READ COMMITTED"
        kwargs["pool_recycle"] = 3600
    kwargs.update(pool_size=pool_size, max_overflow=2 * pool_size, pool_timeout=30)
    try:
        engine = sa.create_engine(sa_url, **kwargs)
    except ImportError as exc:
        raise ConfigurationError(f"{url.masked}: {exc}") from exc
    except sa.exc.ArgumentError as exc:
        raise ConfigurationError(f"invalid SQL URL {url.masked!r}: {exc}") from exc
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _on_sqlite_connect)
        sa.event.listen(engine, "begin", _on_sqlite_begin)
    elif engine.dialect.name == "postgresql":
        sa.event.listen(engine, "connect", _on_postgres_connect)
    elif engine.dialect.name in ("mysql", "mariadb"):
        sa.event.listen(engine, "connect", _on_mysql_connect)
        sa.event.listen(engine, "connect", lambda dbapi_conn, _record: _read_max_packet(
            url, dbapi_conn))
    return engine


def acquire_engine(url: URL, *, pool_size: int = 10) -> Any:
    """The process's engine for ``url`` (shared by brokers and backends on the same URL)."""
    key = (os.getpid(), url.raw)
    with _ENGINES_LOCK:
        entry = _ENGINES.get(key)
        if entry is None:
            engine = _create_engine(url, pool_size)
            entry = _ENGINES[key] = [engine, 0, RawConnections(engine, url, pool_size)]
        entry[1] += 1
        return entry[0]


def raw_connections(url: URL) -> RawConnections:
    """The :class:`RawConnections` of the engine :func:`acquire_engine` gave for ``url``."""
    with _ENGINES_LOCK:
        return _ENGINES[(os.getpid(), url.raw)][2]  # type: ignore[no-any-return]


def release_engine(url: URL, engine: Any) -> None:
    """Drop one user of the engine; the last one closes its connections."""
    key = (os.getpid(), url.raw)
    with _ENGINES_LOCK:
        entry = _ENGINES.get(key)
        if entry is None or entry[0] is not engine:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _ENGINES[key]
            entry[2].close()
            engine.dispose()


# -- PostgreSQL notifications ---------------------------------------------------------------

class Listener:
    """A background LISTEN on one PostgreSQL channel, over its own autocommit connection.

    Waiters read :attr:`generation` before checking for work and then :meth:`wait` for it to
    change, so a notification arriving between the check and the wait is never missed. The
    latest payloads are kept (:meth:`payloads_since`), so a waiter may learn what changed
    without asking the database again.
    """

    #: Payloads kept for :meth:`payloads_since`.
    KEEP = 64

    def __init__(self, engine: Any, channel: str) -> None:
        self.channel = channel
        self.generation = 0
        self._recent: collections.deque[tuple[int, str]] = collections.deque(maxlen=self.KEEP)
        self._running = True
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        raw = engine.raw_connection()
        self._conn = raw.driver_connection  # read before detach(), which clears it
        raw.detach()  # ours alone, never returned to the pool
        self._conn.autocommit = True
        self._conn.execute(f'LISTEN "{channel}"')
        self._thread = threading.Thread(target=self._run, name=f"conveyor-listen-{channel}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for notify in self._conn.notifies(timeout=0.5):
                    self._bump(notify.payload)
        except Exception:  # the connection broke: waiters fall back to polling
            pass
        finally:
            self._running = False
            self._bump()
            with contextlib.suppress(Exception):
                self._conn.close()

    @property
    def alive(self) -> bool:
        """False once the connection broke, or in a forked child (the thread stayed behind)."""
        return self._running and self._pid == os.getpid()

    def _bump(self, payload: str | None = None) -> None:
        with self._cond:
            self.generation += 1
            if payload is not None:
                self._recent.append((self.generation, payload))
            self._cond.notify_all()

    def payloads_since(self, seen: int) -> list[str] | None:
        """The payloads of the notifications after generation ``seen``, oldest first; None
        when some of them are no longer kept (or the connection broke meanwhile)."""
        with self._cond:
            found = [payload for generation, payload in self._recent if generation > seen]
            return found if len(found) == self.generation - seen else None

    def wait(self, seen: int, timeout: float) -> None:
        """Block until a notification newer than generation ``seen`` or ``timeout`` seconds."""
        with self._cond:
            self._cond.wait_for(lambda: self.generation != seen, timeout)

    def close(self) -> None:
        """Stop listening (returns within about half a second)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)


# -- the store ------------------------------------------------------------------------------

class SQLStore:
    """One driver's view of a database: engine, tables, clock, transactions, notifications.

    The component's tables are created on first use, and the schema version recorded.
    """

    def __init__(self, url: URL, component: str, *, table_prefix: str = "conveyor_",
                 pool_size: int = 10) -> None:
        self.url = url
        self.component = component
        self.prefix = validate_prefix(table_prefix)
        if not isinstance(pool_size, int) or pool_size < 1:
            raise ConfigurationError(f"pool_size must be a positive integer, not {pool_size!r}")
        self.tables = build_tables(self.prefix)
        self.engine = acquire_engine(url, pool_size=pool_size)
        name = self.engine.dialect.name
        self.dialect = "mysql" if name in ("mysql", "mariadb") else name
        if self.dialect not in ("sqlite", "postgresql", "mysql"):
            release_engine(url, self.engine)
            raise ConfigurationError(
                f"{url.masked}: unsupported SQL database {name!r}; conveyor supports SQLite, "
                "PostgreSQL and MySQL/MariaDB")
        self._lock = threading.Lock()
        self._ready = False
        self._listeners: dict[str, Listener] = {}
        self._closed = False
        self._raw = raw_connections(url) if self.dialect == "postgresql" else None

    # -- clock ------------------------------------------------------------------------------
    def now(self) -> Any:
        """The current time as a SQL expression (epoch seconds, float): see the module doc."""
        if self.dialect == "postgresql":
            # statement_timestamp() is stable within a statement, so the index can use it.
            return sa.cast(sa.func.extract("epoch", sa.func.statement_timestamp()), sa.Double())
        if self.dialect == "mysql":
            return sa.func.unix_timestamp(sa.func.now(6))
        return sa.literal(time.time(), sa.Double())

    # -- transactions -----------------------------------------------------------------------
    @contextlib.contextmanager
    def begin(self, *, read: bool = False, single: bool = False) -> Iterator[Any]:
        """A connection in a transaction that commits on success; errors are translated.

        ``read=True`` marks a read-only transaction (on SQLite it does not take the write lock).
        ``single=True`` promises that every statement is atomic on its own: on PostgreSQL
        they then run in autocommit, saving the BEGIN and COMMIT round trips.
        """
        if not self._ready:
            self.ensure_schema()
        with errors(self.url), self.engine.connect() as conn:
            if single and self.dialect == "postgresql":
                conn.execution_options(isolation_level="AUTOCOMMIT")
                yield conn
                return
            if read:
                conn.execution_options(conveyor_read=True)
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def raw(self) -> Iterator[Any]:
        """A PostgreSQL connection (psycopg 3) in autocommit, for the hot statements.

        SQLAlchemy Core costs more CPU than the round trip itself for a one-row statement
        (compiling, cache keys, result wrapping: ~0.5 ms of Python per statement), so the
        statements a producer and a worker send per task are written in SQL and sent here
        directly, prepared on each connection (``prepare=True``): one round trip each, in
        autocommit because each is atomic on its own. The schema, URLs and the rarer
        statements stay with SQLAlchemy; the connections are the engine's, kept apart from
        its pool (:class:`RawConnections`). Blocks up to 30 s while all are in use. Errors
        are translated as everywhere else; a broken connection is closed, with every other
        one opened before it.
        """
        if not self._ready:
            self.ensure_schema()
        assert self._raw is not None, "raw() is for PostgreSQL"
        pool = self._raw
        taken = pool.take(self._raw_error)
        conn = taken.conn
        dbapi = self.engine.dialect.loaded_dbapi
        try:
            yield conn
        except dbapi.Error as exc:
            broken = bool(conn.closed or conn.broken
                          or self.engine.dialect.is_disconnect(exc, conn, None))
            if broken:
                # As SQLAlchemy does on a disconnect: every connection opened before now is
                # stale too (a restarted server dropped them all), so each is replaced
                # instead of failing once more: the pool's at their next checkout, the raw
                # ones (the broker's and the backend's) at once.
                self.engine.pool._invalidate(taken.fairy, exc, _checkin=False)
                pool.invalidate()
            error = self._raw_error(exc, broken=broken)
            raise error from error.__cause__
        finally:
            pool.give(taken)

    def _raw_error(self, exc: BaseException, *, broken: bool) -> BaseException:
        """The conveyor error for a psycopg error of :meth:`raw`, translated as on the
        SQLAlchemy path; its ``__cause__`` is SQLAlchemy's wrapper of the psycopg error."""
        wrapped = sa_exc.DBAPIError.instance(
            None, None, exc, self.engine.dialect.loaded_dbapi.Error,
            connection_invalidated=broken, dialect=self.engine.dialect)
        error = translate(wrapped, self.url)
        error.__cause__ = wrapped
        return error

    def refuse_oversized(self, size: int, what: str) -> None:
        """On MySQL/MariaDB, raise :class:`ValueRefusedError` for a value of ``size`` bytes
        over the server's ``max_allowed_packet`` before sending it: the server would read it
        all, then drop the connection."""
        if self.dialect != "mysql" or size < (1 << 20):
            return
        if max_packet(self.url) is None:
            with errors(self.url), self.engine.connect():
                pass  # the connect event reads max_allowed_packet
        refuse_oversized(self.url, size, what)

    def check_queue_name(self, queue: str, *, consuming: bool = False) -> None:
        """Refuse a queue name this database cannot tell apart from another: MySQL/MariaDB
        compare ``'q '`` and ``'q'`` as equal (PAD SPACE). :class:`ValueRefusedError` when
        sending; :class:`ConfigurationError` when ``consuming`` (a worker's ``-Q``: waiting
        cannot fix it)."""
        if self.dialect == "mysql" and queue.endswith(" "):
            error = ConfigurationError if consuming else ValueRefusedError
            raise error(
                f"queue name {queue!r} ends with a space; MySQL/MariaDB would take it for "
                f"{queue.rstrip(' ')!r} (trailing spaces are ignored in comparisons): remove "
                "the trailing spaces")

    def ensure_schema(self) -> None:
        """Create this component's tables if missing and record the schema version."""
        with self._lock:
            if self._ready:
                return
            names = _TABLES_OF[self.component]
            tables = [getattr(self.tables, n) for n in names] + [self.tables.schema]
            with errors(self.url):
                try:
                    self.tables.metadata.create_all(self.engine, tables=tables)
                except sa_exc.DBAPIError as exc:
                    if exc.connection_invalidated or _is_auth_failure(exc.orig):
                        raise
                    # Another process created them at the same moment: check again.
                    self.tables.metadata.create_all(self.engine, tables=tables)
                self._record_version()
            self._ready = True

    def _record_version(self) -> None:
        table = self.tables.schema
        with self.engine.begin() as conn:
            found = conn.scalar(sa.select(table.c.version)
                                .where(table.c.component == self.component))
        if found is None:
            with contextlib.suppress(sa.exc.IntegrityError), self.engine.begin() as conn:
                conn.execute(table.insert().values(component=self.component,
                                                   version=SCHEMA_VERSION))
        elif found > SCHEMA_VERSION:
            raise ConfigurationError(
                f"{self.url.masked}: the {self.prefix}* tables have schema version {found}, "
                f"newer than this conveyor knows ({SCHEMA_VERSION}); upgrade conveyor")
        elif found < SCHEMA_VERSION:
            if self.component == "broker" and found < 2:
                self._add_precedence()
            if self.component == "backend" and found < 3:
                self._add_query_columns()
            with self.engine.begin() as conn:
                conn.execute(table.update().where(table.c.component == self.component)
                             .values(version=SCHEMA_VERSION))

    def _add_precedence(self) -> None:
        """Migrate v1 -> v2: the ``precedence`` column and its claim index (idempotent, safe
        when several processes migrate at once)."""
        t = self.tables.messages
        with self.engine.begin() as conn:
            columns = {c["name"] for c in sa.inspect(conn).get_columns(t.name)}
        if "precedence" not in columns:
            # The table name is a validated identifier (see _PREFIX).
            with contextlib.suppress(sa_exc.DBAPIError), self.engine.begin() as conn:
                conn.execute(sa.text(f"ALTER TABLE {t.name} ADD COLUMN precedence SMALLINT "
                                     "NOT NULL DEFAULT 9"))
        for index in t.indexes:
            with contextlib.suppress(sa_exc.DBAPIError):
                index.create(self.engine)
        old = sa.Index(f"{self.prefix}messages_claim", t.c.queue, t.c.available_at, t.c.id)
        with contextlib.suppress(sa_exc.DBAPIError):
            old.drop(self.engine)

    def _add_query_columns(self) -> None:
        """Migrate the results table to v3: the name/queue/worker columns and the query
        indexes (idempotent, safe when several processes migrate at once). Rows written
        before keep NULL there: they are found by state and time, not by name/queue/worker."""
        t = self.tables.results
        with self.engine.begin() as conn:
            columns = {c["name"] for c in sa.inspect(conn).get_columns(t.name)}
        for name in ("name", "queue", "worker"):
            if name not in columns:
                kind = t.c[name].type.compile(dialect=self.engine.dialect)
                # The table name is a validated identifier (see _PREFIX).
                with contextlib.suppress(sa_exc.DBAPIError), self.engine.begin() as conn:
                    conn.execute(sa.text(f"ALTER TABLE {t.name} ADD COLUMN {name} {kind}"))
        for index in t.indexes:
            with contextlib.suppress(sa_exc.DBAPIError):
                index.create(self.engine)

    def info(self) -> dict[str, str]:
        """Facts for ``conveyor check``: dialect, table prefix and the recorded schema version
        of this component (creating the tables first, as any use would)."""
        self.ensure_schema()
        table = self.tables.schema
        with errors(self.url), self.engine.connect() as conn:
            found = conn.scalar(sa.select(table.c.version)
                                .where(table.c.component == self.component))
        state = "current" if found == SCHEMA_VERSION else "older, needs migration"
        return {"dialect": self.dialect, "tables": f"{self.prefix}*",
                "schema": f"v{found} ({state})"}

    # -- notifications (PostgreSQL) ---------------------------------------------------------
    def channel(self, name: str) -> str:
        """The NOTIFY channel for ``name`` under this prefix."""
        return f"{self.prefix}{name}"

    def notify(self, conn: Any, name: str, payload: str) -> None:
        """NOTIFY listeners of ``name`` when the transaction commits (PostgreSQL only)."""
        if self.dialect == "postgresql":
            conn.execute(sa.select(sa.func.pg_notify(self.channel(name), payload)))

    def listener(self, name: str) -> Listener | None:
        """A live listener on ``name`` (PostgreSQL only); None where there is none to be had."""
        if self.dialect != "postgresql" or self._closed:
            return None
        with self._lock:
            current = self._listeners.get(name)
            if current is not None and current.alive:
                return current
            try:
                with errors(self.url):
                    current = Listener(self.engine, self.channel(name))
            except Exception:
                return None  # polling still works
            self._listeners[name] = current
            return current

    def close(self) -> None:
        """Stop listeners and release the engine. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for listener in self._listeners.values():
            listener.close()
        self._listeners.clear()
        release_engine(self.url, self.engine)


def check_options(kind: str, options: dict[str, Any], poll_interval: float) -> float:
    """Refuse unknown driver options and a non-positive ``poll_interval`` with a
    :class:`ConfigurationError` naming them; return ``poll_interval`` as a float."""
    if options:
        raise ConfigurationError(
            f"unknown option(s) for the SQL {kind}: {', '.join(sorted(options))}")
    if not poll_interval > 0:
        raise ConfigurationError(f"poll_interval must be > 0 seconds, not {poll_interval!r}")
    return float(poll_interval)


def backoff(start: float, cap: float) -> Callable[[], float]:
    """A pause generator doubling from ``start`` to ``cap`` seconds."""
    pause = [start / 2]

    def step() -> float:
        pause[0] = min(pause[0] * 2, cap)
        return pause[0]

    return step
