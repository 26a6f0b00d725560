"""The last hour rebuilt from the result backend: what a restarted dashboard charts at once.

Per minute of the last hour, one bounded read: ``query(since=minute, until=minute + 60)``
returns the records last written in that minute, newest first, and we read at most
``PER_MINUTE`` of them (pages of ``PAGE``). When a minute held more, its total is estimated:
the records read give the rate (``n`` read over the seconds from the oldest read to the
newest), and that rate is taken over the minute's busy span, from the newest record back to
the minute's first record, found by bisecting the rest of the minute with one-record
queries (``ESTIMATE_PROBES`` of them, to about 15 ms). So a load that starts or stops within
the minute is counted over the seconds it ran, not over the whole minute; a rate that changes
inside the busy span still skews the estimate (a burst among the newest records makes it
high). Every record read then stands for ``total / n`` of them: counts are estimates
(``estimated`` in the series), percentiles come from the sample. Counts are exact up to
``PER_MINUTE`` records a minute.

From each record read: its state (SUCCESS, FAILURE) counts in the minute of its last write;
each attempt that ended in ``retry`` counts in the minute it finished; the last attempt's run
time (SUCCESS only) and wait time (its start minus when the task was due: ``max(sent_at,
eta)``; only for a first try or a try after a retry, since a redelivery or a replay waited
for a lease or an operator) go to the minute of the last write.

Closed minutes are read once and kept (60 buckets); the open minute, and the one before it
once more after it closes, are re-read at most every ``REFRESH`` seconds. So the whole hour
costs ``60 * PER_MINUTE`` records at start, then two minutes' reads per refresh, whatever the
number of records in the backend (the query is indexed by write time on every backend; on
S3 only with ``query_index=1``, else each read lists the bucket).

A history of one queue (``queue``) reads the same way with the query's queue filter: an
index walk on SQL and MongoDB (by queue and write time); on Redis a walk of the minute's
records testing each one's queue, so a rare queue among many records may come back short
after the bounded calls and is then shown as an estimate (an over-estimate: the walk covered
more of the minute than the records it found).

Queue depth has no durable source (a broker keeps no history of its depths): the sampler
writes one entry per queue and minute to the backend's entry area (``DEPTH_PREFIX``, expiring
after an hour and a half) and a restarted dashboard reads them back. One entry per queue, not
one per minute: dashboards of apps with other queues on the same backend (or two dashboards
of one app) then never overwrite each other's queues.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from conveyor.backend import RecordQuery, ResultBackend, StoredRecord
from conveyor.exceptions import ConveyorError
from conveyor.record import TaskRecord
from conveyor.states import FAILURE, SUCCESS

MINUTES = 60
PER_MINUTE = 1000
#: One-record queries that find where a sampled minute's records begin (60 s / 2**12).
ESTIMATE_PROBES = 12
PAGE = 200
REFRESH = 10.0
DEPTH_PREFIX = "conveyor-dashboard:depth:"
DEPTH_TTL = 5400.0
#: The longest entry key kept (the SQL backends' key column holds 512 bytes).
DEPTH_KEY_MAX = 500


@dataclass
class Bucket:
    """What one minute's read found: counts by target minute (retries may land in earlier
    minutes than the record's write) and samples of run and wait times."""

    minute: int
    read: int = 0
    total: float = 0.0
    estimated: bool = False
    closed: bool = False
    read_at: float = 0.0
    succeeded: dict[int, float] = field(default_factory=dict)
    failed: dict[int, float] = field(default_factory=dict)
    retried: dict[int, float] = field(default_factory=dict)
    runtimes: list[float] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)

    @property
    def weight(self) -> float:
        """How many records each record read stands for."""
        return self.total / self.read if self.read else 1.0


def wait_time(record: TaskRecord) -> float | None:
    """Seconds between when the last attempt could start and when it did, if the record says
    (a first try, or a try after a retry)."""
    attempts = [a for a in record.attempts if isinstance(a, dict)]
    if not attempts or record.sent_at is None:
        return None
    last = attempts[-1]
    started = last.get("started_at")
    if not isinstance(started, (int, float)):
        return None
    if len(attempts) > 1 and attempts[-2].get("outcome") != "retry":
        return None
    due = max(float(record.sent_at), float(record.eta or 0.0))
    return max(float(started) - due, 0.0)


def run_time(record: TaskRecord) -> float | None:
    """Seconds the last attempt ran, when the record says."""
    for attempt in reversed(record.attempts):
        if isinstance(attempt, dict):
            start, end = attempt.get("started_at"), attempt.get("finished_at")
            if isinstance(start, (int, float)) and isinstance(end, (int, float)):
                return round(float(end) - float(start), 6)
    return None


def percentiles(values: list[tuple[float, float]]) -> dict[str, float | None]:
    """p50/p90/p99 of ``(value, weight)`` pairs."""
    if not values:
        return {"p50": None, "p90": None, "p99": None}
    ordered = sorted(values)
    total = sum(w for _, w in ordered)
    found: dict[str, float | None] = {}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        goal, seen = q * total, 0.0
        pick = ordered[-1][0]
        for value, weight in ordered:
            seen += weight
            if seen >= goal:
                pick = value
                break
        found[name] = round(pick, 6)
    return found


class BackendHistory:
    """The per-minute series of the last hour, read from a backend with ``query``: of every
    queue, or of ``queue`` only. Thread-safe; reads happen in :meth:`series`'s caller."""

    def __init__(self, backend: ResultBackend, *, queue: str | None = None,
                 per_minute: int = PER_MINUTE, minutes: int = MINUTES,
                 refresh: float = REFRESH) -> None:
        self.backend = backend
        self.queue = queue
        self.per_minute = per_minute
        self.minutes = minutes
        self.refresh = refresh
        self.buckets: dict[int, Bucket] = {}
        self.reads = 0
        self._lock = threading.Lock()
        self._updating = threading.Lock()
        self._read_at = 0.0

    def read_minute(self, minute: int, now: float) -> Bucket:
        """Read the records last written in ``minute`` (epoch minutes), bounded."""
        start, end = minute * 60.0, minute * 60.0 + 60.0
        bucket = Bucket(minute, closed=end <= now, read_at=now)
        records: list[TaskRecord] = []
        cursor: str | None = None
        more = False
        # A page may come back short while a cursor remains: bound the calls too.
        for _ in range(2 * -(-self.per_minute // PAGE)):
            page = self.backend.query(RecordQuery(
                queue=self.queue, since=start, until=end, cursor=cursor,
                limit=min(PAGE, self.per_minute - len(records))))
            self.reads += 1
            for stored in page.records:
                try:
                    records.append(TaskRecord.from_stored(stored))
                except Exception:
                    continue
            cursor = page.cursor
            if cursor is None or len(records) >= self.per_minute:
                break
        more = cursor is not None
        bucket.read = len(records)
        bucket.total = float(len(records))
        if more and records:
            # Newest first: the records read span [oldest read, newest]; the minute's busy
            # span goes back to its first record. The records' own times (the writers'
            # clocks) are compared with each other only.
            times = [r.updated_at for r in records if isinstance(r.updated_at, (int, float))]
            newest = max(times) if times else min(end, now)
            oldest = min(times) if times else start
            first = self.first_time(start, end)
            covered = max(newest - oldest, 1e-3)
            busy = max(newest - min(first if first is not None else start, oldest), covered)
            bucket.total = max(len(records) * busy / covered, float(len(records)))
            bucket.estimated = True
        weight = bucket.weight
        for record in records:
            if record.state == SUCCESS:
                bucket.succeeded[minute] = bucket.succeeded.get(minute, 0.0) + weight
                value = run_time(record)
                if value is not None:
                    bucket.runtimes.append(value)
            elif record.state == FAILURE:
                bucket.failed[minute] = bucket.failed.get(minute, 0.0) + weight
            for attempt in record.attempts:
                if isinstance(attempt, dict) and attempt.get("outcome") == "retry" and \
                        isinstance(attempt.get("finished_at"), (int, float)):
                    at = int(float(attempt["finished_at"]) // 60)
                    bucket.retried[at] = bucket.retried.get(at, 0.0) + weight
            wait = wait_time(record)
            if wait is not None:
                bucket.waits.append(wait)
        return bucket

    def first_time(self, start: float, end: float) -> float | None:
        """About when the first record of ``[start, end)`` was written (its own time), by
        bisection with one-record queries; None when no probe found one. A probe that comes
        back empty with a cursor (a filtered Redis walk cut short) counts as not empty, so
        the busy span errs long (the estimate high)."""
        low, high = start, end
        found: StoredRecord | None = None
        for _ in range(ESTIMATE_PROBES):
            middle = (low + high) / 2
            page = self.backend.query(RecordQuery(queue=self.queue, since=start,
                                                  until=middle, limit=1))
            self.reads += 1
            if page.records:
                high, found = middle, page.records[0]
            elif page.cursor is not None:
                high = middle
            else:
                low = middle
        if found is None:
            page = self.backend.query(RecordQuery(queue=self.queue, since=start, until=high,
                                                  limit=1))
            self.reads += 1
            found = page.records[0] if page.records else None
        if found is None:
            return None
        try:
            at = TaskRecord.from_stored(found).updated_at
        except Exception:
            return None
        return float(at) if isinstance(at, (int, float)) else None

    def update(self, now: float | None = None) -> None:
        """Read the minutes not read yet, and the open ones again after ``refresh`` s."""
        now = time.time() if now is None else now
        current = int(now // 60)
        first = current - self.minutes + 1
        with self._lock:
            stale = now - self._read_at >= self.refresh
            wanted = [m for m in range(first, current + 1)
                      if m not in self.buckets or (stale and not self.buckets[m].closed)]
        with self._updating:
            # Newest first, each minute shown as soon as it is read: a restarted dashboard
            # fills its charts from the right.
            for minute in sorted(wanted, reverse=True):
                with self._lock:
                    known = self.buckets.get(minute)
                if known is not None and (known.closed or known.read_at >= now):
                    continue  # read meanwhile by another caller
                bucket = self.read_minute(minute, now)
                with self._lock:
                    self.buckets[minute] = bucket
        with self._lock:
            for m in [m for m in self.buckets if m < first]:
                del self.buckets[m]
            if stale:
                self._read_at = now

    def series(self, now: float | None = None, *, update: bool = True) -> dict[str, Any]:
        """Per minute: succeeded, failed, retried (estimates where ``estimated``), run-time
        and wait-time percentiles; and both percentiles over the hour. ``update``: read
        what is missing first (else show what has been read so far)."""
        now = time.time() if now is None else now
        if update:
            self.update(now)
        current = int(now // 60)
        first = current - self.minutes + 1
        with self._lock:
            buckets = dict(self.buckets)
        rows = []
        all_runs: list[tuple[float, float]] = []
        all_waits: list[tuple[float, float]] = []
        for minute in range(first, current + 1):
            own = buckets.get(minute)
            row: dict[str, Any] = {"minute": minute * 60, "succeeded": 0.0, "failed": 0.0,
                                   "retried": 0.0, "estimated": bool(own and own.estimated),
                                   "records": round(own.total) if own else 0}
            for b in buckets.values():
                row["succeeded"] += b.succeeded.get(minute, 0.0)
                row["failed"] += b.failed.get(minute, 0.0)
                row["retried"] += b.retried.get(minute, 0.0)
            for key in ("succeeded", "failed", "retried"):
                row[key] = round(row[key])
            if own is not None:
                row["runtime"] = percentiles([(v, 1.0) for v in own.runtimes])
                row["wait"] = percentiles([(v, 1.0) for v in own.waits])
                all_runs += [(v, own.weight) for v in own.runtimes]
                all_waits += [(v, own.weight) for v in own.waits]
            else:
                row["runtime"] = row["wait"] = percentiles([])
            rows.append(row)
        return {"minutes": rows, "runtime": percentiles(all_runs),
                "wait": percentiles(all_waits),
                "estimated": any(r["estimated"] for r in rows)}


def save_depth(backend: ResultBackend, at: float, depth: dict[str, int]) -> None:
    """Keep the queue depths of the minute of ``at`` in the backend's entry area, one entry
    per queue (a queue whose name the backend refuses in a key is left out)."""
    minute = int(at // 60)
    for queue, count in depth.items():
        key = f"{DEPTH_PREFIX}{minute:012d}:{queue}"
        if len(key.encode()) > DEPTH_KEY_MAX:
            continue
        with contextlib.suppress(ConveyorError):
            backend.put_entry(key, json.dumps({"at": at, "depth": count}).encode(),
                              ttl=DEPTH_TTL)


def load_depth(backend: ResultBackend, since: float) -> list[dict[str, Any]]:
    """The depths kept by :func:`save_depth` since ``since``, one point per minute
    (``{"at", "depth": {queue: n}}``, at the latest time saved in it), oldest first."""
    minutes: dict[int, dict[str, Any]] = {}
    for key, raw in backend.entries(DEPTH_PREFIX).items():
        stamp, sep, queue = key[len(DEPTH_PREFIX):].partition(":")
        try:
            point = json.loads(raw)
            minute = int(stamp)
        except ValueError:
            continue
        if not (sep and isinstance(point, dict) and isinstance(point.get("at"), (int, float))
                and isinstance(point.get("depth"), int) and point["at"] >= since):
            continue
        found = minutes.setdefault(minute, {"at": float(point["at"]), "depth": {}})
        found["at"] = max(found["at"], float(point["at"]))
        found["depth"][queue] = int(point["depth"])
    return [minutes[m] for m in sorted(minutes)]
