"""Signatures, chains and groups: composing tasks, as in Celery."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from conveyor.ids import new_id
from conveyor.result import AsyncResult, GroupResult

if TYPE_CHECKING:
    from conveyor.app import Conveyor


class Signature:
    """A task name with arguments and options, to be sent later or composed.

    ``sig.delay()`` sends it; ``a.s(1) | b.s()`` builds a chain. Calling a signature runs
    the task here, as Celery does.
    """

    def __init__(self, task: str, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None,
                 *, options: dict[str, Any] | None = None, immutable: bool = False,
                 app: Conveyor | None = None) -> None:
        self.task = task
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.options = dict(options or {})
        self.immutable = immutable
        self.app = app

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.task}({', '.join(parts)})"

    def _app(self) -> Conveyor:
        if self.app is None:
            raise ValueError(f"signature {self!r} is not bound to an app")
        return self.app

    def set(self, **options: Any) -> Signature:
        """Set sending options (``queue``, ``countdown``, ...); returns self."""
        self.options.update(options)
        return self

    def clone(self, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None) -> Signature:
        """A copy with ``args`` prepended (unless immutable) and ``kwargs`` merged."""
        new_args = self.args if self.immutable else (*tuple(args), *self.args)
        return Signature(self.task, new_args, {**self.kwargs, **(kwargs or {})},
                         options=self.options, immutable=self.immutable, app=self.app)

    def to_dict(self) -> dict[str, Any]:
        """JSON form carried inside messages (chain callbacks)."""
        return {"task": self.task, "args": list(self.args), "kwargs": self.kwargs,
                "options": self.options, "immutable": self.immutable}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, app: Conveyor | None = None) -> Signature:
        """Rebuild from :meth:`to_dict`."""
        return cls(data["task"], data.get("args", ()), data.get("kwargs"),
                   options=data.get("options"), immutable=bool(data.get("immutable")), app=app)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        sig = self.clone(args, kwargs)
        return self._app().tasks[self.task](*sig.args, **sig.kwargs)

    def apply_async(self, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None,
                    **options: Any) -> AsyncResult:
        """Send the task with extra args prepended; returns its AsyncResult."""
        sig = self.clone(args, kwargs)
        return self._app().send_task(sig.task, sig.args, sig.kwargs,
                                     **{**self.options, **options})

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """Send with extra positional args prepended and keyword args merged."""
        return self.apply_async(args, kwargs)

    def __or__(self, other: Signature | chain) -> chain:
        if isinstance(other, chain):
            return chain(self, *other.tasks)
        return chain(self, other)


class chain:  # noqa: N801 - Celery's name
    """Run tasks one after another, each getting the previous result as first argument.

    ``chain(a.s(1), b.s())()`` returns the AsyncResult of the last task (``.parent`` links
    back). When a task fails, the tasks after it are recorded as FAILURE naming the cause,
    so waiting on the chain raises instead of hanging.
    """

    def __init__(self, *tasks: Signature) -> None:
        if not tasks:
            raise ValueError("chain needs at least one signature")
        self.tasks = list(tasks)

    def __or__(self, other: Signature | chain) -> chain:
        more = other.tasks if isinstance(other, chain) else [other]
        return chain(*self.tasks, *more)

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.apply_async(args, kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """Send the chain, extra args going to the first task."""
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None,
                    **options: Any) -> AsyncResult:
        """Send the first task; it carries the rest as callbacks. All ids are made now."""
        app = self.tasks[0]._app()
        ids = [str(sig.options.get("task_id") or new_id()) for sig in self.tasks]
        callbacks = []
        # Later steps are sent by a worker, whose default queue may differ: fix it now.
        default_queue = options.get("queue") or app.conf.task_default_queue
        for sig, task_id in zip(self.tasks[1:], ids[1:], strict=True):
            data = sig.to_dict()
            data["options"] = {"queue": default_queue, **data["options"], "task_id": task_id}
            callbacks.append(data)
        first = self.tasks[0].clone(args, kwargs)
        out = app.build_message(first.task, first.args, first.kwargs,
                                **{**first.options, **options, "task_id": ids[0]},
                                callbacks=callbacks, chain_ids=ids[1:])
        app.publish([out])
        if app.conf.task_store_pending and len(ids) > 1:
            from conveyor.record import TaskRecord
            from conveyor.states import PENDING

            app.pending.add([TaskRecord(t, PENDING, task=s.task, parent=p).to_stored()
                             for t, s, p in zip(ids[1:], self.tasks[1:], ids, strict=False)])
        result: AsyncResult | None = None
        for task_id in ids:
            result = AsyncResult(task_id, app=app, parent=result)
        assert result is not None
        return result


class group:  # noqa: N801 - Celery's name
    """Run tasks in parallel; ``group(...)()`` returns a :class:`GroupResult` in order.

    All messages are sent in one batch (one ``enqueue_many`` per queue).
    """

    def __init__(self, *tasks: Signature | Iterable[Signature]) -> None:
        if len(tasks) == 1 and not isinstance(tasks[0], Signature):
            self.tasks = list(tasks[0])
        else:
            self.tasks = [t for t in tasks if isinstance(t, Signature)]

    def __call__(self, *args: Any, **kwargs: Any) -> GroupResult:
        return self.apply_async(args, kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> GroupResult:
        """Send every task, extra args prepended to each."""
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None,
                    **options: Any) -> GroupResult:
        """Send every task in one batch; returns their results in order."""
        if not self.tasks:
            return GroupResult([])
        app = self.tasks[0]._app()
        group_id = new_id()
        extra = tuple(args)
        opts = {k: v for k, v in options.items() if v is not None}
        batch = []
        for sig in self.tasks:
            s = sig.clone(extra, kwargs)
            batch.append(app.build_message(s.task, s.args, s.kwargs,
                                           **{**s.options, **opts}, group=group_id))
        app.publish(batch)
        return GroupResult([AsyncResult(o.message.id, app=app) for o in batch], id=group_id)


def signature(task: str, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None, *,
              app: Conveyor, **options: Any) -> Signature:
    """A signature for a task by name (it need not be registered in this process)."""
    return Signature(task, args, kwargs, options=options, app=app)
