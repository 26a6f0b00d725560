"""Signatures: a task name with arguments and sending options, the unit of every workflow.

The JSON form (``Signature.to_dict()``), which messages carry and ``signature(dict)`` rebuilds::

    {"task": "proj.add", "args": [2], "kwargs": {}, "options": {"task_id": "...", "queue": "q",
     "link": [<signature>...], "link_error": [<signature>...]},
     "immutable": false, "subtask_type": null}

``subtask_type`` is ``"chain"`` / ``"group"`` (``kwargs.tasks``: their members) or ``"chord"``
(``kwargs.header``: a group, ``kwargs.body``: any signature), as in Celery.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from conveyor.exceptions import TaskOptionError

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.canvas.workflows import chain
    from conveyor.result import AsyncResult, GroupResult

#: Sending options a signature keeps for the message (the rest are refused on sending).
LINK_OPTIONS = ("link", "link_error")


class Signature:
    """A task invocation to be sent later, composed, or passed over the wire.

    ``add.s(2)`` is partial: a chain prepends the previous result (``add.s(2)(3)`` adds 3 and
    2). ``add.si(2, 2)`` is immutable: it ignores what is prepended. Calling a signature runs
    the task in this process, as Celery does; ``delay`` / ``apply_async`` send it.
    """

    subtask_type: ClassVar[str | None] = None

    def __init__(self, task: str | dict[str, Any], args: Iterable[Any] | None = (),
                 kwargs: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
                 *, immutable: bool = False, app: Conveyor | None = None,
                 **more_options: Any) -> None:
        if isinstance(task, dict):
            data = task
            task = str(data["task"])
            args, kwargs = data.get("args") or (), data.get("kwargs")
            options = data.get("options")
            immutable = bool(data.get("immutable"))
        if not isinstance(task, str) or not task:
            raise TaskOptionError(f"a signature needs a task name, got {task!r}")
        self.task = task
        self.args: tuple[Any, ...] = tuple(args or ())
        self.kwargs: dict[str, Any] = dict(kwargs or {})
        self.options: dict[str, Any] = link_lists({**(options or {}), **more_options})
        self.immutable = immutable
        self.app = app

    # -- identity and the wire form -----------------------------------------------------------
    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.task}({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Signature) and other.to_dict() == self.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable, as Celery's dict-based signature

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (see the module docstring); nested signatures become dicts too."""
        options = dict(self.options)
        for name in LINK_OPTIONS:
            if options.get(name):
                given = options[name]
                options[name] = [to_dict(s) for s in (
                    given if isinstance(given, list | tuple) else [given])]
        return {"task": self.task, "args": list(self.args), "kwargs": dict(self.kwargs),
                "options": options, "immutable": self.immutable,
                "subtask_type": self.subtask_type}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, app: Conveyor | None = None) -> Signature:
        """Rebuild any signature (chains, groups, chords too) from :meth:`to_dict`."""
        return signature(data, app=app)

    @property
    def id(self) -> str | None:
        """The task id given or assigned by :meth:`freeze` (None before)."""
        value = self.options.get("task_id")
        return str(value) if value is not None else None

    @property
    def name(self) -> str:
        """The task's name (Celery's alias of ``task``)."""
        return self.task

    def _app(self) -> Conveyor:
        if self.app is None:
            raise TaskOptionError(f"signature {self!r} is not bound to an app: build it with "
                                  "task.s(...) or signature(..., app=app)")
        return self.app

    def bind(self, app: Conveyor) -> Signature:
        """Attach ``app`` (to this signature and any nested one); returns self."""
        self.app = app
        for name in LINK_OPTIONS:
            for s in self.options.get(name) or ():
                if isinstance(s, Signature):
                    s.bind(app)
        return self

    # -- partial application ------------------------------------------------------------------
    def clone(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              **options: Any) -> Signature:
        """A copy with ``args`` prepended and ``kwargs`` merged (an immutable signature keeps
        its own), and ``options`` set. Nested signatures are copied too."""
        new = copy.copy(self)
        new.options = link_lists({**copy.deepcopy(self.options), **options})
        if not self.immutable:
            new.args = (*tuple(args or ()), *self.args)
            new.kwargs = {**self.kwargs, **(kwargs or {})}
        return new

    def __deepcopy__(self, memo: dict[int, Any]) -> Signature:
        # Nested signatures (links) are copied; the app they are bound to is shared.
        return self.clone()

    def replace(self, args: Iterable[Any] | None = None,
                kwargs: dict[str, Any] | None = None,
                options: dict[str, Any] | None = None) -> Signature:
        """A copy with ``args``, ``kwargs`` or ``options`` replaced (not merged), as Celery's
        ``Signature.replace``."""
        new = self.clone()
        if args is not None:
            new.args = tuple(args)
        if kwargs is not None:
            new.kwargs = dict(kwargs)
        if options is not None:
            new.options = link_lists(dict(options))
        return new

    def set(self, *, immutable: bool | None = None, **options: Any) -> Signature:
        """Set sending options (``queue``, ``countdown``, ``task_id``, ...); returns self."""
        if immutable is not None:
            self.immutable = immutable
        self.options.update(link_lists(options))
        return self

    def set_immutable(self, immutable: bool) -> None:
        """Make the signature ignore (or take) arguments prepended by a chain."""
        self.immutable = immutable

    def link(self, callback: Signature) -> Signature:
        """Run ``callback`` with this task's result when it succeeds; returns ``callback``.

        Several callbacks may be linked; each gets the result as its first argument (unless
        immutable)."""
        self.options.setdefault("link", []).append(callback)
        return callback

    def link_error(self, errback: Signature) -> Signature:
        """Run ``errback`` when this task fails; returns ``errback``.

        An errback whose task takes three or more positional arguments is called as
        ``errback(request, exc, traceback)``; one that takes fewer gets the failed task's id,
        as in Celery."""
        self.options.setdefault("link_error", []).append(errback)
        return errback

    def on_error(self, errback: Signature) -> Signature:
        """Like :meth:`link_error` but returns self, for chaining calls."""
        self.link_error(errback)
        return self

    # -- ids before sending ------------------------------------------------------------------
    def freeze(self, _id: str | None = None) -> AsyncResult | GroupResult:
        """Assign the ids this signature will run under (keeping ones already set) and return
        its result handle, before anything is sent."""
        from conveyor.canvas.engine import freeze, result_of

        freeze(self, _id)
        handle: AsyncResult | GroupResult = result_of(self, self._app())
        return handle

    # -- running ------------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        sig = self.clone(args, kwargs)
        return self._app().tasks[self.task](*sig.args, **sig.kwargs)

    def apply_async(self, args: Iterable[Any] | None = None,
                    kwargs: dict[str, Any] | None = None, **options: Any) -> Any:
        """Send it, ``args`` prepended and ``kwargs`` merged; returns the result handle
        (an AsyncResult; a GroupResult for a group)."""
        from conveyor.canvas.engine import send

        return send(self.clone(args, kwargs, **{k: v for k, v in options.items()
                                                if v is not None}), self._app())

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        """Send with extra positional args prepended and keyword args merged."""
        return self.apply_async(args, kwargs)

    def apply(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              **options: Any) -> Any:
        """Run it (and everything it composes) in this process; returns EagerResult(s)."""
        from conveyor.canvas.eager import run_eagerly

        return run_eagerly(self.clone(args, kwargs, **options), self._app())

    def __or__(self, other: Signature) -> Signature:
        from conveyor.canvas.workflows import chain

        if not isinstance(other, Signature):
            return NotImplemented
        return chain(self, other)

    def _steps(self) -> list[Signature]:
        return [self]

    def as_chain(self) -> chain:
        """This signature as a one-step chain."""
        from conveyor.canvas.workflows import chain

        return chain(self)


def link_lists(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with ``link`` / ``link_error`` as lists (one signature may be given)."""
    for name in LINK_OPTIONS:
        value = options.get(name)
        if value is not None and not isinstance(value, list):
            options[name] = list(value) if isinstance(value, tuple) else [value]
    return options


def to_dict(sig: Signature | dict[str, Any]) -> dict[str, Any]:
    """The JSON form of a signature or of an already-encoded one."""
    return sig.to_dict() if isinstance(sig, Signature) else sig


def signature(varies: str | dict[str, Any] | Signature, args: Iterable[Any] | None = (),
              kwargs: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
              *, app: Conveyor | None = None, immutable: bool = False,
              **more_options: Any) -> Signature:
    """A signature by task name (it need not be registered in this process), rebuilt from
    its JSON form (chains, groups and chords too), or a copy of one, as Celery's
    ``signature()``."""
    if isinstance(varies, Signature):
        sig = varies.clone()
        return sig.bind(app) if app is not None else sig
    if isinstance(varies, dict):
        from conveyor.canvas.workflows import from_dict

        sig = from_dict(varies, app=app)
        return sig
    return Signature(varies, args, kwargs, options, immutable=immutable, app=app,
                     **more_options)


def maybe_signature(value: Signature | dict[str, Any] | None, *,
                    app: Conveyor | None = None) -> Signature | None:
    """A signature from a signature, its JSON form, or None."""
    if value is None:
        return None
    return signature(value, app=app) if isinstance(value, dict) else value
