"""Task hooks and signals around one run, fired by the runner.

Nothing here changes an outcome: the outcome is recorded (or handed to the batch writer)
before a hook runs, and a hook or receiver that raises is logged and ignored. A task whose
class overrides no hook, with no signal receivers connected, costs a few attribute reads.
"""

from __future__ import annotations

import logging
from typing import Any

from conveyor import signals
from conveyor.exceptions import ExceptionInfo
from conveyor.states import FAILURE, RETRY, SUCCESS
from conveyor.task import Request, Task

log = logging.getLogger("conveyor.worker")

_HOOKS = ("on_success", "on_failure", "on_retry", "after_return")


def has_hooks(task: Task[Any, Any]) -> bool:
    """True when the task's class overrides one of Task's hooks (cached per class)."""
    cls = type(task)
    found: bool | None = cls.__dict__.get("_conveyor_has_hooks")
    if found is None:
        found = any(getattr(cls, h) is not getattr(Task, h) for h in _HOOKS)
        cls._conveyor_has_hooks = found  # type: ignore[attr-defined]
    return found


def _call(task: Task[Any, Any], hook: str, *args: Any) -> None:
    try:
        getattr(task, hook)(*args)
    except Exception:
        log.exception("%s.%s of %s[%s] raised; the outcome is unchanged",
                      type(task).__name__, hook, task.name, args[1] if len(args) > 1 else "")


def prerun(task: Task[Any, Any], request: Request) -> None:
    """``task_prerun``, before the body."""
    if signals.task_prerun.receivers:
        signals.task_prerun.send(sender=task, task_id=request.id, task=task,
                                 args=request.args, kwargs=request.kwargs)


def finished(task: Task[Any, Any], request: Request, state: str, value: Any, *,
             exc: BaseException | None = None, tb: str | None = None) -> None:
    """Hooks and signals after the outcome ``state`` (SUCCESS, RETRY or FAILURE) is recorded:
    the task's ``on_success``/``on_retry``/``on_failure``, then ``after_return``, then
    ``task_success``/``task_retry``/``task_failure``, then ``task_postrun``."""
    hooks = has_hooks(task)
    if not hooks and not (signals.task_postrun.receivers or signals.task_success.receivers
                          or signals.task_failure.receivers or signals.task_retry.receivers):
        return
    einfo = ExceptionInfo(exc, tb) if exc is not None else None
    task_id, args, kwargs = request.id, request.args, request.kwargs
    retval = value if state == SUCCESS else exc
    if hooks:
        if state == SUCCESS:
            _call(task, "on_success", value, task_id, args, kwargs)
        elif state == RETRY:
            _call(task, "on_retry", exc, task_id, args, kwargs, einfo)
        elif exc is not None:
            _call(task, "on_failure", exc, task_id, args, kwargs, einfo)
        _call(task, "after_return", state, retval, task_id, args, kwargs, einfo)
    if state == SUCCESS:
        signals.task_success.send(sender=task, result=value)
    elif state == RETRY:
        signals.task_retry.send(sender=task, request=request,
                                reason=exc if exc is not None else "retry", einfo=einfo)
    elif state == FAILURE:
        signals.task_failure.send(sender=task, task_id=task_id, exception=exc, args=args,
                                  kwargs=kwargs, traceback=tb, einfo=einfo)
    signals.task_postrun.send(sender=task, task_id=task_id, task=task, args=args,
                              kwargs=kwargs, retval=retval, state=str(state))


def revoked(task: Task[Any, Any] | None, request: Request, *, terminated: bool = False,
            expired: bool = False, signum: int | None = None) -> None:
    """``task_revoked``: a revoked or expired task was skipped, or a running one ended."""
    if signals.task_revoked.receivers:
        signals.task_revoked.send(sender=task, request=request, terminated=terminated,
                                  signum=signum, expired=expired)
