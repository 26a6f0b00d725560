"""What the worker calls around a task of a workflow: the canvas's whole worker surface.

- :func:`after_success` / :func:`after_failure`: the follow-up messages of a finished task
  (next chain step, callbacks, errbacks, a chord's body), after its outcome is stored;
- :func:`joins_chord`: whether finishing joins a chord (its outcome must then be stored
  before the follow-ups are computed, since the chord's completer reads it);
- :func:`reissue`: the same follow-ups again for a duplicate delivery of a finished task, so
  a worker that died between storing an outcome and sending its follow-ups loses nothing;
- :func:`request_fields` / :func:`call_arguments`: what a running task sees.

Follow-ups carry deterministic ids, so sending one twice runs it once.
"""

from __future__ import annotations

import traceback as tb_module
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from conveyor.backend import StoredRecord
from conveyor.canvas.engine import ERRBACK, Launcher, errback_node, result_id
from conveyor.canvas.join import Follower
from conveyor.exceptions import describe
from conveyor.record import TaskRecord
from conveyor.states import SUCCESS

if TYPE_CHECKING:
    from conveyor.app import Conveyor, Outgoing
    from conveyor.message import Message

Reliably = Callable[[Callable[[], Any]], Any]


def _canvas(msg: Message) -> dict[str, Any]:
    return getattr(msg, "canvas", None) or {}


def root_id(msg: Message) -> str:
    """The id of the first task of the workflow ``msg`` belongs to (its own when alone)."""
    return str(_canvas(msg).get("root") or msg.id)


def is_plain(msg: Message) -> bool:
    """True when the task has nothing to follow up (no chain, chord, callback)."""
    return not msg.callbacks and not _canvas(msg)


def joins_chord(msg: Message) -> bool:
    """True when finishing ``msg`` joins a chord: store its outcome before following up."""
    return bool(_canvas(msg).get("chord")) and not msg.callbacks


def after_success(app: Conveyor, msg: Message, value: Any, reliably: Reliably) -> list[Outgoing]:
    """Follow-ups of a success whose record is stored (or about to be, unless
    :func:`joins_chord`): callbacks, the next chain step, or the chord join."""
    if is_plain(msg):
        return []
    canvas = _canvas(msg)
    launcher = Launcher(app, root=root_id(msg))
    for link in canvas.get("link") or ():
        launcher.launch(_derived(link, msg.id), input=(value,), parent=msg.id)
    follower = Follower(app, launcher, reliably)
    if msg.callbacks:
        nxt, *rest = msg.callbacks
        launcher.launch(dict(nxt), input=(value,), parent=msg.id, rest=rest,
                        membership=canvas.get("chord"))
    elif canvas.get("chord"):
        follower.member_done(canvas["chord"], msg.id, value)
    return launcher.finish(reliably)


def after_failure(app: Conveyor, msg: Message, error: tuple[str, str], traceback: str | None,
                  reliably: Reliably, *, args: Any = None,
                  kwargs: Any = None) -> list[Outgoing]:
    """Follow-ups of a failure whose record is stored: the rest of the chain is recorded as
    failed with the task's own error (so ``get()`` on the chain raises it), errbacks are
    sent, and a chord the task belongs to is joined (its completer fails the chord)."""
    if is_plain(msg):
        return []
    canvas = _canvas(msg)
    launcher = Launcher(app, root=root_id(msg))
    request = {"id": msg.id, "task": msg.task, "args": list(args or ()),
               "kwargs": dict(kwargs or {}), "root_id": root_id(msg), "parent_id": msg.parent,
               "group_id": msg.group}
    for errback in canvas.get("link_error") or ():
        launcher.launch(errback_node(app, errback, request, error, traceback), input=None,
                        parent=msg.id)
    Follower(app, launcher, reliably).failed(error, msg.id, list(msg.callbacks),
                                             canvas.get("chord"))
    return launcher.finish(reliably)


def reissue(app: Conveyor, msg: Message, record: StoredRecord | None,
            reliably: Reliably) -> list[Outgoing]:
    """The follow-ups of ``msg`` again, from its terminal ``record`` (a duplicate delivery:
    its first delivery may have died before sending them). Idempotent."""
    if is_plain(msg) or record is None or not record.ready:
        return []
    rec = TaskRecord.from_stored(record)
    if rec.state == SUCCESS:
        return after_success(app, msg, rec.value(app.result_codec), reliably)
    error = (rec.error_type or "conveyor.exceptions.TaskError",
             rec.error_message or f"task {msg.id} ended {rec.state}")
    return after_failure(app, msg, error, rec.traceback, reliably)


def replaced(app: Conveyor, msg: Message, sig: Any, reliably: Reliably, *,
             queue: str | None = None) -> list[Outgoing]:
    """The messages of ``self.replace(sig)``: ``sig`` runs under the replaced task's id
    (its result becomes the task's) and inherits what was to follow the task; its tasks
    default to ``queue`` (the replaced task's)."""
    from conveyor.canvas.engine import freeze, leaves, push_down
    from conveyor.canvas.signature import Signature

    if not isinstance(sig, Signature):
        raise TypeError(f"replace() needs a signature, got {type(sig).__name__}")
    sig = sig.clone().bind(app)
    push_down(sig, queue or app.conf.task_default_queue)
    freeze(sig, msg.id)
    node = sig.to_dict()
    canvas = _canvas(msg)
    last = list(leaves(node))[-1] if node.get("subtask_type") != "group" else None
    if last is not None and last["options"]["task_id"] == msg.id:
        for name in ("link", "link_error"):
            if canvas.get(name):
                last["options"][name] = [*last["options"].get(name, ()), *canvas[name]]
    launcher = Launcher(app, root=root_id(msg))
    launcher.launch(node, input=None, parent=msg.parent, rest=list(msg.callbacks),
                    membership=canvas.get("chord"), record_group=True)
    return launcher.finish(reliably)


def children_of(msg: Message) -> list[str]:
    """Ids of what finishing ``msg`` successfully starts: the next step's handle (a task's
    id, a group's or chord header's group id) and each callback's."""
    from conveyor.canvas.engine import children, derived_id, kind

    out = []
    if msg.callbacks:
        node = dict(msg.callbacks[0])
        while kind(node) == "chain" and children(node):
            node = children(node)[0]
        if kind(node) == "chord":
            node = children(node)[0]
        key = "group_id" if kind(node) == "group" else "task_id"
        out.append(str((node.get("options") or {}).get(key)))
    for link in _canvas(msg).get("link") or ():
        if kind(link) is None:
            out.append(derived_id(str(link["options"].get("task_id") or ""), msg.id))
    return out


def reopen(app: Conveyor, msg: Message) -> int:
    """Before a dead-lettered workflow task is replayed: forget the FAILURE records its
    failure wrote for the rest of its chain (only those: no attempt, parent ``msg.id``),
    so the steps after it run when it succeeds. A chord it belonged to stays failed (its
    join cannot be undone). Returns how many records were forgotten."""
    from conveyor.canvas.engine import leaves

    ids = [str(n["options"]["task_id"]) for node in msg.callbacks for n in leaves(dict(node))]
    forgotten = 0
    for task_id, stored in app.backend.get_many(ids).items():
        rec = TaskRecord.from_stored(stored)
        if rec.state == "FAILURE" and rec.parent == msg.id and not rec.attempts:
            app.backend.forget(task_id)
            forgotten += 1
    return forgotten


def error_of(exc: BaseException) -> tuple[str, str]:
    """``(type, message)`` of an exception as records keep them."""
    info = describe(exc)
    return str(info["type"]), str(info["message"])


def format_traceback(exc: BaseException) -> str:
    """The traceback text of ``exc``."""
    return "".join(tb_module.format_exception(exc))


def request_fields(msg: Message) -> dict[str, Any]:
    """The workflow fields of ``self.request``: root_id, parent_id, group_id, chord (the
    chord ``{"id", "n"}`` the task joins, else None), callbacks, errbacks."""
    canvas = _canvas(msg)
    return {"root_id": root_id(msg), "parent_id": msg.parent, "group_id": msg.group,
            "chord": canvas.get("chord"), "callbacks": list(canvas.get("link") or ()),
            "errbacks": list(canvas.get("link_error") or ()),
            "chain": list(msg.callbacks)}


def call_arguments(msg: Message, args: list[Any]) -> list[Any]:
    """The arguments to call the task with: a new-style errback's ``(request, exc,
    traceback)`` rebuilt from their JSON form, else ``args`` unchanged."""
    if not _canvas(msg).get(ERRBACK) or len(args) < 3 or not isinstance(args[0], dict):
        return args
    request = SimpleNamespace(**args[0])
    error = args[1] if isinstance(args[1], dict) else {}
    exc = TaskRecord("", "FAILURE", error_type=error.get("type"),
                     error_message=error.get("message")).exception()
    return [request, exc, *args[2:]]


def _derived(node: dict[str, Any], salt: str) -> dict[str, Any]:
    """A callback's node with an id of its own per parent (one callback linked to several
    tasks runs once for each), stable across re-issues."""
    from conveyor.canvas.engine import derived_id, kind

    if kind(node) is not None:
        return node
    options = dict(node.get("options") or {})
    options["task_id"] = derived_id(str(options.get("task_id") or ""), salt)
    return {**node, "options": options}


__all__ = ["after_failure", "after_success", "call_arguments", "error_of", "joins_chord",
           "reissue", "replaced", "request_fields", "result_id", "root_id"]
