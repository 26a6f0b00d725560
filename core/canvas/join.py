"""Chord joins and failures passed down a workflow: what happens after a node finishes.

Each header member, once its outcome is stored, writes its value beside the chord
(``chord-value:<group id>:<member>``) and adds itself to the chord's set
(``ResultBackend.join``); the caller that completes the set reads all values in one
``entries`` call and starts the body, or, when a member failed, fails the chord: its body's
ids record a ChordError naming the failed task and the body's errbacks are sent. Every step
is idempotent (deterministic ids, set joins), so a re-issue after a crash changes nothing.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from conveyor.canvas.engine import (
    CHORD_ENTRY,
    CHORD_ERROR,
    CHORD_JOIN,
    CHORD_VALUE,
    NO_VALUE,
    Launcher,
    errback_node,
    leaves,
    result_id,
)
from conveyor.record import TaskRecord
from conveyor.states import FAILURE, SUCCESS

if TYPE_CHECKING:
    from conveyor.app import Conveyor

log = logging.getLogger("conveyor.canvas")


class Follower:
    """What happens after a workflow node finishes: chord joins, body starts, failures
    passed down the workflow. Every step is idempotent (deterministic ids, set joins)."""

    def __init__(self, app: Conveyor, launcher: Launcher,
                 reliably: Callable[[Callable[[], Any]], Any]) -> None:
        self.app = app
        self.launcher = launcher
        self.reliably = reliably
        self.ttl = app.conf.result_expires

    # -- success ----------------------------------------------------------------------------
    def member_done(self, membership: dict[str, Any], member: str,
                    value: Any = NO_VALUE) -> None:
        """``member`` (a header's result id, its outcome already stored) joins the chord
        with ``value`` (none when it failed); the caller that completes the set starts the
        body (or fails the chord)."""
        pending: list[tuple[dict[str, Any], str, Any]] = [(membership, member, value)]
        backend = self.app.backend
        while pending:
            joining, who, given = pending.pop()
            gid, n = str(joining["id"]), int(joining["n"])
            if given is not NO_VALUE:
                kind_, packed = self.app.result_codec.pack(given)
                self.reliably(functools.partial(
                    backend.put_entry, f"{CHORD_VALUE}{gid}:{who}",
                    json.dumps([kind_, packed]).encode(), ttl=self.ttl))
            count = self.reliably(functools.partial(backend.join, CHORD_JOIN + gid, who,
                                                    ttl=self.ttl))
            if count < n:
                continue
            entry = self._entry(gid)
            if entry is None:
                log.error("chord %s complete but its entry is gone (expired?): body not "
                          "started", gid)
                continue
            nxt = self._complete(gid, entry)
            if nxt is not None:
                pending.append(nxt)

    def _complete(self, gid: str, entry: dict[str, Any]) -> tuple[dict[str, Any], str, Any] | None:
        """The set is complete: run the body with the values, or fail the chord."""
        backend, codec = self.app.backend, self.app.result_codec
        ids = list(entry["ids"])
        prefix = f"{CHORD_VALUE}{gid}:"
        found = self.reliably(functools.partial(backend.entries, prefix))
        if all(prefix + i in found for i in ids):
            values = []
            for i in ids:
                kind_, packed = json.loads(found[prefix + i])
                values.append(codec.unpack(kind_, packed))
            return self._body(gid, entry, values)
        # Some member has no value: find the (first) failed one from the records.
        stored = self.reliably(functools.partial(backend.get_many, ids))
        failed = next((i for i in ids if prefix + i not in found and (
            i not in stored or stored[i].state != SUCCESS)), None)
        if failed is None:  # every value is recorded after all (written since): go on
            values = [codec.unpack(*json.loads(found[prefix + i])) if prefix + i in found
                      else TaskRecord.from_stored(stored[i]).value(codec) for i in ids]
            return self._body(gid, entry, values)
        record = TaskRecord.from_stored(stored[failed]) if failed in stored else None
        return self.chord_failed(gid, entry, failed, record)

    def _entry(self, gid: str) -> dict[str, Any] | None:
        found = self.reliably(lambda: self.app.backend.entries(CHORD_ENTRY + gid))
        raw = found.get(CHORD_ENTRY + gid)
        return json.loads(raw) if raw is not None else None

    def _body(self, gid: str, entry: dict[str, Any],
              values: list[Any]) -> tuple[dict[str, Any], str, Any] | None:
        body = entry.get("body")
        if body is not None:
            self.launcher.launch(body, input=(values,), parent=gid, rest=entry.get("rest"),
                                 membership=entry.get("chord"))
            return None
        return self.group_done(gid, values, entry.get("rest") or [], entry.get("chord"),
                               deferred=True)

    def group_done(self, gid: str, values: list[Any], after: list[dict[str, Any]],
                   member_of: dict[str, Any] | None, *,
                   deferred: bool = False) -> tuple[dict[str, Any], str, Any] | None:
        """A group inside a workflow finished: record its list under its id, then go on."""
        kind_, packed = self.app.result_codec.pack(values)
        now = time.time()
        record = TaskRecord(gid, SUCCESS, task="conveyor.group", result=packed,
                            result_type=kind_, date_done=now, updated_at=now)
        self._store([record])
        if after:
            self.launcher.launch(after[0], input=(values,), parent=gid, rest=after[1:],
                                 membership=member_of)
            return None
        if member_of is None:
            return None
        if deferred:
            return member_of, gid, values
        self.member_done(member_of, gid, values)
        return None

    # -- failure ----------------------------------------------------------------------------
    def failed(self, error: tuple[str, str], origin: str, after: list[dict[str, Any]],
               membership: dict[str, Any] | None) -> None:
        """Task ``origin`` failed with ``error`` (type, message): the rest of its chain is
        recorded as failed with the same error, then its chord (if any) is joined."""
        self._fail_nodes(after, error, origin)
        if membership is not None:
            member = result_id(after[-1]) if after else origin
            self.member_done(membership, member)

    def chord_failed(self, gid: str, entry: dict[str, Any], failed: str,
                     record: TaskRecord | None) -> tuple[dict[str, Any], str, Any] | None:
        """A header member failed: the body does not run; its ids and the rest record a
        ChordError naming the failed task; the body's errbacks are called."""
        if record is None:
            why = f"chord {gid}: the result of header task {failed} is missing (expired?)"
        else:
            why = (f"chord {gid}: header task {record.task or '?'}[{failed}] failed: "
                   f"{record.error_type or 'error'}: {record.error_message or record.state}")
        error = (CHORD_ERROR, why)
        body = entry.get("body")
        after = list(entry.get("rest") or [])
        if body is not None:
            self._fail_nodes([body], error, gid)  # the body's parent is its header, as on success
            self._errbacks(body, error, failed)
            joined_as = result_id(after[-1]) if after else result_id(body)
        else:
            now = time.time()
            self._store([TaskRecord(gid, FAILURE, task="conveyor.group", error_type=error[0],
                                    error_message=error[1], date_done=now, updated_at=now)])
            joined_as = result_id(after[-1]) if after else gid
        self._fail_nodes(after, error, failed)
        membership = entry.get("chord")
        return (membership, joined_as, NO_VALUE) if membership is not None else None

    def _fail_nodes(self, nodes: list[dict[str, Any]], error: tuple[str, str],
                    origin: str) -> None:
        now = time.time()
        records = [TaskRecord(str(n["options"]["task_id"]), FAILURE, task=n["task"],
                              queue=n["options"].get("queue"), parent=origin,
                              error_type=error[0], error_message=error[1], date_done=now,
                              updated_at=now)
                   for node in nodes for n in leaves(node)]
        self._store(records)

    def _errbacks(self, body: dict[str, Any], error: tuple[str, str], failed: str) -> None:
        seen: set[str] = set()
        body_id = result_id(body)
        for n in leaves(body):
            for errback in (n.get("options") or {}).get("link_error") or ():
                key = json.dumps(errback, sort_keys=True)
                if key in seen:
                    continue
                seen.add(key)
                request = {"id": body_id, "task": n["task"], "args": [], "kwargs": {},
                           "root_id": self.launcher.root, "group_id": None,
                           "parent_id": failed}
                self.launcher.launch(errback_node(self.app, errback, request, error, None),
                                     input=None, parent=body_id)

    def _store(self, records: list[TaskRecord]) -> None:
        if not records:
            return
        stored = [r.to_stored() for r in records]
        self.reliably(lambda: self.app.backend.store_many(stored, ttl=self.ttl))
