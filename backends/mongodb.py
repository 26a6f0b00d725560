"""``mongodb://`` and ``mongodb+srv://``: a MongoDB result backend with a TTL index.

Collections (prefix ``conveyor_`` by default; see :mod:`conveyor.stores.mongodb`)::

    <p>results  _id (task id), state, data, updated_at, expires_at (a date, or null: never),
                name, queue, worker (in the clear, for ``query``; indexed with updated_at)
    <p>sets     _id (join key), members, expires_at        (coordination: join)
    <p>entries  _id (entry key), value, expires_at         (coordination: the entry area)

Each has a TTL index on ``expires_at``, so the server deletes expired documents itself; its
TTL monitor runs only once a minute, so every read also hides documents past their expiry.

The first terminal write wins inside the server: a store is an upsert whose filter matches
only a document it may replace (one that is not terminal; for PENDING only an expired one).
When a document exists but does not match, the upsert's insert fails on the unique ``_id``:
that duplicate-key error means "not written", unless the terminal document there has
expired, which a second update conditional on the expiry replaces. Two writers creating the
same id at once also end in one duplicate-key error; the loser reads what is there and tries
again unless it is a live terminal record.
"""

from __future__ import annotations

import contextlib
import random
import re
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar, TypeVar

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
from conveyor.stores.mongodb import MongoStore, to_date
from conveyor.url import URL

T = TypeVar("T")
_EXPIRY = [([("expires_at", 1)], {"expireAfterSeconds": 0})]
#: The query walks one of these newest first (see MongoResultBackend.query).
_RESULT_INDEXES = _EXPIRY + [([("updated_at", -1), ("_id", -1)], {})] + [
    ([(field, 1), ("updated_at", -1), ("_id", -1)], {}) for field in ("state", "name", "queue")]
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_TERMINAL = sorted(READY_STATES)
_CHUNK = 500  # ids per $in list, records per bulk write
_DUPLICATE_KEY = 11000


def _stamp(now: datetime) -> datetime:
    """``now`` rounded up to BSON's millisecond, so a record written after a moment ``t``
    never reads as written before it (BSON would truncate)."""
    return now + timedelta(microseconds=(1000 - now.microsecond % 1000) % 1000)


def _live(now: datetime) -> dict[str, Any]:
    return {"$or": [{"expires_at": None}, {"expires_at": {"$gt": now}}]}


def _is_live(doc: dict[str, Any], now: datetime) -> bool:
    expires = doc.get("expires_at")
    return expires is None or expires > now


def _first_try(task_id: str, state: str, now: datetime) -> dict[str, Any]:
    """The filter of the upsert a write of ``state`` tries first: the stored document, if
    any, is not terminal (PENDING: has expired). Plain conjunctions only: SecantusDB
    answers any filter holding an ``$or`` with a collection scan, even beside ``_id``."""
    if state == "PENDING":
        return {"_id": task_id, "expires_at": {"$lte": now}}
    return {"_id": task_id, "state": {"$nin": _TERMINAL}}


def _retry_duplicate(write: Callable[[], T], tries: int = 10) -> T | None:
    """Run ``write`` (an upsert); on a duplicate-key error, a race with another writer's
    insert of the same ``_id``, run it again after a short random pause, now against the
    winner's document. None when every try hit one."""
    from pymongo.errors import DuplicateKeyError

    for attempt in range(tries):
        with contextlib.suppress(DuplicateKeyError):
            return write()
        time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
    return None


class MongoResultBackend(ResultBackend):
    """Results in MongoDB, one document per task. Thread-safe; each call is one round trip
    (two when a write races another's first write of the same id).

    Options: ``prefix`` (collection name prefix, default ``conveyor_``; also accepted in the
    URL's query); anything else goes to ``pymongo.MongoClient``.
    """

    capabilities: ClassVar[BackendCapabilities] = BackendCapabilities(
        native_expiry=True, coordination=True, query=True)

    def __init__(self, url: URL, *, prefix: str | None = None, **options: Any) -> None:
        super().__init__(url)
        self._db = MongoStore(url, prefix=prefix, **options)
        self._errors = self._db.errors

    def _coll(self, name: str) -> Any:
        return self._db.collection(name, _RESULT_INDEXES if name == "results" else _EXPIRY)

    def _now(self) -> datetime:
        return to_date(self._db.now())

    def _expiry(self, ttl: float | None) -> datetime | None:
        return None if ttl is None else to_date(self._db.now() + float(ttl))

    def store(self, record: StoredRecord, *, ttl: float | None) -> bool:
        """Write ``record`` unless a live terminal record exists (or, for PENDING, any live
        record); atomic on the server, returns whether it was written.

        An upsert conditional on the stored state; when that meets a terminal document, an
        update conditional on its having expired. A duplicate key that meets neither is a
        race with another writer's first write: read what is there and try again unless it
        is a live terminal record."""
        from pymongo.errors import DuplicateKeyError

        with self._errors:
            results = self._coll("results")
            now = self._now()
            change = {"$set": {"state": str(record.state), "data": bytes(record.data),
                               "updated_at": _stamp(now), "expires_at": self._expiry(ttl),
                               "name": record.name, "queue": record.queue,
                               "worker": record.worker}}
            first = _first_try(record.task_id, record.state, now)
            expired = {"_id": record.task_id, "expires_at": {"$lte": now}}
            for attempt in range(10):
                try:
                    results.update_one(first, change, upsert=True)
                    return True
                except DuplicateKeyError:
                    if record.state == "PENDING":
                        return False  # a live record exists: PENDING never replaces it
                if results.update_one(expired, change).matched_count:
                    return True
                there = results.find_one({"_id": record.task_id}, {"state": 1, "expires_at": 1})
                if there is not None and there["state"] in READY_STATES and _is_live(there, now):
                    return False
                time.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # spread racing writers
        raise DriverError(f"store of {record.task_id!r} kept racing other writers; try again")

    def store_many(self, records: Iterable[StoredRecord], *, ttl: float | None) -> list[bool]:
        """Store records with :meth:`store`'s rules, in one unordered bulk write per 500;
        records that hit a duplicate key are decided again one by one."""
        from pymongo import UpdateOne
        from pymongo.errors import BulkWriteError

        batch = list(records)
        if len({r.task_id for r in batch}) < len(batch):
            return [self.store(r, ttl=ttl) for r in batch]  # one upsert may not race itself
        written: list[bool] = []
        for start in range(0, len(batch), _CHUNK):
            part = batch[start:start + _CHUNK]
            with self._errors:
                now, expires = self._now(), self._expiry(ttl)
                ops = [UpdateOne(_first_try(r.task_id, r.state, now),
                                 {"$set": {"state": str(r.state), "data": bytes(r.data),
                                           "updated_at": _stamp(now), "expires_at": expires,
                                           "name": r.name, "queue": r.queue,
                                           "worker": r.worker}},
                                 upsert=True) for r in part]
                try:
                    self._coll("results").bulk_write(ops, ordered=False)
                    failed: set[int] = set()
                except BulkWriteError as exc:
                    errors = exc.details.get("writeErrors", [])
                    if any(e.get("code") != _DUPLICATE_KEY for e in errors):
                        raise
                    failed = {int(e["index"]) for e in errors}
            # An upsert either matched (written), inserted (written) or hit a duplicate key:
            # a terminal document (maybe expired) or a race, which store() decides.
            written += [i not in failed or (r.state != "PENDING" and self.store(r, ttl=ttl))
                        for i, r in enumerate(part)]
        return written

    def get(self, task_id: str) -> StoredRecord | None:
        """The live record of ``task_id``, or None (missing or expired)."""
        return self.get_many([task_id]).get(task_id)

    def get_many(self, task_ids: Iterable[str]) -> dict[str, StoredRecord]:
        """Live records of ``task_ids`` in one query per 500 ids."""
        ids = list(dict.fromkeys(task_ids))
        found: dict[str, StoredRecord] = {}
        with self._errors:
            results, now = self._coll("results"), self._now()
            for start in range(0, len(ids), _CHUNK):
                # Expired documents are dropped here rather than by the filter (see
                # _first_try: no $or next to _id), which is the same rule.
                for doc in results.find({"_id": {"$in": ids[start:start + _CHUNK]}},
                                        {"state": 1, "data": 1, "expires_at": 1}):
                    if _is_live(doc, now):
                        found[doc["_id"]] = StoredRecord(doc["_id"], doc["state"],
                                                         bytes(doc["data"]))
        return found

    def forget(self, task_id: str) -> None:
        """Delete the record. Idempotent."""
        with self._errors:
            self._coll("results").delete_one({"_id": task_id})

    def query(self, query: RecordQuery) -> RecordPage:
        """One indexed ``find`` sorted by (updated_at, _id) descending; the server picks the
        (state | name | queue, updated_at) index or the time index. Times have BSON's
        millisecond resolution: the cursor counts milliseconds."""
        conds: list[dict[str, Any]] = [_live(self._now())]
        for field, value in (("state", query.state), ("name", query.name),
                             ("queue", query.queue), ("worker", query.worker)):
            if value is not None:
                conds.append({field: value})
        if query.id_prefix:
            conds.append({"_id": {"$regex": "^" + re.escape(query.id_prefix)}})
        if query.since is not None:
            conds.append({"updated_at": {"$gte": to_date(float(query.since))}})
        if query.until is not None:
            conds.append({"updated_at": {"$lt": to_date(float(query.until))}})
        if query.cursor is not None:
            ms, after = decode_cursor(query.cursor)
            at = _EPOCH + timedelta(milliseconds=int(ms))
            conds.append({"$or": [{"updated_at": {"$lt": at}},
                                  {"updated_at": at, "_id": {"$lt": after}}]})
        limit = max(int(query.limit), 1)
        with self._errors:
            docs = list(self._coll("results").find({"$and": conds})
                        .sort([("updated_at", -1), ("_id", -1)]).limit(limit + 1))
        page = docs[:limit]
        records = [StoredRecord(d["_id"], d["state"], bytes(d["data"]), d.get("name"),
                                d.get("queue"), d.get("worker")) for d in page]
        if len(docs) <= limit:
            return RecordPage(records, None)
        last = page[-1]["updated_at"]
        if last.tzinfo is None:
            last = last.replace(tzinfo=timezone.utc)
        ms_last = (last - _EPOCH) // timedelta(milliseconds=1)
        return RecordPage(records, encode_cursor(float(ms_last), page[-1]["_id"]))

    # -- coordination ---------------------------------------------------------------------
    def join(self, key: str, member: str, *, ttl: float | None) -> int:
        """One ``find_one_and_update`` of the set's document: a pipeline that starts the
        member list afresh when the set has expired, else unions the member in, and sets the
        expiry. A missing set is first created empty by a plain insert (racing creators:
        one wins, the others' duplicate-key errors are ignored), then joined the same way.

        Not an upsert of the join itself: SecantusDB's ``find_one_and_update`` returns a
        wrong document, or none, to upserts racing on a new ``_id``."""
        from pymongo import ReturnDocument
        from pymongo.errors import DuplicateKeyError

        with self._errors:
            sets, now, expires = self._coll("sets"), self._now(), self._expiry(ttl)
            expired = {"$and": [{"$eq": [{"$type": "$expires_at"}, "date"]},
                                {"$lte": ["$expires_at", now]}]}
            mine = {"$literal": [member]}  # $literal: a member starting with "$" is no path
            update = [{"$set": {
                "members": {"$cond": [expired, mine,
                                      {"$setUnion": [{"$ifNull": ["$members", []]}, mine]}]},
                "expires_at": {"$literal": expires}}}]
            for _ in range(5):  # more only if the TTL monitor keeps deleting it meanwhile
                doc = sets.find_one_and_update({"_id": key}, update,
                                               return_document=ReturnDocument.AFTER)
                if doc is not None:
                    return len(doc["members"])
                with contextlib.suppress(DuplicateKeyError):
                    sets.insert_one({"_id": key, "members": [], "expires_at": expires})
        raise DriverError(f"join of {key!r}: its set kept disappearing; try again")

    def put_entry(self, key: str, value: bytes, *, ttl: float | None) -> None:
        """Replace (or create) the entry in one upsert."""
        with self._errors:
            entries = self._coll("entries")
            doc = {"value": bytes(value), "expires_at": self._expiry(ttl)}
            _retry_duplicate(lambda: entries.replace_one({"_id": key}, doc, upsert=True))

    def entries(self, prefix: str) -> dict[str, bytes]:
        """Live entries whose key starts with ``prefix``, matched literally (escaped regex
        anchored at the start, which the ``_id`` index serves as a range)."""
        with self._errors:
            entries = self._coll("entries")
            now = self._now()
            found = entries.find({"_id": {"$regex": "^" + re.escape(prefix)}},
                                 {"value": 1, "expires_at": 1})
            return {doc["_id"]: bytes(doc["value"]) for doc in found if _is_live(doc, now)}

    def delete_entry(self, key: str) -> None:
        """Delete the entry. Idempotent."""
        with self._errors:
            self._coll("entries").delete_one({"_id": key})

    # -- administration -------------------------------------------------------------------
    def purge_expired(self) -> int:
        """Delete expired records now, without waiting for the TTL monitor; return how many
        (expired sets and entries go too, uncounted)."""
        with self._errors:
            expired = {"expires_at": {"$lte": self._now()}}
            for name in ("sets", "entries"):
                self._coll(name).delete_many(expired)
            return int(self._coll("results").delete_many(expired).deleted_count)

    def info(self) -> dict[str, str]:
        """Server, database and prefix, for ``conveyor check``."""
        return self._db.server_info()

    def ping(self) -> None:
        """One round trip; raises ConnectionLostError/AuthenticationError."""
        self._db.ping()

    def close(self) -> None:
        """Close the pool. Idempotent."""
        self._db.close()
