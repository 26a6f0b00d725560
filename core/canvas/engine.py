"""How a workflow runs: the one place that turns signatures into messages and chord state.

Every node of a workflow is given its ids before anything is sent (:func:`freeze`), so any
step can be re-issued after a crash under the same ids, and the duplicate is recognised.
What a message must do after its task finishes is its *continuation*, carried in the message:

- ``callbacks``: the rest of the chain, as signature dicts (the first gets the result);
- ``canvas["chord"]``: ``{"id": group_id, "n": size}``: when the chain is done, join that
  chord's set in the result backend; whoever completes the set starts the body;
- ``canvas["link"]`` / ``canvas["link_error"]``: callbacks and errbacks of this task.

A group with a continuation runs as a chord (its body the next step, or none: then the list
of results is recorded under the group id and passed on). A chord keeps its header's result
ids and its body in one backend entry, ``chord:<group id>``, so header messages stay small
whatever the header's size. Walks are iterative: deep chains and wide headers need no
recursion.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor.canvas.signature import LINK_OPTIONS, Signature
from conveyor.canvas.workflows import chain, chord, group
from conveyor.exceptions import ConveyorError, TaskOptionError
from conveyor.ids import new_id
from conveyor.record import TaskRecord

if TYPE_CHECKING:
    from conveyor.app import Conveyor, Outgoing
    from conveyor.result import AsyncResult, GroupResult
    from conveyor.task import Task

log = logging.getLogger("conveyor.canvas")

#: Prefixes of the chord keys in the backend's coordination area.
CHORD_ENTRY = "chord:"
CHORD_JOIN = "chord-join:"
#: ``chord-value:<group id>:<member>``: a header member's value, so the completer reads all
#: of them in one ``entries`` call (its record is kept too, for its own AsyncResult).
CHORD_VALUE = "chord-value:"
#: ``member_done`` without a value: the member failed.
NO_VALUE: Any = object()
#: Options that say where a node sits in a workflow, never sent as message options.
STRUCTURE_OPTIONS = ("task_id", "group_id", "link", "link_error", "chord", "root_id",
                     "parent_id")
ERRBACK = "errback"
CHORD_ERROR = "conveyor.exceptions.ChordError"


# -- walking signature dicts ------------------------------------------------------------------
def kind(node: dict[str, Any]) -> str | None:
    """``"chain"``, ``"group"``, ``"chord"`` or None (a task)."""
    return node.get("subtask_type")


def children(node: dict[str, Any]) -> list[dict[str, Any]]:
    """Direct members of a workflow node (header before body for a chord)."""
    k, kwargs = kind(node), node.get("kwargs") or {}
    if k in ("chain", "group"):
        return list(kwargs.get("tasks") or ())
    if k == "chord":
        return [kwargs["header"], kwargs["body"]]
    return []


def result_id(node: dict[str, Any]) -> str:
    """The id under which the node's final value is recorded: a task's id, a chain's last
    node's, a chord's body's, a group's own id (its list is recorded there when it runs
    inside a workflow)."""
    while True:
        k = kind(node)
        if k == "chain":
            tasks = children(node)
            if not tasks:
                raise TaskOptionError("an empty chain has no result")
            node = tasks[-1]
        elif k == "chord":
            node = children(node)[1]
        elif k == "group":
            return str(node["options"]["group_id"])
        else:
            return str(node["options"]["task_id"])


def leaves(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every task of the node, depth first, in order (links not included)."""
    stack = [node]
    while stack:
        n = stack.pop()
        if kind(n) is None:
            yield n
        else:
            stack.extend(reversed(children(n)))


def first_task_id(node: dict[str, Any]) -> str | None:
    """The id of the task that runs first (a workflow's root id)."""
    return next((str(n["options"]["task_id"]) for n in leaves(node)), None)


# -- before sending ---------------------------------------------------------------------------
def freeze(sig: Signature, _id: str | None = None) -> None:
    """Give every node of ``sig`` its ids, keeping ids already set; ``_id`` becomes the id
    of the node's result (a task's or group's own id, a chain's last, a chord's body's)."""
    stack: list[tuple[Signature, str | None]] = [(sig, _id)]
    while stack:
        s, want = stack.pop()
        if isinstance(s, chain | chord) and want is None:
            # chain(...).apply_async(task_id=...) names its result, as in Celery.
            want = s.options.pop("task_id", None)
        for name in LINK_OPTIONS:
            stack.extend((link, None) for link in s.options.get(name) or ()
                         if isinstance(link, Signature))
        if isinstance(s, chain):
            if not s.tasks:
                raise TaskOptionError("chain needs at least one signature")
            last = len(s.tasks) - 1
            stack.extend((t, want if i == last else None) for i, t in enumerate(s.tasks))
        elif isinstance(s, chord):
            stack.append((s.header, None))
            stack.append((s.body, want))
        elif isinstance(s, group):
            s.options["group_id"] = want or s.options.get("group_id") or new_id()
            stack.extend((t, None) for t in s.tasks)
        else:
            s.options["task_id"] = want or s.options.get("task_id") or new_id()


def push_down(sig: Signature, default_queue: str | None) -> None:
    """Move a workflow's own sending options to its tasks, as Celery applies them: a
    group's to every member, a chain's to its first step, a chord's to its header; the
    queue also becomes the default of every task below. Fills each task's queue."""
    stack: list[tuple[Signature, dict[str, Any], str | None]] = [(sig, {}, default_queue)]
    while stack:
        s, inherited, queue = stack.pop()
        own = {k: v for k, v in s.options.items() if k not in STRUCTURE_OPTIONS}
        if not isinstance(s, chain | group | chord):
            s.options.update(inherited)
            task = s.app.tasks.get(s.task) if s.app is not None else None
            s.options.setdefault("queue", (task.queue if task is not None else None) or queue)
            # The task's own, as its apply_async.
            for default in ("expires", "priority", "message_group"):
                if task is not None and getattr(task, default, None) is not None:
                    s.options.setdefault(default, getattr(task, default))
            for name in LINK_OPTIONS:
                stack.extend((link, {}, queue) for link in s.options.get(name) or ()
                             if isinstance(link, Signature))
            continue
        for k in own:
            del s.options[k]
        # A workflow's own callbacks go where Celery puts them (chain: its last task;
        # group: each member; chord: its body; errbacks of a chain: every step).
        for callback in s.options.pop("link", None) or ():
            s.link(callback)
        for errback in s.options.pop("link_error", None) or ():
            s.link_error(errback)
        passed = {**own, **inherited}
        queue = passed.get("queue") or queue
        if isinstance(s, chain):
            stack.extend((t, passed if i == 0 else {}, queue) for i, t in enumerate(s.tasks))
        elif isinstance(s, chord):
            stack.append((s.header, passed, queue))
            stack.append((s.body, {}, queue))
        else:
            stack.extend((t, passed, queue) for t in s.tasks)


def result_of(sig: Signature, app: Conveyor, parent: Any = None) -> Any:
    """The result handle of a frozen signature: an AsyncResult (``.parent`` linking back
    through a chain) or a GroupResult."""
    from conveyor.result import AsyncResult, GroupResult

    if isinstance(sig, chain):
        handle = parent
        for step in sig.tasks:
            handle = result_of(step, app, handle)
        return handle
    if isinstance(sig, chord):
        header = result_of(sig.header, app, parent)
        return result_of(sig.body, app, header)
    if isinstance(sig, group):
        return GroupResult([result_of(t, app) for t in sig.tasks], id=sig.id, app=app,
                           parent=parent)
    assert sig.id is not None
    return AsyncResult(sig.id, app=app, parent=parent)


def send(sig: Signature, app: Conveyor) -> AsyncResult | GroupResult:
    """Freeze, send the first messages (and chord entries), return the result handle."""
    if app.conf.task_always_eager:
        from conveyor.canvas.eager import run_eagerly

        return run_eagerly(sig, app)  # type: ignore[no-any-return]
    push_down(sig, app.conf.task_default_queue)
    freeze(sig)
    node = sig.to_dict()
    handle = result_of(sig, app)
    launcher = Launcher(app, root=first_task_id(node) or result_id(node))
    launcher.launch(node, input=None, parent=None)
    messages = launcher.finish(app_writes)
    app.publish(messages)
    if app.conf.task_store_pending:
        sent = {o.message.id for o in messages}
        later = [TaskRecord(str(n["options"]["task_id"]), "PENDING", task=n["task"],
                            queue=n["options"].get("queue"), updated_at=time.time()).to_stored()
                 for n in leaves(node) if n["options"]["task_id"] not in sent]
        if later:
            app.pending.add(later)
    return handle  # type: ignore[no-any-return]


def send_linked(task: Task[Any, Any], args: Any, kwargs: Any, *, link: Any, link_error: Any,
                **options: Any) -> AsyncResult:
    """``task.apply_async`` with callbacks (or in eager mode): one signature sent."""
    sig = Signature(task.name, args, kwargs, {k: v for k, v in options.items()
                                              if v is not None}, app=task.app)
    for name, value in (("link", link), ("link_error", link_error)):
        if value is not None:
            for s in value if isinstance(value, list | tuple) else [value]:
                getattr(sig, name)(s if isinstance(s, Signature) else Signature.from_dict(
                    s, app=task.app))
    return sig.apply_async()  # type: ignore[no-any-return]


def header_result(app: Conveyor, group_id: str) -> GroupResult | None:
    """The GroupResult of the chord header ``group_id`` (from its entry), else None."""
    from conveyor.result import AsyncResult, GroupResult

    if not app.backend.capabilities.coordination:
        return None
    raw = app.backend.entries(CHORD_ENTRY + group_id).get(CHORD_ENTRY + group_id)
    if raw is None:
        return None
    entry = json.loads(raw)
    parent = entry.get("parent")
    return GroupResult([AsyncResult(i, app=app) for i in entry["ids"]], id=group_id, app=app,
                       parent=AsyncResult(parent, app=app) if parent else None)


def app_writes(op: Callable[[], Any]) -> Any:
    """Run a backend write from a producer (errors reach the caller)."""
    return op()


# -- turning nodes into messages --------------------------------------------------------------
@dataclass
class Launcher:
    """Builds the messages (and chord entries) that start workflow nodes.

    The same code serves a producer sending a workflow and a worker following one up; what
    it builds depends only on the frozen nodes, so building twice sends the same ids.
    """

    app: Conveyor
    root: str
    messages: list[Outgoing] = field(default_factory=list)
    entries: list[tuple[str, bytes]] = field(default_factory=list)
    #: Groups finished without any task (an empty header): (group id, continuation).
    empty: list[tuple[str, list[dict[str, Any]], dict[str, Any] | None]] = field(
        default_factory=list)

    def launch(self, node: dict[str, Any], *, input: tuple[Any, ...] | None,
               parent: str | None, rest: list[dict[str, Any]] | None = None,
               membership: dict[str, Any] | None = None, group_id: str | None = None,
               record_group: bool = False) -> None:
        """Start ``node`` with ``input`` prepended to its first tasks' arguments; when it is
        done, ``rest`` runs next, then ``membership`` (a chord) is joined. ``record_group``:
        a top-level group records its list under its id even with nothing after it."""
        stack = [(node, input, parent, list(rest or ()), membership, group_id)]
        while stack:
            n, given, par, after, member_of, gid = stack.pop()
            k = kind(n)
            if record_group and k == "group" and not after and member_of is None:
                self._chord(n, None, given=given, par=par, after=after, member_of=member_of,
                            stack=stack)
                record_group = False
                continue
            record_group = False
            if k == "chain":
                tasks = children(n)
                if not tasks:
                    raise TaskOptionError("chain needs at least one signature")
                stack.append((tasks[0], given, par, [*tasks[1:], *after], member_of, gid))
            elif k == "group" and not after and member_of is None:
                own = str(n["options"]["group_id"])
                stack.extend((m, given, par, [], None, own) for m in reversed(children(n)))
            elif k in ("group", "chord"):
                if k == "group":
                    header, body = n, (after[0] if after else None)
                    after = after[1:]
                else:
                    header, body = children(n)
                self._chord(header, body, given=given, par=par, after=after,
                            member_of=member_of, stack=stack)
            else:
                self.messages.append(self._message(n, given=given, par=par, after=after,
                                                   member_of=member_of, gid=gid))

    def _chord(self, header: dict[str, Any], body: dict[str, Any] | None, *,
               given: tuple[Any, ...] | None, par: str | None, after: list[dict[str, Any]],
               member_of: dict[str, Any] | None, stack: list[Any]) -> None:
        gid = str(header["options"]["group_id"])
        members = children(header)
        if not members:
            if body is not None:
                stack.append((body, ([],), gid, after, member_of, None))
            else:
                self.empty.append((gid, after, member_of))
            return
        entry = {"n": len(members), "ids": [result_id(m) for m in members], "body": body,
                 "rest": after, "chord": member_of, "root": self.root, "parent": par}
        self.entries.append((CHORD_ENTRY + gid, json.dumps(entry).encode()))
        joining = {"id": gid, "n": len(members)}
        stack.extend((m, given, par, [], joining, gid) for m in reversed(members))

    def _message(self, node: dict[str, Any], *, given: tuple[Any, ...] | None, par: str | None,
                 after: list[dict[str, Any]], member_of: dict[str, Any] | None,
                 gid: str | None) -> Outgoing:
        options = node.get("options") or {}
        args = list(node.get("args") or ())
        if given is not None and not node.get("immutable"):
            args = [*given, *args]
        canvas: dict[str, Any] = {}
        if self.root != options["task_id"]:
            canvas["root"] = self.root
        if member_of is not None:
            canvas["chord"] = member_of
        for name in LINK_OPTIONS:
            if options.get(name):
                canvas[name] = options[name]
        if options.get(ERRBACK):
            canvas[ERRBACK] = True
        send = sending_options(self.app, options)
        return self.app.build_message(
            node["task"], args, node.get("kwargs") or {}, **send, task_id=options["task_id"],
            callbacks=after, group=gid, parent=par, canvas=canvas or None)

    def finish(self, reliably: Callable[[Callable[[], Any]], Any]) -> list[Outgoing]:
        """Write the chord entries (before any header message exists), settle empty
        groups, and return the messages to send."""
        if self.entries:
            backend, ttl = self.app.backend, self.app.conf.result_expires
            if not backend.capabilities.coordination:
                raise ConveyorError(f"the result backend {backend!r} has no coordination "
                                    "primitives (join, entries): chords cannot run on it")
            for key, value in self.entries:
                reliably(functools.partial(backend.put_entry, key, value, ttl=ttl))
            self.entries = []
        while self.empty:
            gid, after, member_of = self.empty.pop()
            from conveyor.canvas.join import Follower

            Follower(self.app, self, reliably).group_done(gid, [], after, member_of)
        return self.messages


_SENDING: dict[int, frozenset[str]] = {}


def sending_options(app: Conveyor, options: dict[str, Any]) -> dict[str, Any]:
    """The options of a task node that ``app.build_message`` takes; refuses unknown ones
    (never dropped silently)."""
    accepted = _SENDING.get(id(type(app)))
    if accepted is None:
        params = inspect.signature(app.build_message).parameters
        accepted = frozenset(p for p, v in params.items() if v.kind is v.KEYWORD_ONLY)
        _SENDING[id(type(app))] = accepted
    out = {}
    for k, v in options.items():
        if k in STRUCTURE_OPTIONS or k == ERRBACK or v is None:
            continue
        if k not in accepted or k in ("callbacks", "canvas", "task_id"):
            raise TaskOptionError(f"unknown sending option {k!r} on {options.get('task_id')}: "
                                  f"accepted are {', '.join(sorted(accepted))}")
        out[k] = v
    return out


def errback_node(app: Conveyor, errback: dict[str, Any], request: dict[str, Any],
                 error: tuple[str, str], traceback: str | None) -> dict[str, Any]:
    """The errback to send for a failure: ``errback(request, exc, traceback)`` when its task
    takes three positional arguments or more (rebuilt by the worker running it), else
    ``errback(task_id)``, as in Celery. Its id is derived from the failure, so a re-issued
    failure sends the same errback."""
    node: dict[str, Any] = json.loads(json.dumps(errback))
    options = node.setdefault("options", {})
    options["task_id"] = derived_id(str(options.get("task_id") or ""), str(request["id"]))
    task = app.tasks.get(node["task"])
    if task is not None and takes_request(task.fn, bound=task.bind):
        node["args"] = [request, {"type": error[0], "message": error[1]}, traceback,
                        *node.get("args", ())]
        options[ERRBACK] = True
    else:
        node["args"] = [request["id"], *node.get("args", ())]
    node["immutable"] = True
    return node


def derived_id(base: str, salt: str) -> str:
    """A UUID made from ``base`` and ``salt``: the same pair always gives the same id."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"{base}/{salt}"))


def takes_request(fn: Callable[..., Any], *, bound: bool) -> bool:
    """True when ``fn`` takes three or more positional arguments (Celery's new-style
    errback: request, exc, traceback)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    if bound:
        params = params[1:]
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params) >= 3
