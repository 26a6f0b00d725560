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

**Query is unindexed here**: :meth:`S3ResultBackend.query` lists the record keys (under the id
prefix when one is given, which S3's key order serves) and reads every record's metadata,
so its cost grows with the number of records: fine for thousands, not for millions. Use a
Redis, SQL or MongoDB backend for a dashboard over a large history.

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
import random
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar
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

_DEFAULTS: dict[str, Any] = {**client_defaults(), "threads": 16, "poll_interval": 1.0}
_MISSING = {"NoSuchKey", "404", "NotFound"}
_CONFLICT = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_EXPIRES = "expires-at"
#: Characters kept as they are in object keys: printable ASCII but '%' (see ``_key``).
_KEY_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def _expiry(ttl: float | None) -> dict[str, str]:
    return {} if ttl is None else {_EXPIRES: repr(time.time() + float(ttl))}


def _labels(record: StoredRecord) -> dict[str, str]:
    """The query fields as metadata (HTTP headers: ASCII, so percent-encoded)."""
    found = {"written-at": repr(time.time())}
    for field, value in (("name", record.name), ("queue", record.queue),
                         ("worker", record.worker)):
        if value is not None and len(encoded := quote(value, safe="")) <= 512:
            found[field] = encoded
    return found


def _live(metadata: dict[str, str]) -> bool:
    expires = metadata.get(_EXPIRES)
    return expires is None or float(expires) > time.time()


class S3ResultBackend(ResultBackend):
    """A result backend on one S3 bucket and prefix. Thread-safe (one boto3 client and one
    thread pool, shared by ``get_many``, ``entries`` and ``purge_expired``).

    URL options: ``region``, ``endpoint_url``, credentials as for ``sqs://`` (else boto3's
    chain), ``threads`` (parallel reads, default 16), ``poll_interval`` (longest pause of
    ``wait``, default 1 s), ``connect_timeout``, ``max_attempts``.
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

    def _keys(self, prefix: str) -> Iterator[str]:
        with self._errors:
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self._bucket, Prefix=prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    yield str(item["Key"])

    # -- records --------------------------------------------------------------------------
    def store(self, record: StoredRecord, *, ttl: float | None) -> bool:
        """A terminal record: one conditional put (plus a read and a second conditional put
        when an expired one is in the way). A progress record: a read of the terminal key,
        then a put of the progress key (PENDING only where no live record exists)."""
        metadata = {"state": str(record.state), **_expiry(ttl), **_labels(record)}
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
        """Unindexed (see the module doc): lists the keys, reads each record in parallel,
        then filters and sorts in the client."""
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
        """Delete both objects of the task. Idempotent."""
        with self._errors:
            self._s3.delete_objects(Bucket=self._bucket, Delete={"Quiet": True, "Objects": [
                {"Key": self._key("t", task_id)}, {"Key": self._key("p", task_id)}]})

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
        read); returns how many task records went. Reads every object's metadata: run it
        rarely, and prefer a lifecycle rule in production."""
        def expired(key: str) -> str | None:
            with self._errors:
                try:
                    head = self._s3.head_object(Bucket=self._bucket, Key=key)
                except ClientError as exc:
                    if error_code(exc) in _MISSING:
                        return None
                    raise
            return None if _live(dict(head.get("Metadata", {}))) else str(head["ETag"])

        count = 0
        for area in ("t", "p", "j", "e"):
            keys = list(self._keys(self._prefix + area + "/"))
            for key, etag in zip(keys, self._map(expired, keys), strict=True):
                if etag is not None and self._remove(key, IfMatch=etag) and area in "tp":
                    count += 1
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
                "prefix": self._prefix or "-"}

    def close(self) -> None:
        """Close the HTTP connections and the thread pool. Idempotent."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)
        if hasattr(self._s3, "close"):
            self._s3.close()
