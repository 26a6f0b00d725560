"""chain, group and chord: signatures composed of signatures, as in Celery.

Nesting is free: any member may itself be a chain, group or chord. How they run is decided in
:mod:`conveyor.canvas.engine`; these classes only hold the structure.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Self

from conveyor.canvas.signature import Signature, link_lists, to_dict
from conveyor.exceptions import TaskOptionError

if TYPE_CHECKING:
    from conveyor.app import Conveyor


def _members(tasks: tuple[Any, ...]) -> list[Signature]:
    items: Iterable[Any] = tasks[0] if len(tasks) == 1 and not isinstance(
        tasks[0], Signature | dict) else tasks
    members = []
    for item in items:
        member = from_dict(item) if isinstance(item, dict) else item
        if not isinstance(member, Signature):
            raise TaskOptionError(f"workflow members must be signatures (task.s(...)), got "
                                  f"{type(member).__name__}: {member!r}")
        members.append(member)
    return members


def _first_app(members: Iterable[Signature]) -> Conveyor | None:
    return next((m.app for m in members if m.app is not None), None)


class _Composite(Signature):
    """A signature made of member signatures (chain, group): what both do alike."""

    tasks: list[Signature]

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["kwargs"] = {"tasks": [to_dict(t) for t in self.tasks]}
        return data

    def bind(self, app: Conveyor) -> Self:
        super().bind(app)
        for t in self.tasks:
            t.bind(app)
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)


class chain(_Composite):  # noqa: N801 - Celery's name
    """Run signatures one after another, each getting the previous result first.

    ``chain(a.s(1), b.s())()`` (or ``a.s(1) | b.s()``) returns the last task's AsyncResult;
    ``.parent`` links back. A group followed by anything in a chain becomes a chord: the
    rest of the chain gets the list of the group's results.
    """

    subtask_type = "chain"
    tasks: list[Signature]

    def __init__(self, *tasks: Any, app: Conveyor | None = None, **options: Any) -> None:
        steps: list[Signature] = []
        for member in _members(tasks):
            # A chain inside a chain is the same chain (its own options stay on its steps).
            if isinstance(member, chain) and type(member) is chain and not member.options:
                steps.extend(member.tasks)
            else:
                steps.append(member)
        super().__init__("conveyor.chain", (), {}, options, app=app or _first_app(steps))
        self.tasks = steps

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.tasks) or "chain()"

    def clone(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              **options: Any) -> chain:
        new = copy.copy(self)
        new.options = link_lists({**copy.deepcopy(self.options), **options})
        new.tasks = [t.clone() for t in self.tasks]
        if new.tasks and (args or kwargs):
            new.tasks[0] = new.tasks[0].clone(args, kwargs)
        return new

    def __or__(self, other: Signature) -> Signature:
        if not isinstance(other, Signature):
            return NotImplemented
        return chain(*self.tasks, other, app=self.app) if not self.options else chain(
            self, other)

    def link_error(self, errback: Signature) -> Signature:
        """Run ``errback`` when any step fails (it is set on every step, as in Celery)."""
        for t in self.tasks:
            t.link_error(errback)
        return errback

    def link(self, callback: Signature) -> Signature:
        """Run ``callback`` with the chain's final result."""
        if self.tasks:
            self.tasks[-1].link(callback)
        return callback


class group(_Composite):  # noqa: N801 - Celery's name
    """Run signatures in parallel; ``group(...)()`` returns a GroupResult in member order.

    Members may be chains, groups or chords: each member's result is its final value (a
    nested group contributes a list). ``group(...) | task`` is a chord.
    """

    subtask_type = "group"
    tasks: list[Signature]

    def __init__(self, *tasks: Any, app: Conveyor | None = None, **options: Any) -> None:
        members = _members(tasks)
        super().__init__("conveyor.group", (), {}, options, app=app or _first_app(members))
        self.tasks = members

    def __repr__(self) -> str:
        return f"group([{', '.join(repr(t) for t in self.tasks)}])"

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Any:
        return iter(self.tasks)

    @property
    def id(self) -> str | None:
        """The group id given or assigned by ``freeze``."""
        value = self.options.get("group_id")
        return str(value) if value is not None else None

    def clone(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              **options: Any) -> group:
        new = copy.copy(self)
        new.options = link_lists({**copy.deepcopy(self.options), **options})
        new.tasks = [t.clone(args, kwargs) for t in self.tasks]
        return new

    def __or__(self, other: Signature) -> Signature:
        if not isinstance(other, Signature):
            return NotImplemented
        return chord(self, other, app=self.app)

    def link(self, callback: Signature) -> Signature:
        """Run ``callback`` after each member (as Celery); for one call with all results
        use a chord (``group(...) | callback``)."""
        for t in self.tasks:
            t.link(callback)
        return callback

    def link_error(self, errback: Signature) -> Signature:
        """Run ``errback`` for each member that fails."""
        for t in self.tasks:
            t.link_error(errback)
        return errback


class chord(Signature):  # noqa: N801 - Celery's name
    """Run ``header`` (a group) in parallel, then ``body`` once with the list of results.

    The join needs no polling: each finished header task adds itself to a set in the result
    backend (``ResultBackend.join``) and the one that completes the set sends the body. When
    a header task fails the body is not run: its result raises :class:`ChordError` naming the
    failed task, and its ``link_error`` callbacks are called. An empty header runs the body
    with ``[]``.
    """

    subtask_type = "chord"

    def __init__(self, header: Any, body: Signature | dict[str, Any] | None = None, *,
                 app: Conveyor | None = None, **options: Any) -> None:
        if isinstance(header, dict):
            header = from_dict(header)
        head = header if isinstance(header, group) else group(header)
        if isinstance(body, dict):
            body = from_dict(body)
        super().__init__("conveyor.chord", (), {}, options,
                         app=app or head.app or (body.app if body is not None else None))
        self.header: group = head
        #: None until given: ``chord(header)(body)`` is Celery's other spelling.
        self._body = body

    @property
    def body(self) -> Signature:
        """The signature run with the header's results."""
        if self._body is None:
            raise TaskOptionError("chord needs a body: chord(header, body), "
                                  "chord(header)(body) or group(...) | body")
        return self._body

    @body.setter
    def body(self, value: Signature) -> None:
        self._body = value

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self._body!r})"

    @property
    def tasks(self) -> list[Signature]:
        """The header's members."""
        return self.header.tasks

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["kwargs"] = {"header": self.header.to_dict(), "body": self.body.to_dict()}
        return data

    def bind(self, app: Conveyor) -> chord:
        super().bind(app)
        self.header.bind(app)
        if self._body is not None:
            self._body.bind(app)
        return self

    def clone(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              **options: Any) -> chord:
        new = copy.copy(self)
        new.options = link_lists({**copy.deepcopy(self.options), **options})
        new.header = self.header.clone(args, kwargs)
        new._body = self._body.clone() if self._body is not None else None
        return new

    def __or__(self, other: Signature) -> Signature:
        if not isinstance(other, Signature):
            return NotImplemented
        if isinstance(other, group | chain):
            return chain(self, other)
        new = self.clone()
        new.body = new.body | other
        return new

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._body is None and len(args) == 1 and isinstance(args[0], Signature):
            return chord(self.header, args[0], app=self.app, **self.options).apply_async(
                **kwargs)
        return self.apply_async(args, kwargs)

    def link(self, callback: Signature) -> Signature:
        """Run ``callback`` with the body's result."""
        return self.body.link(callback)

    def link_error(self, errback: Signature) -> Signature:
        """Run ``errback`` when the body fails or cannot run because the header failed."""
        return self.body.link_error(errback)


def from_dict(data: dict[str, Any], *, app: Conveyor | None = None) -> Signature:
    """Rebuild a signature of any kind from its JSON form."""
    if not isinstance(data, dict) or "task" not in data:
        raise TaskOptionError(f"not a signature's JSON form (needs 'task'): {data!r:.200}")
    kind = data.get("subtask_type")
    kwargs = data.get("kwargs") or {}
    options = dict(data.get("options") or {})
    sig: Signature
    if kind == "chain":
        sig = chain(*[from_dict(t, app=app) for t in kwargs.get("tasks", ())], app=app,
                    **options)
    elif kind == "group":
        sig = group([from_dict(t, app=app) for t in kwargs.get("tasks", ())], app=app,
                    **options)
    elif kind == "chord":
        sig = chord(from_dict(kwargs["header"], app=app), from_dict(kwargs["body"], app=app),
                    app=app, **options)
    elif kind is None:
        sig = Signature(data, app=app)
    else:
        raise TaskOptionError(f"unknown subtask_type {kind!r}: expected chain, group, chord "
                              "or null")
    for name in ("link", "link_error"):
        if sig.options.get(name):
            sig.options[name] = [from_dict(s, app=app) if isinstance(s, dict) else s
                                 for s in sig.options[name]]
    if app is not None:
        sig.app = app
    return sig
