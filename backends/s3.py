"""``s3://bucket/prefix?region=...``: an Amazon S3 result backend (boto3).

Object layout under the prefix (the bucket must exist)::

    <prefix>t/<task id>     the terminal record (SUCCESS, FAILURE, REVOKED): written once
    <prefix>p/<task id>     the latest progress record (PENDING, STARTED, RETRY)
    <prefix>j/<key>         a join set: JSON {"members": [...], "expires_at": ...}
    <prefix>e/<key>         an entry of the coordination area

Each object's body is the record's bytes as the core encoded them; its metadata holds the
``state`` and ``expires-at`` (epoch seconds, absent for no expiry), and for ``query`` the
``written-at`` time (this client's clock) and the task's ``name``, ``queue`` and ``worker``
(percent-encoded; left out when longer than 512 bytes encoded).

**Query.** By default :meth:`S3ResultBackend.query` is unindexed: it lists the record keys
(under the id prefix when one is given, which S3's key order serves) and reads every record,
so its cost grows with the number of records: fine for thousands, not for millions.

With ``?query_index=1`` every write also puts empty index objects whose keys carry all a
query needs, so a page is a ListObjectsV2 (with ``StartAfter``) and reads of only the records
it returns::

    <prefix>i/a/_/<inverted time>/<id>/<state>/<name>/<queue>/<worker>   every record
    <prefix>i/n/<name>/<same tail>                                       per task name
    <prefix>i/q/<queue>/<same tail>                                      per queue
    <prefix>i/s/<state>/<same tail>                                      per state

``<inverted time>`` is 10**16 less the write time in microseconds (16 digits), so S3's
ascending key order is newest first; labels are ``=value`` (``%``-encoded, no ``/``), empty
for None, ``*`` when longer than 100 bytes (the record is read to test it). A query walks the
name's index, else the queue's, else the state's, else ``i/a/`` (a value over 200 bytes has
no index of its own), tests the other filters on the keys, and reads the records that pass to
return them. Entries are put before the record and the replaced write's entries deleted
after it, so a crash or a race leaves extra entries, never a missing one; an entry that is
not its record's latest live write (superseded, forgotten, expired, deleted by a lifecycle
rule) is skipped and removed by the query or ``purge_expired`` once superseded or a minute
old. An id prefix is still served by listing the record keys under it. A write whose index
key would pass S3's 1,024-byte key limit (an id and labels of about 500 bytes encoded) is
refused (``ValueRefusedError``).

**The first terminal write wins** by a conditional put (``IfNoneMatch="*"``) on the terminal
key: S3 lets exactly one of racing writers create it. An expired terminal record is replaced
by a put conditional on its ETag (``IfMatch``), so again one writer wins. Progress writes go
to their own key and never touch the terminal one; reads look at the terminal key first, so a
progress write racing a terminal write can never hide it.

**Joins** are optimistic concurrency on one object: read it with its ETag, add the member,
put it back ``IfMatch`` that ETag (``IfNoneMatch`` when new); a 412 means another joiner got
there first, so read again and retry. Each successful put moves the count by at most one, so
racing joiners each see a different count.

**Expiry**: reads hide expired objects; :meth:`S3ResultBackend.purge_expired` deletes them
(each delete conditional on the ETag it read, so a record rewritten meanwhile survives). In
production add a bucket lifecycle rule expiring the prefix after ``result_expires`` rounded up
to days (docs/guarantees.md), so nothing depends on a worker running the purge.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, NamedTuple
from urllib.parse import quote, unquote

from botocore.exceptions import ClientError

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
from conveyor.exceptions import ConfigurationError, ConnectionLostError
from conveyor.states import READY_STATES
from conveyor.stores.aws import (
    AwsErrors,
    check_bucket,
    client_defaults,
    error_code,
    make_client,
    options_of,
)
from conveyor.url import URL

_DEFAULTS: dict[str, Any] = {**client_defaults(), "threads": 16, "poll_interval": 1.0,
                             "query_index": False}
_MISSING = {"NoSuchKey", "404", "NotFound"}
_CONFLICT = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_EXPIRES = "expires-at"
#: Characters kept as they are in object keys: printable ASCII but '%' (see ``_key``).
_KEY_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
#: The same, less '/': one segment of an index key (see ``_index_keys``).
_SEGMENT_SAFE = _KEY_SAFE.replace("/", "")
#: Index keys order newest first: 10**16 less the write time in microseconds, 16 digits.
_INVERT = 10**16
#: The filters with an index of their own, in the order a query picks its walk.
_DIMENSIONS = (("n", "name"), ("q", "queue"), ("s", "state"))
#: Longest encoded filter value with an index of its own (a longer one walks ``i/a/``), and
#: longest label kept in an entry's tail (a longer one is ``*``: read the record to test it).
_VALUE_LIMIT, _TAIL_LIMIT = 200, 100
#: An index entry whose record does not match it is removed by ``query`` and
#: ``purge_expired`` once superseded or this old (a younger one may be a write in flight).
_GRACE = 60.0
#: At most this many ListObjectsV2 calls (of 1,000 keys) per page of an indexed query.
_WALK_LISTS = 10


def _expiry(ttl: float | None) -> dict[str, str]:
    return {} if ttl is None else {_EXPIRES: repr(time.time() + float(ttl))}


def _labels(record: StoredRecord, written_us: int) -> dict[str, str]:
    """The query fields as metadata (HTTP headers: ASCII, so percent-encoded)."""
    found = {"written-at": repr(written_us / 1e6)}
    for field, value in (("name", record.name), ("queue", record.queue),
                         ("worker", record.worker)):
        if value is not None and len(encoded := quote(value, safe="")) <= 512:
            found[field] = encoded
    return found


def _live(metadata: dict[str, str]) -> bool:
    expires = metadata.get(_EXPIRES)
    return expires is None or float(expires) > time.time()


def _segment(value: str) -> str:
    return quote(value, safe=_SEGMENT_SAFE)


class _Entry(NamedTuple):
    """One index key, parsed: ``<prefix>i/<dim>/<value>/<inverted us>/<id>/<state>/<n>/<q>/<w>``
    (each label ``=value``, empty for None, ``*`` when too long to keep)."""

    key: str
    written_us: int
    task_id: str
    state: str
    labels: tuple[str, str, str]

    @property
    def at(self) -> float:
        return self.written_us / 1e6

    def may_match(self, query: RecordQuery) -> bool:
        """False when the key alone shows the record fails a filter (no read needed)."""
        if query.state is not None and self.state != query.state:
            return False
        for label, wanted in zip(self.labels, (query.name, query.queue, query.worker),
                                 strict=True):
            if wanted is not None and label != "*" and (
                    not label or unquote(label[1:]) != wanted):
                return False
        return True


class S3ResultBackend(ResultBackend):
    """A result backend on one S3 bucket and prefix. Thread-safe (one boto3 client and one
    thread pool, shared by ``get_many``, ``entries`` and ``purge_expired``).

    URL options: ``region``, ``endpoint_url``, credentials as for ``sqs://`` (else boto3's
    chain), ``threads`` (parallel reads, default 16), ``poll_interval`` (longest pause of
    ``wait``, default 1 s), ``connect_timeout``, ``max_attempts``, ``query_index``
    (default off): keep the index objects behind :meth:`query` (see the module doc) on every
    write. Every process writing records must use the same setting, or the index misses its
    writes.
    """

    capabilities: ClassVar[BackendCapabilities] = BackendCapabilities(coordination=True,
                                                                      query=True)

    def __init__(self, url: URL, **options: Any) -> None:
        super().__init__(url)
        rest = url.raw.split("://", 1)[1].split("?", 1)[0].rpartition("@")[2]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ConfigurationError(f"{url.masked!r} names no bucket: use "
                                     "'s3://BUCKET/PREFIX?region=...'")
        opts = options_of(url, _DEFAULTS, options)
        self._bucket = bucket
        self._prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._poll = max(0.05, float(opts["poll_interval"]))
        threads = max(1, int(opts["threads"]))
        self._errors = AwsErrors("s3", f"bucket {bucket!r}")
        self._s3 = make_client("s3", opts, pool=threads + 8)
        self._threads = threads
        self._indexed = bool(opts["query_index"])
        self._list_keys = 1000  # keys per ListObjectsV2 of the index walk (S3's most)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    # -- objects --------------------------------------------------------------------------
    def _key(self, area: str, name: str) -> str:
        # Ids and entry keys are untrusted: control characters (a line break gave a 404 on
        # PutObject) and non-ASCII are percent-encoded, and so is '%' itself, so the mapping
        # is reversible (see _name) and keeps prefixes (listing by prefix still works).
        return f"{self._prefix}{area}/{quote(name, safe=_KEY_SAFE)}"

    def _name(self, area: str, key: str) -> str:
        """The id or entry key that :meth:`_key` turned into ``key``."""
        return unquote(key[len(self._key(area, "")):])

    def _read(self, key: str) -> tuple[bytes, dict[str, str], str] | None:
        """(body, metadata, etag) of ``key``, or None when it does not exist."""
        with self._errors:
            try:
                got = self._s3.get_object(Bucket=self._bucket, Key=key)
            except ClientError as exc:
                if error_code(exc) in _MISSING:
                    return None
                raise
            return bytes(got["Body"].read()), dict(got.get("Metadata", {})), str(got["ETag"])

    def _write(self, key: str, body: bytes, metadata: dict[str, str], **condition: str) -> bool:
        """Put ``key``; False when ``condition`` (IfNoneMatch / IfMatch) does not hold."""
        with self._errors:
            try:
                self._s3.put_object(Bucket=self._bucket, Key=key, Body=body,
                                    Metadata=metadata, **condition)
            except ClientError as exc:
                if error_code(exc) in _CONFLICT:
                    return False
                raise
        return True

    def _head(self, key: str) -> tuple[dict[str, str], str] | None:
        """(metadata, etag) of ``key``, or None when it does not exist."""
        with self._errors:
            try:
                head = self._s3.head_object(Bucket=self._bucket, Key=key)
            except ClientError as exc:
                if error_code(exc) in _MISSING:
                    return None
                raise
        return dict(head.get("Metadata", {})), str(head["ETag"])

    def _remove(self, key: str, **condition: str) -> bool:
        with self._errors:
            try:
                self._s3.delete_object(Bucket=self._bucket, Key=key, **condition)
            except ClientError as exc:
                if error_code(exc) in _CONFLICT | _MISSING:
                    return False
                raise
        return True

    def _map(self, fn: Any, items: list[Any]) -> list[Any]:
        if len(items) <= 1:
            return [fn(item) for item in items]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="conveyor-s3")
        return list(self._pool.map(fn, items))

    def _keys(self, prefix: str, start_after: str = "") -> Iterator[str]:
        with self._errors:
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self._bucket, Prefix=prefix, StartAfter=start_after)
            for page in pages:
                for item in page.get("Contents", []):
                    yield str(item["Key"])

    def _remove_all(self, keys: list[str]) -> None:
        """Delete ``keys`` (missing ones too), 1,000 a request."""
        for start in range(0, len(keys), 1000):
            with self._errors:
                self._s3.delete_objects(Bucket=self._bucket, Delete={"Quiet": True, "Objects": [
                    {"Key": key} for key in keys[start:start + 1000]]})

    # -- the query index ------------------------------------------------------------------
    def _index_base(self, dimension: str, value: str) -> str:
        return f"{self._prefix}i/{dimension}/{value}/"

    def _index_keys(self, task_id: str, metadata: dict[str, str]) -> list[str]:
        """The index keys of the write whose metadata is ``metadata``: one under ``i/a/_/``,
        and one under each of name, queue and state whose value is short enough."""
        if "written-at" not in metadata:
            return []
        us = round(float(metadata["written-at"]) * 1e6)
        values = {"state": metadata.get("state", "")}
        tail = [f"{_INVERT - us:016d}", _segment(task_id), _segment(values["state"])]
        for field in ("name", "queue", "worker"):
            if field not in metadata:
                tail.append("")
                continue
            values[field] = unquote(metadata[field])
            label = _segment(values[field])
            tail.append("*" if len(label) > _TAIL_LIMIT else "=" + label)
        rest = "/".join(tail)
        keys = [self._index_base("a", "_") + rest]
        for dimension, field in _DIMENSIONS:
            value = values.get(field)
            if value is not None and len(_segment(value)) <= _VALUE_LIMIT:
                keys.append(self._index_base(dimension, _segment(value)) + rest)
        return keys

    def _entry(self, key: str) -> _Entry:
        parts = key[len(self._prefix) + 2:].split("/")
        return _Entry(key, _INVERT - int(parts[2]), unquote(parts[3]), unquote(parts[4]),
                      (parts[5], parts[6], parts[7]))

    def _walk(self, base: str, start_after: str, lists: list[int]) -> Iterator[_Entry]:
        """The entries under ``base`` after ``start_after``, in query order: newest first,
        then the greater id (S3 lists keys in ascending order: the time is inverted, and the
        ids of one microsecond are sorted here). Counts its ListObjectsV2 calls in
        ``lists[0]``."""
        group: list[_Entry] = []
        token = None
        while True:
            args: dict[str, Any] = {"Bucket": self._bucket, "Prefix": base,
                                    "MaxKeys": self._list_keys}
            if token:
                args["ContinuationToken"] = token
            else:
                args["StartAfter"] = start_after
            with self._errors:
                page = self._s3.list_objects_v2(**args)
            lists[0] += 1
            for item in page.get("Contents", []):
                entry = self._entry(str(item["Key"]))
                if group and entry.written_us != group[0].written_us:
                    yield from sorted(group, key=lambda e: e.task_id, reverse=True)
                    group = []
                group.append(entry)
            if not page.get("IsTruncated"):
                yield from sorted(group, key=lambda e: e.task_id, reverse=True)
                return
            token = page["NextContinuationToken"]

    def _query_indexed(self, query: RecordQuery) -> RecordPage:
        """Walks one index (the name's, else the queue's, else the state's, else ``i/a/``)
        from the cursor or ``until``, testing the other filters on the keys themselves, and
        reads only the records that pass, in parallel: to return them and to check that each
        entry is the record's latest write (a stale entry is skipped, and removed once it is
        superseded or :data:`_GRACE` old). At most :data:`_WALK_LISTS` listings a page: a
        rare filter may end a page short, with a cursor."""
        cursor = None if query.cursor is None else decode_cursor(query.cursor)
        base = self._index_base("a", "_")
        for dimension, field in _DIMENSIONS:
            value = getattr(query, field)
            if value is not None and len(_segment(value)) <= _VALUE_LIMIT:
                base = self._index_base(dimension, _segment(value))
                break
        start = base
        if cursor is not None:
            start = f"{base}{_INVERT - round(cursor[0] * 1e6):016d}"
        elif query.until is not None:
            start = f"{base}{_INVERT - math.ceil(float(query.until) * 1e6):016d}"
        limit = max(int(query.limit), 1)
        found: list[tuple[float, StoredRecord]] = []
        stale: list[str] = []
        batch: list[_Entry] = []
        lists = [0]
        now = time.time()

        def verify(entry: _Entry) -> tuple[float, StoredRecord] | None:
            item = self._labelled(entry.task_id)
            if item is not None and round(item[0] * 1e6) == entry.written_us:
                return item if query.matches(item[1]) else None
            if (item is not None and item[0] > entry.at) or entry.at < now - _GRACE:
                stale.append(entry.key)
            return None

        def flush() -> None:
            found.extend(item for item in self._map(verify, batch) if item is not None)
            batch.clear()

        last: _Entry | None = None  # where the next page starts, unless the walk ended
        for entry in self._walk(base, start, lists):
            if query.since is not None and entry.at < query.since:
                last = None
                break
            last = entry
            if ((query.until is not None and entry.at >= query.until)
                    or not after_cursor(entry.at, entry.task_id, cursor)):
                continue
            if entry.may_match(query):
                batch.append(entry)
                if len(batch) >= limit - len(found):
                    flush()
            if len(found) >= limit or lists[0] >= _WALK_LISTS:
                break
        else:
            last = None
        flush()
        self._remove_all(stale)
        records = [record for _, record in found[:limit]]
        if len(found) >= limit:
            at, record = found[limit - 1]
            return RecordPage(records, encode_cursor(at, record.task_id))
        return RecordPage(records, None if last is None else encode_cursor(last.at,
                                                                           last.task_id))

    # -- records --------------------------------------------------------------------------
    def store(self, record: StoredRecord, *, ttl: float | None) -> bool:
        """A terminal record: one conditional put (plus a read and a second conditional put
        when an expired one is in the way). A progress record: a read of the terminal key,
        then a put of the progress key (PENDING only where no live record exists).

        With ``query_index``, first (in parallel) a HeadObject of the progress key and a put
        of each index object of this write; then the write; then a DeleteObjects of the
        index objects of the write it replaced (or of its own, when refused)."""
        metadata = {"state": str(record.state), **_expiry(ttl),
                    **_labels(record, int(time.time() * 1e6))}
        if not self._indexed:
            return self._store(record, metadata)
        entries = self._index_keys(record.task_id, metadata)
        progress = self._key("p", record.task_id)

        def step(key: str | None) -> tuple[dict[str, str], str] | None:
            if key is None:
                return None if record.state == "PENDING" else self._head(progress)
            self._write(key, b"", {})
            return None

        before = self._map(step, [None, *entries])[0]
        written = self._store(record, metadata)
        stale = entries if not written else [
            key for key in self._index_keys(record.task_id, before[0] if before else {})
            if key not in entries]
        self._remove_all(stale)
        return written

    def _store(self, record: StoredRecord, metadata: dict[str, str]) -> bool:
        data = bytes(record.data)
        terminal = self._key("t", record.task_id)
        if record.ready:
            if not self._store_terminal(terminal, data, metadata):
                return False
            # A progress record left beside it would come back once this one expired.
            self._remove(self._key("p", record.task_id))
            return True
        found = self._read(terminal)
        if found is not None and _live(found[1]):
            return False
        progress = self._key("p", record.task_id)
        if record.state != "PENDING":
            return self._write(progress, data, metadata)
        if self._write(progress, data, metadata, IfNoneMatch="*"):
            return True
        current = self._read(progress)
        if current is None:
            return self._write(progress, data, metadata, IfNoneMatch="*")
        return not _live(current[1]) and self._write(progress, data, metadata,
                                                     IfMatch=current[2])

    def _store_terminal(self, terminal: str, data: bytes, metadata: dict[str, str]) -> bool:
        """Write the terminal object unless a live one exists (first write wins)."""
        if self._write(terminal, data, metadata, IfNoneMatch="*"):
            return True
        found = self._read(terminal)
        if found is None:  # forgotten meanwhile
            return self._write(terminal, data, metadata, IfNoneMatch="*")
        if _live(found[1]):
            return False
        return self._write(terminal, data, metadata, IfMatch=found[2])

    def get(self, task_id: str) -> StoredRecord | None:
        """The live terminal record, else the live progress record, else None."""
        for area in ("t", "p"):
            found = self._read(self._key(area, task_id))
            if found is not None and _live(found[1]):
                state = found[1].get("state", "")
                if area == "p" and state in READY_STATES:
                    continue
                return StoredRecord(task_id, state, found[0])
        return None

    def get_many(self, task_ids: Iterable[str]) -> dict[str, StoredRecord]:
        """Reads in parallel on the backend's thread pool."""
        ids = list(dict.fromkeys(task_ids))
        return {task_id: record for task_id, record in zip(ids, self._map(self.get, ids),
                                                           strict=True)
                if record is not None}

    def _labelled(self, task_id: str) -> tuple[float, StoredRecord] | None:
        """``get`` with the query fields and the write time, from the object's metadata."""
        for area in ("t", "p"):
            found = self._read(self._key(area, task_id))
            if found is not None and _live(found[1]):
                meta = found[1]
                state = meta.get("state", "")
                if area == "p" and state in READY_STATES:
                    continue
                name, queue, worker = (unquote(meta[f]) if f in meta else None
                                       for f in ("name", "queue", "worker"))
                return (float(meta.get("written-at", "0")),
                        StoredRecord(task_id, state, found[0], name, queue, worker))
        return None

    def query(self, query: RecordQuery) -> RecordPage:
        """With ``query_index`` and no id prefix, a walk of the index (:meth:`_query_indexed`).
        Otherwise unindexed (see the module doc): lists the record keys (under the id prefix),
        reads each record in parallel, then filters and sorts in the client."""
        if self._indexed and query.id_prefix is None:
            return self._query_indexed(query)
        cursor = None if query.cursor is None else decode_cursor(query.cursor)
        stem = query.id_prefix or ""
        ids = {self._name(area, key)
               for area in ("t", "p") for key in self._keys(self._key(area, stem))}
        found = []
        for item in self._map(self._labelled, sorted(ids)):
            if item is None:
                continue
            at, record = item
            if (query.matches(record) and (query.since is None or at >= query.since)
                    and (query.until is None or at < query.until)
                    and after_cursor(at, record.task_id, cursor)):
                found.append((at, record))
        found.sort(key=lambda pair: (pair[0], pair[1].task_id), reverse=True)
        limit = max(int(query.limit), 1)
        page = found[:limit]
        more = len(found) > limit
        return RecordPage([r for _, r in page],
                          encode_cursor(page[-1][0], page[-1][1].task_id) if more else None)

    def forget(self, task_id: str) -> None:
        """Delete both objects of the task (with ``query_index``, read first, and their index
        objects too) in one DeleteObjects. Idempotent."""
        keys = [self._key("t", task_id), self._key("p", task_id)]
        if self._indexed:
            for found in self._map(self._head, list(keys)):
                keys += self._index_keys(task_id, found[0]) if found is not None else []
        self._remove_all(keys)

    def wait(self, task_id: str, *, timeout: float | None) -> StoredRecord | None:
        """Poll the terminal key with backoff (50 ms doubling to ``poll_interval``, 1 s by
        default); returns within ``timeout``.

        A terminal record written during the wait is returned even when it expired before a
        poll saw it live (a ``result_expires`` shorter than the pause): the task finished
        while we waited, as a push notification would have said. One that was already there,
        expired, when the wait began (an earlier run of a reused id) is not: each write has
        its own ETag and ``written-at``."""
        key = self._key("t", task_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.05
        before: tuple[str, str | None] | None = None
        first = True
        while True:
            found = self._read(key)
            if found is not None:
                data, metadata, etag = found
                written = (etag, metadata.get("written-at"))
                state = metadata.get("state", "")
                if state in READY_STATES and (_live(metadata) or (not first and
                                                                  written != before)):
                    return StoredRecord(task_id, state, data)
                if first:
                    before = written
            first = False
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                pause = min(pause, left)
            time.sleep(pause)
            pause = min(pause * 2, self._poll)

    def purge_expired(self) -> int:
        """Delete expired records, joins and entries (each only if unchanged since it was
        read); returns how many task records went. With ``query_index``, also the index
        objects that are not their record's latest live write (superseded, or
        :data:`_GRACE` old). Reads every object's metadata: run it rarely, and prefer a
        lifecycle rule in production."""
        count = 0
        latest: dict[str, int] = {}  # task id -> the write time of its live record, in us
        gone: set[tuple[str, int]] = set()  # (task id, write time) of the expired ones
        for area in ("t", "p", "j", "e"):
            keys = list(self._keys(self._prefix + area + "/"))
            for key, head in zip(keys, self._map(self._head, keys), strict=True):
                if head is None:
                    continue
                meta = head[0]
                written = (self._name(area, key), round(float(meta.get("written-at", 0)) * 1e6))
                if _live(meta):
                    if area == "t" or (area == "p" and meta.get("state") not in READY_STATES):
                        latest.setdefault(*written)
                elif self._remove(key, IfMatch=head[1]) and area in "tp":
                    gone.add(written)
                    count += 1
        if self._indexed:
            old = (time.time() - _GRACE) * 1e6
            stale = []
            for key in self._keys(self._prefix + "i/"):
                entry = self._entry(key)
                current = latest.get(entry.task_id)
                if current != entry.written_us and (
                        (current is not None and current > entry.written_us)
                        or (entry.task_id, entry.written_us) in gone
                        or entry.written_us < old):
                    stale.append(key)
            self._remove_all(stale)
        return count

    # -- coordination ---------------------------------------------------------------------
    def join(self, key: str, member: str, *, ttl: float | None) -> int:
        """Read-modify-write of the set's object, conditional on its ETag; retried (with
        jittered backoff) when another joiner wrote first."""
        name = self._key("j", key)
        pause = 0.01
        for _ in range(200):
            found = self._read(name)
            members: list[str] = []
            if found is not None:
                data = json.loads(found[0])
                expires = data.get("expires_at")
                if expires is None or expires > time.time():
                    members = list(data["members"])
            if member not in members:
                members.append(member)
            body = json.dumps({"members": members, "expires_at": None if ttl is None
                               else time.time() + float(ttl)}).encode()
            condition = {"IfMatch": found[2]} if found is not None else {"IfNoneMatch": "*"}
            if self._write(name, body, {}, **condition):
                return len(members)
            time.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(pause * 2, 0.2)
        raise ConnectionLostError(f"s3 bucket {self._bucket!r}: join of {key!r} kept losing "
                                  "to other writers; try again")

    def put_entry(self, key: str, value: bytes, *, ttl: float | None) -> None:
        """One put (S3 replaces objects atomically)."""
        self._write(self._key("e", key), bytes(value), _expiry(ttl))

    def entries(self, prefix: str) -> dict[str, bytes]:
        """A listing under ``<prefix>e/<prefix>`` (literal), then parallel reads."""
        base = self._key("e", "")
        keys = list(self._keys(base + prefix))
        found: dict[str, bytes] = {}
        for key, got in zip(keys, self._map(self._read, keys), strict=True):
            if got is not None and _live(got[1]):
                found[self._name("e", key)] = got[0]
        return found

    def delete_entry(self, key: str) -> None:
        """Delete the entry. Idempotent."""
        self._remove(self._key("e", key))

    # -- administration -------------------------------------------------------------------
    def ping(self) -> None:
        """HeadBucket: reachability, credentials, that the bucket exists and is in the
        client's region (:func:`~conveyor.stores.aws.check_bucket`)."""
        check_bucket(self._s3, self._bucket)

    def info(self) -> dict[str, str]:
        """Region, bucket and prefix, for ``conveyor check``."""
        return {"region": str(self._s3.meta.region_name), "bucket": self._bucket,
                "prefix": self._prefix or "-", "query_index": "on" if self._indexed else "off"}

    def close(self) -> None:
        """Close the HTTP connections and the thread pool. Idempotent."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)
        if hasattr(self._s3, "close"):
            self._s3.close()
