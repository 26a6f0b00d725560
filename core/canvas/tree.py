"""A task's place in its workflow, as ``conveyor result ID`` shows it: the chain of parents
above it, and the chord it belongs to (n of m header tasks done, the body and its state),
read from the records and the chord's entry in the backend."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from conveyor.canvas.engine import CHORD_ENTRY, result_id
from conveyor.states import READY_STATES, SUCCESS

if TYPE_CHECKING:
    from conveyor.app import Conveyor

#: Most parents walked up (a long chain's history stays short on screen).
MAX_PARENTS = 50


def workflow(app: Conveyor, task_id: str) -> dict[str, Any]:
    """``{"parents": [...], "chord": {...} | None}`` for ``task_id``: parents nearest first
    (id, task, state), and the chord whose header holds it or that the id names."""
    backend = app.backend
    parents: list[dict[str, Any]] = []
    record = app.record(task_id)
    seen = {task_id}
    current = record
    pid = current.parent if current is not None else None
    while pid and pid not in seen and len(parents) < MAX_PARENTS:
        seen.add(pid)
        current = app.record(pid)
        if current is not None:
            parents.append({"id": pid, "task": current.task, "state": current.state})
            pid = current.parent
            continue
        # A chord's header group has no record of its own: its entry says where it came from.
        header = _chord(app, pid) if backend.capabilities.coordination else None
        if header is None:
            parents.append({"id": pid, "task": None, "state": "unknown"})
            break
        parents.append({"id": pid, "task": "chord header",
                        "state": f"{header['done']} of {header['size']} done"})
        pid = header.get("parent")
    chord = None
    if backend.capabilities.coordination:
        # A header member names its chord as its group; a body has it as its parent.
        candidates = (record.group, task_id, record.parent) if record else (task_id,)
        for gid in (g for g in candidates if g):
            chord = _chord(app, gid)
            if chord is not None:
                break
    kids = []
    for child in (record.children if record else [])[:MAX_PARENTS]:
        found = app.record(child)
        header = _chord(app, child) if found is None and backend.capabilities.coordination \
            else None
        kids.append({"id": child, "task": found.task if found else (
            "chord header" if header else None), "state": found.state if found else (
            f"{header['done']} of {header['size']} done" if header else "PENDING")})
    return {"parents": parents, "chord": chord, "children": kids}


def _chord(app: Conveyor, gid: str) -> dict[str, Any] | None:
    raw = app.backend.entries(CHORD_ENTRY + gid).get(CHORD_ENTRY + gid)
    if raw is None:
        return None
    entry = json.loads(raw)
    ids = list(entry["ids"])
    stored = app.backend.get_many(ids)
    states = [stored[i].state if i in stored else "PENDING" for i in ids]
    body = entry.get("body")
    body_id = result_id(body) if body is not None else None
    body_record = app.record(body_id) if body_id else None
    failed = [i for i, s in zip(ids, states, strict=True) if s in READY_STATES and s != SUCCESS]
    return {"id": gid, "parent": entry.get("parent"), "size": len(ids),
            "done": sum(s in READY_STATES for s in states),
            "failed": failed[:10], "body": body_id,
            "body_task": body.get("task") if body else None,
            "body_state": body_record.state if body_record else ("PENDING" if body else None)}


def render(tree: dict[str, Any]) -> list[str]:
    """Plain lines describing ``tree`` (callers escape them for the terminal)."""
    lines = []
    for depth, p in enumerate(tree["parents"], start=1):
        lines.append(f"{'  ' * (depth - 1)}parent: {p['id']} {p['task'] or '?'} {p['state']}")
    for c in tree.get("children") or ():
        lines.append(f"child: {c['id']} {c['task'] or '?'} {c['state']}")
    chord = tree.get("chord")
    if chord:
        lines.append(f"chord {chord['id']}: {chord['done']} of {chord['size']} header tasks "
                     f"done" + (f", {len(chord['failed'])} failed" if chord["failed"] else ""))
        for failed in chord["failed"]:
            lines.append(f"  failed: {failed}")
        if chord["body"]:
            lines.append(f"  body: {chord['body']} {chord['body_task']} {chord['body_state']}")
        else:
            lines.append("  no body: the group's list goes on to the rest of the workflow")
    return lines

