"""``memory://[name]``: an in-process result backend for tests. Same-named backends share.

The reference backend of docs/driver-authors.md: each method's docstring names the contract
rule it keeps (the tests of :mod:`conveyor.testing`) and how. One ``threading.Condition`` per
name makes every operation atomic, as one conditional statement or script does on a server,
and wakes :meth:`MemoryResultBackend.wait` the moment a record is stored.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any, ClassVar

from conveyor.backend import (
    BackendCapabilities,
    RecordPage,
    RecordQuery,
    ResultBackend,
    StoredRecord,
    after_cursor,
    decode_cursor,
    encode_cursor,
)
from conveyor.url import URL


class _Store:
    """Everything backends of one name share: records with their expiry (``time.time()``
    seconds, None for never), coordination sets and entries, write times for queries."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.records: dict[str, tuple[StoredRecord, float | None]] = {}
        #: Coordination state: sets for :meth:`join`, entries, each with its expiry.
        self.sets: dict[str, tuple[set[str], float | None]] = {}
        self.entries: dict[str, tuple[bytes, float | None]] = {}
        #: When each record was last written, for :meth:`MemoryResultBackend.query`.
        self.written: dict[str, float] = {}


_STORES: dict[str, _Store] = {}
_STORES_LOCK = threading.Lock()


class MemoryResultBackend(ResultBackend):
    """A thread-safe in-process backend; ``wait`` wakes as soon as a result is stored.

    Capabilities, and why: ``native_expiry`` (reads drop expired records themselves, so
    nothing needs purging for correctness), ``push_wait`` (the condition wakes waiters),
    ``shared_between_processes=False`` (a dict in this process), ``coordination`` and
    ``query`` (both implemented below under the same lock).
    """

    capabilities: ClassVar[BackendCapabilities] = BackendCapabilities(
        native_expiry=True, push_wait=True, shared_between_processes=False, coordination=True,
        query=True)

    def __init__(self, url: URL, **options: Any) -> None:
        """Join the store of the URL's name. Nothing is cached per instance, so a forget
        through one is seen by every other at once (``BackendCoherenceContract``)."""
        super().__init__(url)
        name = url.raw.split("://", 1)[1].split("?", 1)[0] or "default"
        with _STORES_LOCK:
            self._store = _STORES.setdefault(name, _Store())

    def _live(self, task_id: str) -> StoredRecord | None:
        """The record if it has not expired; an expired one is deleted on the way, so it can
        neither be read nor block a new write (``test_record_is_hidden_once_its_ttl_has_passed``,
        ``test_expired_terminal_record_does_not_block_a_new_one``). Caller holds the lock."""
        entry = self._store.records.get(task_id)
        if entry is None:
            return None
        if entry[1] is not None and entry[1] <= time.time():
            del self._store.records[task_id]
            self._store.written.pop(task_id, None)
            return None
        return entry[0]

    def store(self, record: StoredRecord, *, ttl: float | None) -> bool:
        """Check and write under one lock: refused (False, nothing written, expiry
        included) when a live terminal record exists or a PENDING record meets any live one
        (``test_first_terminal_write_wins``, ``test_pending_never_replaces_an_existing_record``,
        ``test_a_refused_write_leaves_the_expiry_alone``). A written record replaces the old
        one with the expiry of this write, ``ttl`` seconds from now, fractions kept
        (``test_rewriting_a_record_sets_its_expiry_afresh``). The dict is keyed by the exact
        id (``test_task_ids_that_could_collide_are_kept_apart``)."""
        with self._store.cond:
            current = self._live(record.task_id)
            if current is not None and (current.ready or record.state == "PENDING"):
                return False
            expires = None if ttl is None else time.time() + ttl
            self._store.records[record.task_id] = (record, expires)
            self._store.written[record.task_id] = time.time()
            self._store.cond.notify_all()
            return True

    def get(self, task_id: str) -> StoredRecord | None:
        """The live record or None (``test_unknown_id_has_no_record``). ``get_many`` is the
        interface's default, one ``get`` per id, so gaps anywhere are simply left out
        (``test_get_many_with_missing_ids_in_every_position``)."""
        with self._store.cond:
            return self._live(task_id)

    def finished_many(self, task_ids: Iterable[str]) -> dict[str, StoredRecord]:
        """The live terminal records among the ids, read under one lock (so this driver's
        answer is even a snapshot, which the contract does not ask for). Progress states,
        unknown and expired ids are left out, REVOKED kept, each record returned as stored
        (``test_finished_many_returns_terminal_records_whole``,
        ``test_finished_many_leaves_out_progress_states_and_unknown_ids``,
        ``test_finished_many_leaves_out_an_expired_terminal_record``); an empty input is
        ``{}`` (``test_finished_many_of_nothing_is_empty``)."""
        with self._store.cond:
            found = {}
            for task_id in task_ids:
                record = self._live(task_id)
                if record is not None and record.ready:
                    found[task_id] = record
            return found

    def forget(self, task_id: str) -> None:
        """Delete the record; a missing one is a no-op (``test_forget_is_idempotent``)."""
        with self._store.cond:
            self._store.records.pop(task_id, None)
            self._store.written.pop(task_id, None)

    def wait(self, task_id: str, *, timeout: float | None) -> StoredRecord | None:
        """Sleep on the condition until a terminal record is there (progress states do not
        end the wait: ``test_wait_ignores_progress_states``) or ``timeout`` passes (None)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._store.cond:
            while True:
                record = self._live(task_id)
                if record is not None and record.ready:
                    return record
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._store.cond.wait(left)

    def query(self, query: RecordQuery) -> RecordPage:
        """A scan of every record (this driver is for tests; nothing is indexed)."""
        cursor = None if query.cursor is None else decode_cursor(query.cursor)
        with self._store.cond:
            now = time.time()
            found = []
            for task_id, (record, expires) in self._store.records.items():
                at = self._store.written.get(task_id, 0.0)
                if ((expires is None or expires > now) and query.matches(record)
                        and (query.since is None or at >= query.since)
                        and (query.until is None or at < query.until)
                        and after_cursor(at, task_id, cursor)):
                    found.append((at, task_id, record))
        found.sort(key=lambda item: (item[0], item[1]), reverse=True)
        page = found[:query.limit]
        more = len(found) > query.limit
        return RecordPage([r for _, _, r in page],
                          encode_cursor(page[-1][0], page[-1][1]) if more else None)

    def join(self, key: str, member: str, *, ttl: float | None) -> int:
        """One lock makes add-and-count atomic; an expired set starts again empty."""
        with self._store.cond:
            now = time.time()
            members, expires = self._store.sets.get(key, (set(), None))
            if expires is not None and expires <= now:
                members = set()
            members.add(member)
            self._store.sets[key] = (members, None if ttl is None else now + ttl)
            return len(members)

    def put_entry(self, key: str, value: bytes, *, ttl: float | None) -> None:
        """Replace the entry and its expiry; entries live apart from records
        (``test_entry_never_collides_with_a_task_record``)."""
        with self._store.cond:
            self._store.entries[key] = (bytes(value), None if ttl is None else time.time() + ttl)

    def entries(self, prefix: str) -> dict[str, bytes]:
        """Live entries by ``str.startswith``: a literal prefix, never a pattern
        (``test_prefix_is_literal_not_a_pattern``)."""
        with self._store.cond:
            now = time.time()
            return {k: v for k, (v, exp) in self._store.entries.items()
                    if k.startswith(prefix) and (exp is None or exp > now)}

    def delete_entry(self, key: str) -> None:
        """Delete the entry; idempotent (``test_delete_entry_is_idempotent``)."""
        with self._store.cond:
            self._store.entries.pop(key, None)

    def purge_expired(self) -> int:
        """Delete expired records (and expired sets and entries) and return how many
        task records went (``test_purge_expired_counts_the_records_it_deleted``); expired
        sets and entries are not counted."""
        with self._store.cond:
            now = time.time()
            gone = [k for k, (_, exp) in self._store.records.items()
                    if exp is not None and exp <= now]
            for key in gone:
                del self._store.records[key]
                self._store.written.pop(key, None)
            for area in (self._store.sets, self._store.entries):
                for key in [k for k, (_, exp) in area.items() if exp is not None and exp <= now]:
                    del area[key]
            return len(gone)

    def ping(self) -> None:
        """Nothing to reach: an in-process store is always up."""
        return None
