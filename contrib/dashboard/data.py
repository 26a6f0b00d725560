"""What the dashboard reads: queue depths, workers, records, dead letters, and the history of
samples behind the live flow and the charts. Reads the broker and the backend directly.

Everything returned is plain JSON-ready data (dicts, lists, str, numbers): the JSON API
returns it as it is and the templates render it (autoescaped).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor.app import Outgoing
from conveyor.backend import RecordQuery
from conveyor.contrib.dashboard.history import (
    BackendHistory,
    load_depth,
    run_time,
    save_depth,
    wait_time,
)
from conveyor.control.agent import REGISTRY_PREFIX
from conveyor.exceptions import ConveyorError
from conveyor.message import Message
from conveyor.record import TaskRecord
from conveyor.states import FAILURE, PENDING, READY_STATES, RETRY, REVOKED, STARTED, SUCCESS

if TYPE_CHECKING:
    from conveyor.app import Conveyor

STATES = (PENDING, STARTED, RETRY, SUCCESS, FAILURE, REVOKED)
#: How often the sampler reads the broker and the registry, and how much history it keeps.
SAMPLE_EVERY = 2.0
HISTORY_SECONDS = 3600.0
#: Records counted per state for the flow's backend box ("1000+" past it).
STATE_COUNT_CAP = 1000
STATE_COUNT_EVERY = 10.0
#: Per-queue histories kept at once (each the hour of one queue; the least recently asked
#: for is dropped past this).
QUEUE_HISTORIES = 16
#: Members of a group listed on its page and in a member's workflow.
GROUP_MEMBERS = 200
#: Control queues are plumbing, not task queues.
_CONTROL_PREFIX = "conveyor-control-"

#: A redaction hook: gets a task's JSON view (args, kwargs, result, ...) and returns what may
#: be shown. See :func:`conveyor.contrib.dashboard.create_app`.
Redactor = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class Sample:
    """One reading of the system."""

    at: float
    queues: dict[str, dict[str, int]]
    processed: int
    failed: int
    busy: int
    threads: int
    workers: int
    states: dict[str, int] = field(default_factory=dict)


class Reader:
    """Reads an app's broker and backend for the dashboard. Thread-safe."""

    def __init__(self, app: Conveyor, *, redact: Redactor | None = None) -> None:
        self.app = app
        self.redact = redact
        self.samples: deque[Sample] = deque(maxlen=int(HISTORY_SECONDS / SAMPLE_EVERY) + 1)
        self._seen_workers: dict[str, dict[str, Any]] = {}
        self._state_counts: tuple[float, dict[str, int]] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: The per-minute series rebuilt from the backend (None: it cannot query).
        self.backend_history = BackendHistory(app.backend) if self.can_query else None
        #: The same for single queues, made when a page or the API first asks for one.
        self.queue_histories: OrderedDict[str, BackendHistory] = OrderedDict()
        #: Queue depths kept in the backend by earlier runs (read once), and the minute
        #: of the depth this run saved last.
        self._saved_depth: list[dict[str, Any]] | None = None
        self._depth_minute: int | None = None

    # -- capabilities ---------------------------------------------------------------------
    @property
    def can_query(self) -> bool:
        """Whether the backend can list records (``capabilities.query``)."""
        return bool(self.app.backend.capabilities.query)

    @property
    def has_registry(self) -> bool:
        """Whether the backend holds the worker registry (``capabilities.coordination``)."""
        return bool(self.app.backend.capabilities.coordination)

    # -- queues -----------------------------------------------------------------------------
    def queue_names(self) -> list[str]:
        """Known task queues: the broker's, the default one and every live worker's."""
        names = {q for q in self.app.broker.queues() if not q.startswith(_CONTROL_PREFIX)}
        names.add(self.app.conf.task_default_queue)
        for entry in self.live_workers().values():
            names.update(str(q) for q in entry.get("queues", []) if isinstance(q, str))
        return sorted(n for n in names if not n.startswith(_CONTROL_PREFIX))

    def queues(self) -> dict[str, dict[str, int]]:
        """ready / delayed / in_flight / dead per queue."""
        found = {}
        for name in self.queue_names():
            s = self.app.broker.stats(name)
            found[name] = {"ready": s.ready, "delayed": s.delayed, "in_flight": s.reserved,
                           "dead": s.dead}
        return found

    # -- workers ----------------------------------------------------------------------------
    def live_workers(self) -> dict[str, dict[str, Any]]:
        """Registry entries of live workers, by hostname."""
        if not self.has_registry:
            return {}
        found: dict[str, dict[str, Any]] = {}
        for key, value in self.app.backend.entries(REGISTRY_PREFIX).items():
            try:
                entry = json.loads(value)
            except ValueError:
                continue
            if isinstance(entry, dict):
                found[key[len(REGISTRY_PREFIX):]] = entry
        return found

    def workers(self) -> list[dict[str, Any]]:
        """Live workers, then the ones this dashboard saw that left (``alive`` False)."""
        live = self.live_workers()
        now = time.time()
        with self._lock:
            for name, entry in live.items():
                self._seen_workers[name] = entry
            seen = dict(self._seen_workers)
        rows = []
        for name, entry in seen.items():
            active = entry.get("active") or []
            rows.append({
                "hostname": name, "alive": name in live, "host": entry.get("host"),
                "pid": entry.get("pid"), "queues": entry.get("queues") or [],
                "pool": entry.get("pool"), "concurrency": entry.get("concurrency"),
                "running": len(active) if isinstance(active, list) else 0,
                "active": [{"id": a["id"], "task": a.get("task"), "started": a.get("started")}
                           for a in (active if isinstance(active, list) else [])
                           if isinstance(a, dict) and isinstance(a.get("id"), str)],
                "processed": entry.get("processed"), "failed": entry.get("failed"),
                "heartbeat": entry.get("heartbeat"), "started": entry.get("started"),
                "heartbeat_age": (now - float(entry["heartbeat"])
                                  if isinstance(entry.get("heartbeat"), (int, float)) else None),
                "version": entry.get("version")})
        rows.sort(key=lambda r: (not r["alive"], str(r["hostname"])))
        return rows

    # -- records ----------------------------------------------------------------------------
    def tasks(self, *, state: str | None = None, name: str | None = None,
              queue: str | None = None, worker: str | None = None,
              id_prefix: str | None = None, since: float | None = None,
              until: float | None = None, cursor: str | None = None,
              limit: int = 50) -> dict[str, Any]:
        """One page of task summaries, newest first, and the cursor of the next."""
        page = self.app.backend.query(RecordQuery(
            state=state, name=name, queue=queue, worker=worker, id_prefix=id_prefix,
            since=since, until=until, cursor=cursor, limit=max(1, min(int(limit), 500))))
        rows: list[dict[str, Any]] = []
        for stored in page.records:
            try:
                record = TaskRecord.from_stored(stored)
            except Exception:
                rows.append({"id": stored.task_id, "state": stored.state, "task": stored.name,
                             "queue": stored.queue, "worker": stored.worker,
                             "updated_at": None, "retries": None, "runtime": None,
                             "wait": None})
                continue
            rows.append({"id": record.task_id, "state": record.state, "task": record.task,
                         "queue": record.queue, "worker": record.worker,
                         "updated_at": record.updated_at, "retries": record.retries,
                         "runtime": run_time(record), "wait": wait_time(record)})
        return {"tasks": rows, "cursor": page.cursor}

    def task(self, task_id: str) -> dict[str, Any] | None:
        """Everything the task page shows, or None for an unknown id."""
        record = self.app.record(task_id)
        if record is None:
            return None
        view: dict[str, Any] = {
            "id": record.task_id, "state": record.state, "task": record.task,
            "queue": record.queue, "worker": record.worker, "retries": record.retries,
            "updated_at": record.updated_at, "date_done": record.date_done,
            "result": record.result if record.result_type == "json" else
            f"({record.result_type} result, not decoded here)",
            "error_type": record.error_type, "error_message": record.error_message,
            "traceback": record.traceback, "parent": record.parent, "group": record.group,
            "dead_letter_reason": record.dead_letter_reason,
            "attempts": [_attempt(a) for a in record.attempts if isinstance(a, dict)],
            "sent_at": record.sent_at, "eta": record.eta, "wait": wait_time(record),
            "args": None, "kwargs": None, "args_from": None, "can_resend": False,
        }
        letter = self.dead_letter_of(task_id, record.queue)
        if letter is not None:
            view["args"], view["kwargs"] = letter["args"], letter["kwargs"]
            view["args_from"] = "dead letter"
            view["dead_letter"] = {"queue": letter["queue"], "message_id": letter["message_id"]}
        elif record.args_type is not None:
            view["args"], view["kwargs"] = self.stored_arguments(record)
            view["args_from"] = "record"
        view["can_resend"] = record.state == FAILURE and (
            letter is not None or (record.args_type is not None and bool(record.task)))
        if record.argsrepr is not None:
            view["args"] = record.argsrepr
        if record.kwargsrepr is not None:
            view["kwargs"] = record.kwargsrepr
        view["workflow"] = self.workflow(record)
        return self.redact(view) if self.redact is not None else view

    def stored_arguments(self, record: TaskRecord) -> tuple[Any, Any]:
        """``(args, kwargs)`` kept in a record by ``result_extended``; JSON ones as they
        are, others as a note (never unpickled here)."""
        if record.args_type == "json":
            return (record.args if record.args is not None else [],
                    record.kwargs if record.kwargs is not None else {})
        note = f"({record.args_type} arguments, not decoded here)"
        return note, note

    def resend(self, record: TaskRecord) -> None:
        """Send a FAILURE again from the arguments its record keeps (``result_extended``),
        under the same id: the record is reopened as PENDING with its attempt history, as a
        dead letter's replay does. What followed it in a workflow is not in the record and
        is not re-sent (a dead letter's replay re-sends that too)."""
        if record.state != FAILURE or record.args_type is None or not record.task:
            raise ConveyorError(f"task {record.task_id} cannot be re-sent from its record: "
                                "only a FAILURE whose record keeps its arguments can "
                                "(set result_extended=True on the workers)")
        queue = record.queue or self.app.conf.task_default_queue
        args, kwargs = record.args, record.kwargs
        if record.args_type == "json":
            args = args if args is not None else []
            kwargs = kwargs if kwargs is not None else {}
        msg = Message(id=record.task_id, task=record.task, args=args, kwargs=kwargs,
                      content_type=record.args_type, parent=record.parent,
                      group=record.group, history=list(record.attempts), sent_at=time.time(),
                      argsrepr=record.argsrepr, kwargsrepr=record.kwargsrepr)
        backend = self.app.backend
        backend.forget(record.task_id)  # store() keeps a terminal record: reopen it
        backend.store(TaskRecord(record.task_id, PENDING, task=record.task, queue=queue,
                                 attempts=list(record.attempts), parent=record.parent,
                                 group=record.group, updated_at=time.time()).to_stored(),
                      ttl=self.app.conf.result_expires)
        self.app.enqueue([Outgoing(msg, queue, 0.0)])

    def group(self, group_id: str) -> dict[str, Any] | None:
        """A group the backend knows by id: a chord's header (its entry, written when the
        chord was sent) or a group saved with ``GroupResult.save()``; None otherwise. Its
        members (at most ``GROUP_MEMBERS``) with their states, how many are done, the
        chord's body and what the group followed (``parent``)."""
        if not self.has_registry:
            return None
        from conveyor.canvas.engine import header_result
        from conveyor.canvas.tree import workflow as tree
        from conveyor.result import GroupResult

        kind = "chord"
        found = header_result(self.app, group_id)
        if found is None:
            kind, found = "group", GroupResult.restore(group_id, app=self.app)
        if found is None:
            return None
        ids: list[str] = []
        pending: list[Any] = list(found.results)
        while pending:  # a saved group may nest groups: their members, in order
            item = pending.pop(0)
            if isinstance(item, GroupResult):
                pending[:0] = list(item.results)
            else:
                ids.append(str(item.id))
        stored = self.app.backend.get_many(ids[:GROUP_MEMBERS])
        members = []
        for member in ids[:GROUP_MEMBERS]:
            try:
                kid = TaskRecord.from_stored(stored[member]) if member in stored else None
            except Exception:
                kid = None
            members.append({"id": member, "task": kid.task if kid else None,
                            "state": kid.state if kid else "PENDING"})
        body = None
        if kind == "chord":
            chord = tree(self.app, group_id).get("chord") or {}
            if chord.get("body"):
                body = {"id": chord["body"], "task": chord.get("body_task"),
                        "state": chord.get("body_state") or "PENDING"}
        parent = getattr(found.parent, "id", None)
        done = sum(m["state"] in READY_STATES for m in members)
        return {"id": group_id, "kind": kind, "size": len(ids), "done": done,
                "members": members, "body": body,
                "parent": str(parent) if parent else None}

    def workflow(self, record: TaskRecord) -> list[dict[str, Any]]:
        """The task's workflow as nodes (id, task, state, role): its parents up the chain
        (a chord's header among them as one ``group`` node), the task itself, the other
        members of its group (exactly, for a chord's header or a saved group; else found
        among the latest 200 records of its task name), what it started (``children``: the
        next step, callbacks; a group as one node) and a chord's body."""
        nodes: list[dict[str, Any]] = []
        chain: list[dict[str, Any]] = []
        parent = record.parent
        seen = {record.task_id}
        while parent and parent not in seen and len(chain) < 20:
            seen.add(parent)
            found = self.app.record(parent)
            if found is not None:
                chain.append({"id": found.task_id, "task": found.task, "state": found.state,
                              "role": "parent"})
                parent = found.parent
                continue
            group = self.group(parent)
            if group is None:
                chain.append({"id": parent, "task": None, "state": "UNKNOWN",
                              "role": "parent"})
                break
            chain.append(_group_node(group, "parent"))
            parent = group["parent"]
        nodes += reversed(chain)
        nodes.append({"id": record.task_id, "task": record.task, "state": record.state,
                      "role": "self"})
        own = self.group(record.group) if record.group else None
        if own is not None:
            nodes += [{**m, "role": "sibling"} for m in own["members"]
                      if m["id"] != record.task_id]
        elif record.group and self.can_query:
            # A plain group keeps no list of its members: its members share its id, and a
            # scan of recent records of the same task name finds them cheaply enough.
            page = self.app.backend.query(RecordQuery(name=record.task, limit=200))
            for stored in page.records:
                if stored.task_id == record.task_id:
                    continue
                try:
                    other = TaskRecord.from_stored(stored)
                except Exception:
                    continue
                if other.group == record.group:
                    nodes.append({"id": other.task_id, "task": other.task,
                                  "state": other.state, "role": "sibling"})
        # What it started: its chain's next step (a group's id for a group), its callbacks.
        children = [c for c in getattr(record, "children", None) or [] if isinstance(c, str)]
        found_children = self.app.backend.get_many(children[:50]) if children else {}
        for child in children[:50]:
            held = found_children.get(child)
            try:
                kid = TaskRecord.from_stored(held) if held is not None else None
            except Exception:
                kid = None
            group = self.group(child) if kid is None else None
            if group is not None:
                nodes.append(_group_node(group, "child"))
                continue
            nodes.append({"id": child, "task": kid.task if kid else None,
                          "state": kid.state if kid else "UNKNOWN", "role": "child"})
        if own is not None and own["body"] is not None:
            nodes.append({**own["body"], "role": "body"})
        if len(nodes) == 1:
            return []
        return nodes

    # -- dead letters -----------------------------------------------------------------------
    def dead_letters(self, queue: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """The oldest ``limit`` dead letters of ``queue``, decoded where possible."""
        from conveyor.dlq import view

        rows = []
        for letter in self.app.broker.dead_letters(queue, limit=limit):
            v = view(self.app, letter)
            rows.append({"queue": letter.queue, "message_id": letter.message_id,
                         "reason": letter.reason, "dead_at": letter.dead_at,
                         "task_id": v.task_id, "task": v.task, "args": v.args,
                         "kwargs": v.kwargs, "retries": v.retries,
                         "decode_error": v.decode_error,
                         "body": None if v.task_id else letter.body.decode("utf-8", "replace")})
        if self.redact is not None:
            rows = [self.redact(r) for r in rows]
        return rows

    def dead_letter_of(self, task_id: str, queue: str | None) -> dict[str, Any] | None:
        """The dead letter holding ``task_id`` (among its queue's first thousand), if any."""
        if not queue:
            return None
        for row in self.dead_letters(queue, limit=1000):
            if row["task_id"] == task_id:
                return row
        return None

    # -- flow -------------------------------------------------------------------------------
    def state_counts(self) -> dict[str, int]:
        """Records per state written in the last hour, each capped at ``STATE_COUNT_CAP``;
        read at most every ``STATE_COUNT_EVERY`` seconds (six queries: cheap where indexed,
        a listing on S3 without ``query_index=1``)."""
        if not self.can_query:
            return {}
        with self._lock:
            cached = self._state_counts
        if cached is not None and time.monotonic() - cached[0] < STATE_COUNT_EVERY:
            return cached[1]
        counts = self._count_states()
        with self._lock:
            self._state_counts = (time.monotonic(), counts)
        return counts

    def _count_states(self) -> dict[str, int]:
        since = time.time() - HISTORY_SECONDS
        counts: dict[str, int] = {}
        for state in STATES:
            seen, cursor = 0, None
            while seen < STATE_COUNT_CAP:
                page = self.app.backend.query(RecordQuery(
                    state=state, since=since, cursor=cursor,
                    limit=min(500, STATE_COUNT_CAP - seen)))
                seen += len(page.records)
                cursor = page.cursor
                if cursor is None:
                    break
            counts[str(state)] = seen
        return counts

    def sample(self) -> Sample:
        """Read the system once and keep the sample."""
        workers = self.live_workers()
        sample = Sample(
            at=time.time(), queues=self.queues(),
            processed=sum(registry_count(w.get("processed")) for w in workers.values()),
            failed=sum(registry_count(w.get("failed")) for w in workers.values()),
            busy=sum(registry_count(w.get("active")) for w in workers.values()),
            threads=sum(registry_count(w.get("concurrency")) for w in workers.values()),
            workers=len(workers), states=self.state_counts())
        with self._lock:
            self.samples.append(sample)
        minute = int(sample.at // 60)
        if self.has_registry and minute != self._depth_minute:
            # One entry a minute: a restarted dashboard draws the depths of the last hour.
            self._depth_minute = minute
            save_depth(self.app.backend, sample.at, _depths(sample))
        return sample

    def flow(self) -> dict[str, Any]:
        """The live flow: the latest sample with rates per second against the one before."""
        with self._lock:
            recent = list(self.samples)[-2:]
        if not recent:
            recent = [self.sample()]
        now = recent[-1]
        before = recent[0] if len(recent) == 2 else None
        span = (now.at - before.at) if before is not None else 0.0

        def rate(after: float, earlier: float) -> float:
            return round(max(after - earlier, 0) / span, 2) if span > 0 else 0.0

        queues = {}
        for name, q in now.queues.items():
            old = before.queues.get(name) if before is not None else None
            queues[name] = {**q, "depth_rate": round((q["ready"] - old["ready"]) / span, 2)
                            if old is not None and span > 0 else 0.0}
        done_rate = rate(now.processed, before.processed) if before else 0.0
        depth_now = sum(q["ready"] + q["delayed"] + q["in_flight"] for q in now.queues.values())
        depth_before = (sum(q["ready"] + q["delayed"] + q["in_flight"]
                            for q in before.queues.values()) if before else depth_now)
        # Arrivals: what the workers took plus what the queues grew by.
        arrivals = (round(max(done_rate + (depth_now - depth_before) / span, 0.0), 2)
                    if before is not None and span > 0 else 0.0)
        return {
            "at": now.at, "queues": queues, "rates": {
                "enqueued": arrivals, "processed": done_rate,
                "failed": rate(now.failed, before.failed) if before else 0.0},
            "workers": {"alive": now.workers, "busy": now.busy,
                        "idle": max(now.threads - now.busy, 0), "threads": now.threads},
            "states": now.states, "can_query": self.can_query,
            "backend": self.app.backend.url.masked, "broker": self.app.broker.url.masked}

    def history(self, queue: str | None = None) -> dict[str, Any]:
        """The last hour, of every queue or of ``queue`` only. ``series``: per minute, tasks
        succeeded, failed and retried with run-time and wait-time percentiles, rebuilt from
        the backend's records (see :mod:`~conveyor.contrib.dashboard.history`); without
        ``query``, succeeded and failed from the workers' counters since this dashboard
        started (of every queue: with ``queue`` the series is then empty). ``depth``: queue
        depth (ready + delayed), at most about 300 points: the minutes kept in the backend
        by earlier runs, then this run's samples."""
        now = time.time()
        with self._lock:
            samples = list(self.samples)
        history = self.backend_history if queue is None else self.queue_history(queue)
        if history is not None:
            # The sampler thread reads the backend (every queue's hour); without it, or for
            # one queue, this request does.
            rebuilt = history.series(now, update=self._thread is None or queue is not None)
            series = [{"minute": r["minute"], "succeeded": r["succeeded"],
                       "failed": r["failed"], "retried": r["retried"],
                       "estimated": r["estimated"], "runtime": r["runtime"],
                       "wait": r["wait"]} for r in rebuilt["minutes"]]
            runtime, wait = rebuilt["runtime"], rebuilt["wait"]
            start = (int(now // 60) - len(series) + 1) * 60.0
        else:
            series = self._counted_series(samples) if queue is None else []
            runtime = wait = {"p50": None, "p90": None, "p99": None}
            start = samples[0].at if samples else now
        depth = self._saved_depths(now, samples[0].at if samples else float("inf"))
        step = max(1, len(samples) // 300)
        depth += [{"at": x.at, "depth": _depths(x)} for x in samples[::step]]
        if samples and (not depth or depth[-1]["at"] != samples[-1].at):
            depth.append({"at": samples[-1].at, "depth": _depths(samples[-1])})
        if queue is not None:
            depth = [{"at": p["at"], "depth": {queue: p["depth"][queue]}}
                     for p in depth if queue in p["depth"]]
        if depth:
            start = min(start, depth[0]["at"])
        return {"series": series, "depth": depth, "start": start, "end": now,
                "runtime": runtime, "wait": wait, "rebuilt": history is not None,
                "queue": queue}

    def queue_history(self, queue: str) -> BackendHistory | None:
        """The hour of one queue (None when the backend cannot query), kept for the next
        request: the minutes read stay read (at most ``QUEUE_HISTORIES`` queues kept)."""
        if not self.can_query:
            return None
        with self._lock:
            found = self.queue_histories.get(queue)
            if found is None:
                found = self.queue_histories[queue] = BackendHistory(self.app.backend,
                                                                     queue=queue)
            self.queue_histories.move_to_end(queue)
            while len(self.queue_histories) > QUEUE_HISTORIES:
                self.queue_histories.popitem(last=False)
            return found

    def _saved_depths(self, now: float, before: float) -> list[dict[str, Any]]:
        """Depth points an earlier run kept in the backend, in the hour before ``before``."""
        if not self.has_registry:
            return []
        if self._saved_depth is None:
            try:
                self._saved_depth = load_depth(self.app.backend, now - HISTORY_SECONDS)
            except Exception:
                return []
        return [p for p in self._saved_depth
                if now - HISTORY_SECONDS <= p["at"] < before - 1.0]

    @staticmethod
    def _counted_series(samples: list[Sample]) -> list[dict[str, Any]]:
        """Succeeded/failed per minute from the workers' counters in this run's samples."""
        minutes: dict[int, list[Sample]] = {}
        for s in samples:
            minutes.setdefault(int(s.at // 60), []).append(s)
        series = []
        previous: Sample | None = None
        for minute in sorted(minutes):
            group = minutes[minute]
            first = previous or group[0]
            last = group[-1]
            done = max(last.processed - first.processed, 0)
            failed = max(last.failed - first.failed, 0)
            series.append({"minute": minute * 60, "succeeded": max(done - failed, 0),
                           "failed": failed, "retried": None, "estimated": False,
                           "runtime": None, "wait": None})
            previous = last
        return series

    # -- sampler ----------------------------------------------------------------------------
    def start(self) -> None:
        """Sample every ``SAMPLE_EVERY`` seconds in a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            return

        def run() -> None:
            while not self._stop.is_set():
                # A server outage: keep sampling; the page shows the last good numbers.
                with contextlib.suppress(Exception):
                    self.sample()
                if self.backend_history is not None:
                    # Off the request path: a page then finds the hour already read.
                    with contextlib.suppress(Exception):
                        self.backend_history.update()
                self._stop.wait(SAMPLE_EVERY)

        self._thread = threading.Thread(target=run, name="conveyor-dashboard-sampler",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the sampler. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def registry_count(value: Any) -> int:
    """A registry entry's count (a number, or a list's length); 0 for anything else: an
    entry written by another version, or garbled, must not break a page."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, (int, float)):
        return int(value)
    return len(value) if isinstance(value, list) else 0


def _group_node(group: dict[str, Any], role: str) -> dict[str, Any]:
    """A group (or a chord's header) as one workflow node."""
    label = "chord header" if group["kind"] == "chord" else "group"
    return {"id": group["id"], "task": f"{label} of {group['size']}",
            "state": f"{group['done']} of {group['size']} done", "role": role,
            "group": True}


def _depths(sample: Sample) -> dict[str, int]:
    return {name: q["ready"] + q["delayed"] for name, q in sample.queues.items()}


def _attempt(attempt: dict[str, Any]) -> dict[str, Any]:
    keys = ("number", "worker", "started_at", "finished_at", "outcome", "error_type",
            "error_message")
    return {k: attempt.get(k) for k in keys}
