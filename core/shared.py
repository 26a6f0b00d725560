"""``shared_task``: tasks for reusable libraries, bound to whichever app is current.

As in Celery, a library defines ``@shared_task`` functions without importing any app; each
such task is registered on every :class:`~conveyor.Conveyor` app, those created before and
after, and the returned object acts as the task of the *current* app: the one created most
recently, or the one made current with ``app.set_current()``. With no app at all, using it
creates a default app (the configuration from the environment, or the SQLite default).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar, cast, overload

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.task import Task

P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_apps: weakref.WeakSet[Conveyor] = weakref.WeakSet()
_current: weakref.ref[Conveyor] | None = None
#: Every shared task definition: (function, options given to ``app.task``).
_definitions: list[tuple[Callable[..., Any], dict[str, Any]]] = []


def adopt(app: Conveyor) -> None:
    """Called by each new app: make it current and register the shared tasks on it."""
    global _current
    with _lock:
        _apps.add(app)
        _current = weakref.ref(app)
        definitions = list(_definitions)
    for fn, options in definitions:
        app.task(**options)(fn)


def set_current(app: Conveyor) -> None:
    """Make ``app`` the one shared tasks act on."""
    global _current
    with _lock:
        _current = weakref.ref(app)


def current_app() -> Conveyor:
    """The current app, created with the default configuration when there is none."""
    app = _current() if _current is not None else None
    if app is None:
        from conveyor.app import Conveyor

        app = Conveyor()
    return app


class _SharedTask:
    """Stands for one shared task; every attribute is the current app's task's."""

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        self.__fn = fn
        self.__options = options

    def _resolve(self) -> Task[Any, Any]:
        app = current_app()
        for known in list(app.tasks.values()):
            if getattr(known, "fn", None) is self.__fn:
                return known
        task: Task[Any, Any] = app.task(**self.__options)(self.__fn)
        return task

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._resolve(), attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<shared task {self.__fn.__module__}.{self.__fn.__qualname__}>"


@overload
def shared_task(fn: Callable[P, R]) -> Task[P, R]: ...
@overload
def shared_task(fn: None = None, *, bind: Literal[True],
                **options: Any) -> Callable[[Callable[Concatenate[Any, P], R]], Task[P, R]]: ...
@overload
def shared_task(fn: None = None, *, bind: Literal[False] = False,
                **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def shared_task(fn: Callable[..., Any] | None = None, **options: Any) -> Any:
    """Define a task for every app: ``@shared_task`` or ``@shared_task(bind=True, ...)``.

    Options as :meth:`Conveyor.task`; the name defaults to ``module.qualname`` as there.
    """
    def define(func: Callable[..., Any]) -> Task[Any, Any]:
        with _lock:
            _definitions.append((func, options))
            apps = list(_apps)
        for app in apps:
            app.task(**options)(func)
        return cast("Task[Any, Any]", _SharedTask(func, options))

    return define(fn) if fn is not None else define
