"""The ResultBackend interface: where task states, results and attempt histories are kept.

A driver stores opaque bytes (``StoredRecord.data``, encoded by the core) under a task id,
with the state beside them in the clear so that the driver can enforce the one rule that must
be atomic on the server: **the first terminal write wins** (SUCCESS, FAILURE, REVOKED are
written once; later writes of any state to a terminal record are ignored).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from conveyor.exceptions import DriverError
from conveyor.states import READY_STATES
from conveyor.url import URL


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """What a backend driver keeps per task: its id, its state and the core's encoded data.

    ``name``, ``queue`` and ``worker`` (the task's name, the queue it came from, the worker
    that wrote the record) are copies of fields inside ``data``, given in the clear so that a
    driver declaring ``capabilities.query`` can index them; other drivers ignore them, and
    records read back may leave them ``None``.
    """

    task_id: str
    state: str
    data: bytes
    name: str | None = None
    queue: str | None = None
    worker: str | None = None

    @property
    def ready(self) -> bool:
        """True when the state is terminal."""
        return self.state in READY_STATES


@dataclass(frozen=True)
class BackendCapabilities:
    """What a backend driver can do. ``native_expiry``: the server drops expired records by
    itself (Redis TTL, Mongo TTL index); otherwise ``purge_expired`` must be called."""

    native_expiry: bool = False
    push_wait: bool = False
    shared_between_processes: bool = True
    #: The coordination primitives (:meth:`ResultBackend.join` and the entry area) are
    #: implemented: chords, cluster-wide rate limits and the worker registry need them.
    coordination: bool = False
    #: :meth:`ResultBackend.query` is implemented (the dashboard's task list needs it).
    query: bool = False


@dataclass(frozen=True)
class RecordQuery:
    """Which records :meth:`ResultBackend.query` returns: every filter given must match.

    ``since``/``until`` bound the time of a record's last write (``since <= t < until``,
    epoch seconds, the server's clock where there is one). ``id_prefix`` matches the start
    of the task id exactly (case-sensitive). ``cursor`` is the ``cursor`` of the previous
    :class:`RecordPage`, opaque to callers.
    """

    state: str | None = None
    name: str | None = None
    queue: str | None = None
    worker: str | None = None
    id_prefix: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 50
    cursor: str | None = None

    def matches(self, record: StoredRecord) -> bool:
        """True when ``record`` passes every filter but the time bounds (for drivers that
        filter in the client)."""
        return ((self.state is None or record.state == self.state)
                and (self.name is None or record.name == self.name)
                and (self.queue is None or record.queue == self.queue)
                and (self.worker is None or record.worker == self.worker)
                and (self.id_prefix is None or record.task_id.startswith(self.id_prefix)))


@dataclass(frozen=True)
class RecordPage:
    """One page of a query, newest write first (ties: greater task id first). ``cursor`` is
    None when nothing is left; a page may hold fewer than ``limit`` records while a cursor
    remains (a driver bounds the work one call does)."""

    records: list[StoredRecord]
    cursor: str | None


def encode_cursor(written_at: float, task_id: str) -> str:
    """The cursor after the record written at ``written_at`` with id ``task_id``."""
    return f"{written_at!r}:{task_id}"


def decode_cursor(cursor: str) -> tuple[float, str]:
    """``(written_at, task_id)`` of a cursor made by :func:`encode_cursor`; a
    :class:`~conveyor.exceptions.DriverError` for anything else."""
    head, sep, task_id = cursor.partition(":")
    try:
        if not sep:
            raise ValueError(cursor)
        return float(head), task_id
    except ValueError:
        raise DriverError(f"invalid query cursor {cursor[:80]!r}: pass back the cursor of "
                          "the previous page unchanged") from None


def after_cursor(written_at: float, task_id: str, cursor: tuple[float, str] | None) -> bool:
    """True when a record sorts after ``cursor`` in query order (newest first, then the
    greater id)."""
    if cursor is None:
        return True
    return written_at < cursor[0] or (written_at == cursor[0] and task_id < cursor[1])


class ResultBackend(ABC):
    """Keeps task records. Thread-safe; translates client errors into conveyor's."""

    capabilities: ClassVar[BackendCapabilities] = BackendCapabilities()

    def __init__(self, url: URL, **options: Any) -> None:
        self.url = url

    @abstractmethod
    def store(self, record: StoredRecord, *, ttl: float | None) -> bool:
        """Write ``record``, to expire ``ttl`` seconds from now (``None``: never).

        Atomic. Returns False, writing nothing, when a terminal record already exists for the
        id: the first terminal write wins and nothing overwrites it. A PENDING record is
        written only where no live record exists (it is sent behind the message, and must
        not hide a worker's STARTED that got there first).
        """

    def store_many(self, records: Iterable[StoredRecord], *, ttl: float | None) -> list[bool]:
        """Store several records (same rules as :meth:`store`); override to batch."""
        return [self.store(record, ttl=ttl) for record in records]

    @abstractmethod
    def get(self, task_id: str) -> StoredRecord | None:
        """The record of ``task_id``; None when there is none or it has expired."""

    def get_many(self, task_ids: Iterable[str]) -> dict[str, StoredRecord]:
        """Records of several ids (missing and expired ones left out). Override to batch."""
        found = {}
        for task_id in task_ids:
            record = self.get(task_id)
            if record is not None:
                found[task_id] = record
        return found

    def finished_many(self, task_ids: Iterable[str]) -> dict[str, StoredRecord]:
        """The terminal records among ``task_ids`` (SUCCESS, FAILURE, REVOKED), by id, each
        whole as :meth:`get` returns it; ids without a live record or in a progress state
        (PENDING, STARTED, RETRY) are left out. The worker's pick-up check of every delivery
        (the duplicate rule), so drivers override it to read as little as they can: the
        state of each id, and the data only of the terminal ones.

        Each record is read atomically (its state and data from one write), but the call is
        not a snapshot across ids: a record that turns terminal meanwhile may or may not be
        included. A terminal record never changes while it lives, so one returned is still
        the record. An empty ``task_ids`` returns ``{}`` (drivers send nothing); repeated
        ids are looked up once. Errors are :meth:`get_many`'s: a
        :class:`~conveyor.exceptions.ConnectionLostError` when the server cannot be read, a
        :class:`~conveyor.exceptions.ValueRefusedError` for an id the server refuses to look
        up. The default filters :meth:`get_many`, so a driver needs nothing more.
        """
        return {task_id: record for task_id, record in self.get_many(task_ids).items()
                if record.ready}

    @abstractmethod
    def forget(self, task_id: str) -> None:
        """Delete the record of ``task_id``. Idempotent."""

    def wait(self, task_id: str, *, timeout: float | None) -> StoredRecord | None:
        """Block until ``task_id`` has a terminal record and return it; None on timeout.

        The default polls with backoff (2 ms doubling to 200 ms); drivers with push
        notifications override it.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.002
        while True:
            record = self.get(task_id)
            if record is not None and record.ready:
                return record
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                pause = min(pause, left)
            time.sleep(pause)
            pause = min(pause * 2, 0.2)

    # -- coordination primitives (declared by ``capabilities.coordination``) ------------------
    # Small, atomic building blocks for chord joins, rate limits and the worker registry. Their
    # keys live in a namespace of their own: a key never collides with a task id.
    def join(self, key: str, member: str, *, ttl: float | None) -> int:
        """Add ``member`` to the set ``key`` and return how many distinct members it holds.

        Atomic and idempotent: adding a member already there changes nothing, so a redelivered
        chord header task is never counted twice, and of racing callers exactly one sees any
        given count. Each call sets the set's expiry to ``ttl`` seconds from now (``None``:
        never); an expired set counts as empty. Raises :class:`NotImplementedError` where
        ``capabilities.coordination`` is False.
        """
        raise NotImplementedError(f"{type(self).__name__} has no coordination primitives")

    def put_entry(self, key: str, value: bytes, *, ttl: float | None) -> None:
        """Set the entry ``key`` to ``value`` (replacing it), expiring ``ttl`` seconds from
        now (``None``: never). Atomic per entry. For small, frequently rewritten values such
        as worker registrations."""
        raise NotImplementedError(f"{type(self).__name__} has no coordination primitives")

    def entries(self, prefix: str) -> dict[str, bytes]:
        """Every live entry whose key starts with ``prefix`` (expired ones left out), by key.
        Meant for small areas (tens to thousands of entries); no order is promised."""
        raise NotImplementedError(f"{type(self).__name__} has no coordination primitives")

    def delete_entry(self, key: str) -> None:
        """Delete the entry ``key``. Idempotent."""
        raise NotImplementedError(f"{type(self).__name__} has no coordination primitives")

    def query(self, query: RecordQuery) -> RecordPage:
        """Live records matching ``query``, newest write first (ties: greater id first), at
        most ``query.limit`` of them, and a cursor for the rest. Following the cursors visits
        every match once (records rewritten meanwhile may move). Raises
        :class:`NotImplementedError` where ``capabilities.query`` is False."""
        raise NotImplementedError(f"{type(self).__name__} cannot query records")

    @abstractmethod
    def purge_expired(self) -> int:
        """Delete expired records now; return how many (0 where the server expires them)."""

    def ping(self) -> None:
        """Raise a :class:`~conveyor.exceptions.DriverError` when the server is unreachable."""
        self.get("__ping__")

    def info(self) -> dict[str, str]:
        """Driver-specific facts for ``conveyor check`` (e.g. a schema version). May query."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Idempotent."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url.masked!r})"
