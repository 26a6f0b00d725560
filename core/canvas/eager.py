"""Running tasks and whole workflows in this process: ``task.apply()``, ``sig.apply()`` and
the ``task_always_eager`` setting, for users' unit tests without a broker or worker.

Results are :class:`~conveyor.result.EagerResult` (GroupResult of them for a group); nothing
is written to the backend. With ``task_eager_propagates`` a failure raises at once.
"""

from __future__ import annotations

import traceback as tb_module
import uuid
from typing import TYPE_CHECKING, Any

from conveyor.canvas.signature import Signature
from conveyor.canvas.workflows import chain, chord, group
from conveyor.exceptions import ChordError, Replace, Retry, TaskOptionError
from conveyor.states import FAILURE, SUCCESS

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.result import EagerResult


#: Most retries of one task in an eager run (retries happen at once, with no countdown).
EAGER_RETRY_CAP = 100


def run_eagerly(sig: Signature, app: Conveyor, *, parent: Any = None,
                root: str | None = None) -> Any:
    """Run ``sig`` (any workflow) here; returns its EagerResult or GroupResult."""
    from conveyor.canvas.engine import freeze

    freeze(sig)
    return _run(sig, app, None, parent, root)


def _run(sig: Signature, app: Conveyor, given: tuple[Any, ...] | None, parent: Any,
         root: str | None) -> Any:
    from conveyor.result import GroupResult

    if isinstance(sig, chain):
        handle, failed = parent, None
        for step in sig.tasks:
            if failed is not None:
                handle = _failed(step, failed, handle)
                continue
            handle = _run(step, app, given, handle, root)
            if not _ok(handle):
                failed = _exception(handle)
            else:
                given = (handle.get(),)
        return handle
    if isinstance(sig, chord):
        header = _run(sig.header, app, given, parent, root)
        bad = next((r for r in _flat(header) if not r.successful()), None)
        if bad is not None:
            return _failed(sig.body, ChordError(
                f"chord {sig.header.id}: header task {bad.name}[{bad.id}] failed: "
                f"{type(bad.result).__name__}: {bad.result}"), header)
        return _run(sig.body, app, (header.get(),), header, root)
    if isinstance(sig, group):
        return GroupResult([_run(m, app, given, None, root) for m in sig.tasks], id=sig.id,
                           app=app, parent=parent)
    return _task(sig, app, given, parent, root)


def _task(sig: Signature, app: Conveyor, given: tuple[Any, ...] | None, parent: Any,
          root: str | None) -> EagerResult:
    from conveyor.result import EagerResult
    from conveyor.task import Request

    task = app.tasks.get(sig.task)
    if task is None:
        raise TaskOptionError(f"task {sig.task!r} is not registered in this process: eager "
                              "mode runs tasks here")
    call = sig.clone(given) if given is not None else sig
    task_id = sig.id or str(uuid.uuid4())
    retries = 0
    while True:
        request = Request(id=task_id, task=sig.task, args=list(call.args),
                          kwargs=dict(call.kwargs), retries=retries, is_eager=True,
                          root_id=root or task_id, parent_id=getattr(parent, "id", None))
        task._push_request(request)
        try:
            value = task.fn(task, *call.args, **call.kwargs) if task.bind else task.fn(
                *call.args, **call.kwargs)
        except Retry as signal:
            # Task.retry enforces max_retries itself (raising once they are used up); the
            # cap only stops a task that retries for ever (max_retries=None) from hanging.
            retries += 1
            if retries > EAGER_RETRY_CAP:
                outcome = EagerResult(task_id, signal.exc or signal, FAILURE, name=sig.task,
                                      parent=parent, retries=retries)
                break
            if signal.args_override is not None or signal.kwargs_override is not None:
                call = call.clone()  # retry(args=, kwargs=): the next attempt's arguments
                if signal.args_override is not None:
                    call.args = tuple(signal.args_override)
                if signal.kwargs_override is not None:
                    call.kwargs = dict(signal.kwargs_override)
            continue
        except Replace as replaced:
            task._push_request(None)
            other = replaced.sig.clone()
            inner = run_eagerly(other, app, root=root or task_id)
            ok = _ok(inner)
            outcome = EagerResult(task_id, inner.get(propagate=False) if ok else
                                  _exception(inner), SUCCESS if ok else FAILURE,
                                  name=sig.task, parent=parent)
            break
        except Exception as exc:
            limit = task.max_retries if task.max_retries is not None else EAGER_RETRY_CAP
            if task.should_autoretry(exc) and retries < min(limit, EAGER_RETRY_CAP):
                retries += 1  # autoretry_for, at once
                continue
            if app.conf.task_eager_propagates:
                raise
            outcome = EagerResult(task_id, exc, FAILURE, name=sig.task, parent=parent,
                                  traceback=tb_module.format_exc(), retries=retries)
            break
        finally:
            task._push_request(None)
        outcome = EagerResult(task_id, value, SUCCESS, name=sig.task, parent=parent,
                              retries=retries)
        break
    _links(sig, app, outcome, request, root or task_id)
    return outcome


def _links(sig: Signature, app: Conveyor, outcome: EagerResult, request: Any,
           root: str) -> None:
    from conveyor.canvas.engine import takes_request

    if outcome.successful():
        for link in sig.options.get("link") or ():
            _run(_as_sig(link, app), app, (outcome.result,), outcome, root)
        return
    for errback in sig.options.get("link_error") or ():
        eb = _as_sig(errback, app)
        task = app.tasks.get(eb.task)
        if task is not None and takes_request(task.fn, bound=task.bind):
            _run(eb.clone((request, outcome.result, outcome.traceback)).set(immutable=True),
                 app, None, outcome, root)
        else:
            _run(eb.clone((outcome.id,)).set(immutable=True), app, None, outcome, root)


def _as_sig(value: Any, app: Conveyor) -> Signature:
    from conveyor.canvas.signature import signature

    return signature(value, app=app) if isinstance(value, dict) else value.clone()


def _failed(sig: Signature, exc: BaseException, parent: Any) -> Any:
    """The results of a node that cannot run because ``exc`` happened before it."""
    from conveyor.result import EagerResult, GroupResult

    if isinstance(sig, chain):
        handle = parent
        for step in sig.tasks:
            handle = _failed(step, exc, handle)
        return handle
    if isinstance(sig, chord):
        return _failed(sig.body, exc, _failed(sig.header, exc, parent))
    if isinstance(sig, group):
        return GroupResult([_failed(m, exc, None) for m in sig.tasks], id=sig.id,
                           parent=parent)
    return EagerResult(sig.id or str(uuid.uuid4()), exc, FAILURE, name=sig.task,
                       parent=parent)


def _flat(result: Any) -> list[Any]:
    out, stack = [], [result]
    while stack:
        r = stack.pop()
        if hasattr(r, "results"):
            stack.extend(reversed(r.results))
        else:
            out.append(r)
    return out


def _ok(result: Any) -> bool:
    return all(r.successful() for r in _flat(result))


def _exception(result: Any) -> BaseException:
    bad = next(r for r in _flat(result) if not r.successful())
    value = bad.result
    return value if isinstance(value, BaseException) else ChordError(str(value))


__all__ = ["run_eagerly"]
