"""Signals: Celery's names and arguments, on a small in-house dispatcher.

``@task_prerun.connect`` (or ``task_prerun.connect(fn, sender=some_task)``) registers a receiver;
it is called as ``fn(signal=..., sender=..., **arguments)``. A receiver that raises is logged and
skipped: a signal never changes a task's outcome. Receivers are held by strong references
(Celery keeps weak ones by default): a receiver stays connected until ``disconnect``.

Which arguments each signal carries is listed beside it; they match Celery's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, overload

if TYPE_CHECKING:
    from conveyor.app import Outgoing

log = logging.getLogger("conveyor.signals")

F = TypeVar("F", bound=Callable[..., Any])


class Signal:
    """A named hook. Thread-safe; ``send`` costs one attribute read when nobody listens."""

    def __init__(self, name: str, *, providing_args: tuple[str, ...] = ()) -> None:
        self.name = name
        self.providing_args = providing_args
        #: (key, receiver, sender filter); replaced, never mutated, so ``send`` needs no lock.
        self.receivers: tuple[tuple[object, Callable[..., Any], Any], ...] = ()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Signal {self.name}>"

    @overload
    def connect(self, receiver: F, sender: Any = None, weak: bool = True,
                dispatch_uid: str | None = None) -> F: ...
    @overload
    def connect(self, receiver: None = None, sender: Any = None, weak: bool = True,
                dispatch_uid: str | None = None) -> Callable[[F], F]: ...

    def connect(self, receiver: Callable[..., Any] | None = None, sender: Any = None,
                weak: bool = True, dispatch_uid: str | None = None) -> Any:
        """Register ``receiver`` (also usable as ``@signal.connect`` or
        ``@signal.connect(sender=...)``), Celery's arguments in Celery's order. With
        ``sender``, it only hears sends from that sender (a task object, or a task name for
        the publish signals). Connecting the same receiver (or ``dispatch_uid``) twice keeps
        one registration. ``weak`` is accepted and ignored: receivers are always held
        strongly (a weak one defined inside a function would silently stop hearing)."""
        def add(fn: F) -> F:
            key = dispatch_uid if dispatch_uid is not None else (id(fn), id(sender))
            with self._lock:
                if all(k != key for k, _, _ in self.receivers):
                    self.receivers = (*self.receivers, (key, fn, sender))
            return fn

        return add(receiver) if receiver is not None else add

    def disconnect(self, receiver: Callable[..., Any] | None = None, sender: Any = None,
                   weak: bool | None = None, dispatch_uid: str | None = None) -> bool:
        """Remove a registration; True when one was removed."""
        key = dispatch_uid if dispatch_uid is not None else (id(receiver), id(sender))
        with self._lock:
            kept = tuple(r for r in self.receivers if r[0] != key)
            removed = len(kept) != len(self.receivers)
            self.receivers = kept
        return removed

    def send(self, sender: Any = None, **named: Any) -> list[tuple[Callable[..., Any], Any]]:
        """Call every matching receiver; returns ``(receiver, response)`` pairs (the exception
        as response when one raised, after logging it)."""
        receivers = self.receivers
        if not receivers:
            return []
        responses: list[tuple[Callable[..., Any], Any]] = []
        for _, fn, wanted in receivers:
            if wanted is not None and wanted is not sender and wanted != sender:
                continue
            try:
                responses.append((fn, fn(signal=self, sender=sender, **named)))
            except Exception as exc:
                log.exception("receiver %r of signal %s raised", fn, self.name)
                responses.append((fn, exc))
        return responses

    #: Django's and Celery's name for the same robust send.
    send_robust = send

    def has_listeners(self, sender: Any = None) -> bool:
        """True when a receiver would hear a send from ``sender``."""
        return any(w is None or w is sender or w == sender for _, _, w in self.receivers)


#: Before a task message is sent. sender: the task name. body, exchange, routing_key (the queue),
#: headers (id, task, retries, eta, expires, priority, parent_id, group), properties, declare,
#: retry_policy.
before_task_publish = Signal("before_task_publish", providing_args=(
    "body", "exchange", "routing_key", "headers", "properties", "declare", "retry_policy"))
#: After a task message is on the broker. sender: the task name. body, exchange, routing_key,
#: headers.
after_task_publish = Signal("after_task_publish", providing_args=(
    "body", "exchange", "routing_key", "headers"))
#: In the worker, before the task body runs. sender: the task. task_id, task, args, kwargs.
task_prerun = Signal("task_prerun", providing_args=("task_id", "task", "args", "kwargs"))
#: After the task body and its outcome. sender: the task. task_id, task, args, kwargs, retval,
#: state.
task_postrun = Signal("task_postrun", providing_args=(
    "task_id", "task", "args", "kwargs", "retval", "state"))
#: The task succeeded. sender: the task. result.
task_success = Signal("task_success", providing_args=("result",))
#: The task failed. sender: the task. task_id, exception, args, kwargs, traceback, einfo.
task_failure = Signal("task_failure", providing_args=(
    "task_id", "exception", "args", "kwargs", "traceback", "einfo"))
#: The task will be retried. sender: the task. request, reason, einfo.
task_retry = Signal("task_retry", providing_args=("request", "reason", "einfo"))
#: A revoked (or expired) task was skipped or terminated. sender: the task. request,
#: terminated, signum, expired.
task_revoked = Signal("task_revoked", providing_args=(
    "request", "terminated", "signum", "expired"))
#: The worker is consuming. sender: the consumer.
worker_ready = Signal("worker_ready")
#: The worker has stopped consuming and is about to exit. sender: the consumer.
worker_shutdown = Signal("worker_shutdown")
#: A worker process has started (each child of the processes pool, and a threads worker),
#: before it consumes. sender: None.
worker_process_init = Signal("worker_process_init")

__all__ = ["Signal", "after_task_publish", "before_task_publish", "task_failure",
           "task_postrun", "task_prerun", "task_retry", "task_revoked", "task_success",
           "worker_process_init", "worker_ready", "worker_shutdown"]


def publish(batch: Sequence[Outgoing], send: Callable[[], object]) -> None:
    """Send ``before_task_publish`` for each message of ``batch``, run ``send``, then
    ``after_task_publish`` for each (only when ``send`` returned)."""
    described = []
    for o in batch:
        msg = o.message
        headers = {"id": msg.id, "task": msg.task, "retries": msg.retries, "eta": msg.eta,
                   "expires": msg.expires, "priority": msg.priority,
                   "parent_id": msg.parent, "group": msg.group}
        body = {"args": msg.args, "kwargs": msg.kwargs, "callbacks": list(msg.callbacks)}
        described.append((msg.task, body, o.queue, headers))
        before_task_publish.send(sender=msg.task, body=body, exchange="", routing_key=o.queue,
                                 headers=headers, properties={}, declare=[], retry_policy=None)
    send()
    for name, body, queue, headers in described:
        after_task_publish.send(sender=name, body=body, exchange="", routing_key=queue,
                                headers=headers)
