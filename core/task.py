"""Tasks: the decorated function, how it is sent, and how it asks to be retried."""

from __future__ import annotations

import functools
import gc
import inspect
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import EllipsisType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from conveyor.exceptions import MaxRetriesExceededError, Retry, TaskOptionError

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.canvas import Signature
    from conveyor.exceptions import ExceptionInfo
    from conveyor.result import AsyncResult, GroupResult

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class Request:
    """What a running task knows about its own invocation (``self.request`` when bound)."""

    id: str
    task: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    max_retries: int | None = None
    queue: str | None = None
    hostname: str | None = None
    delivery_attempt: int = 1
    eta: float | None = None
    expires: float | None = None
    #: Set by ``Task.retry`` when it refuses because retries are used up.
    retries_exhausted: bool = False
    #: Set by the worker: makes a queued write-behind STARTED land now (or never), so a
    #: progress state written by the task is not overwritten by it.
    settle_started: Callable[[str], object] | None = field(default=None, repr=False)
    #: Workflow fields (see :func:`conveyor.canvas.followups.request_fields`): the first
    #: task's id, the previous one's, the group's, the chord ``{"id", "n"}`` it joins.
    root_id: str | None = None
    parent_id: str | None = None
    group_id: str | None = None
    chord: dict[str, Any] | None = None
    callbacks: list[Any] = field(default_factory=list)
    errbacks: list[Any] = field(default_factory=list)
    chain: list[Any] = field(default_factory=list)
    #: True when run in this process by ``apply()`` or ``task_always_eager``.
    is_eager: bool = False


class Task(Generic[P, R]):
    """A registered task. Calling it runs the function here; ``delay`` sends it to a worker."""

    def __init__(self, app: Conveyor, fn: Callable[..., R] | None = None, *, name: str,
                 bind: bool = False,
                 queue: str | None = None, max_retries: int | EllipsisType | None = ...,
                 default_retry_delay: float | None = None,
                 autoretry_for: Sequence[type[BaseException]] = (),
                 dont_autoretry_for: Sequence[type[BaseException]] = (),
                 retry_backoff: bool | float = False, retry_backoff_max: float = 600.0,
                 retry_jitter: bool = True, expires: float | None = None,
                 ignore_result: bool = False, dead_letter_failures: bool | None = None,
                 acks_late: bool | None = None, retry_kwargs: dict[str, Any] | None = None,
                 priority: int | None = None, rate_limit: str | None = None,
                 time_limit: float | None = None, soft_time_limit: float | None = None,
                 message_group: str | None = None) -> None:
        if fn is None:
            # A class-based task: the body is the subclass's ``run`` method.
            if type(self).run is Task.run:
                raise TypeError(f"task class {type(self).__qualname__} defines no run() method")
            fn, bind = self.run, False
        self.app = app
        self.fn = fn
        from conveyor.ratelimit import parse_rate
        from conveyor.routing import check_priority

        #: Ack before running (False) or after the outcome is stored (True); None: the
        #: app's ``task_acks_late``.
        self.acks_late = acks_late
        #: Options for the automatic retry of ``autoretry_for`` (countdown, max_retries, ...).
        self.retry_kwargs = dict(retry_kwargs or {})
        self.priority = check_priority(priority)
        #: Default ``message_group`` of its messages (kept in order per group by a broker
        #: declaring ``message_groups``, an SQS FIFO queue); ``apply_async`` overrides it.
        self.message_group = message_group
        self.rate_limit = rate_limit
        #: Calls allowed per second across all workers (None: unlimited).
        self.rate: tuple[int, float] | None = parse_rate(rate_limit)
        self.time_limit = time_limit
        self.soft_time_limit = soft_time_limit
        self.name = name
        self.bind = bind
        self.queue = queue
        # ``...`` means "not given": take the app's default; None means "retry forever".
        self.max_retries: int | None = (app.conf.task_default_max_retries
                                        if isinstance(max_retries, EllipsisType) else max_retries)
        self.default_retry_delay = (app.conf.task_default_retry_delay
                                    if default_retry_delay is None else float(default_retry_delay))
        self.autoretry_for = tuple(autoretry_for)
        self.dont_autoretry_for = tuple(dont_autoretry_for)
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.retry_jitter = retry_jitter
        self.expires = expires
        self.ignore_result = ignore_result
        self.dead_letter_failures = dead_letter_failures
        self._local = threading.local()
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__module__ = getattr(fn, "__module__", __name__)
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    @classmethod
    def class_options(cls) -> dict[str, Any]:
        """Options a subclass sets as class attributes (``max_retries = 5``,
        ``autoretry_for = (...)``, ``acks_late = True``...): defaults for its tasks."""
        names = set(inspect.signature(Task.__init__).parameters) - {"self", "app", "fn", "name",
                                                                     "bind"}
        found: dict[str, Any] = {}
        for klass in reversed(cls.__mro__[:cls.__mro__.index(Task)]):
            found.update({k: v for k, v in vars(klass).items() if k in names})
        return found

    @functools.cached_property
    def call_signature(self) -> inspect.Signature | None:
        """The function's signature, to check arguments before running (None if unknown)."""
        try:
            return inspect.signature(self.fn)
        except (TypeError, ValueError):
            return None

    # -- running here -------------------------------------------------------------------
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the task body in this process (no broker, no retry handling)."""
        if self.bind:
            return self.fn(self, *args, **kwargs)
        return self.fn(*args, **kwargs)

    @property
    def request(self) -> Request:
        """The invocation being run by this thread (a blank one outside a worker)."""
        req = getattr(self._local, "request", None)
        return req if req is not None else Request(id="", task=self.name)

    def _push_request(self, request: Request | None) -> None:
        self._local.request = request

    # -- class-based tasks and hooks (override in a subclass; see ``base=``) -------------
    def run(self, *args: Any, **kwargs: Any) -> Any:
        """The body of a class-based task (subclasses define it)."""
        raise NotImplementedError

    def on_success(self, retval: Any, task_id: str, args: list[Any],
                   kwargs: dict[str, Any]) -> None:
        """Called in the worker after a success is recorded."""

    def on_failure(self, exc: BaseException, task_id: str, args: list[Any],
                   kwargs: dict[str, Any], einfo: ExceptionInfo) -> None:
        """Called in the worker after a failure is recorded."""

    def on_retry(self, exc: BaseException | None, task_id: str, args: list[Any],
                 kwargs: dict[str, Any], einfo: ExceptionInfo | None) -> None:
        """Called in the worker after a retry is recorded and sent."""

    def after_return(self, status: str, retval: Any, task_id: str, args: list[Any],  # noqa: PLR0917 - Celery's signature
                     kwargs: dict[str, Any], einfo: ExceptionInfo | None) -> None:
        """Called in the worker after any outcome (``status`` is its state); ``retval`` is
        the return value or the exception."""

    def update_state(self, task_id: str | None = None, state: str = "PROGRESS",
                     meta: Any = None) -> None:
        """Record a progress state (any name but the terminal ones) with ``meta``, readable
        from ``AsyncResult.state`` and ``.info`` while the task runs. Never overwrites an
        outcome: once the task finishes, its final state wins."""
        from conveyor.progress import store_progress

        store_progress(self, task_id or self.request.id, state, meta)

    # -- sending --------------------------------------------------------------------------
    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send with positional and keyword arguments; returns an :class:`AsyncResult`."""
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Iterable[Any] | None = None,
                    kwargs: dict[str, Any] | None = None, *,
                    countdown: float | None = None,
                    eta: datetime | str | float | None = None,
                    expires: datetime | str | float | None = None, queue: str | None = None,
                    task_id: str | None = None, max_retries: int | None = None,
                    priority: int | None = None, message_group: str | None = None,
                    link: Any = None,
                    link_error: Any = None, argsrepr: str | None = None,
                    kwargsrepr: str | None = None) -> AsyncResult[R]:
        """Send the task. ``countdown``: seconds from now (a number); ``eta``: a datetime
        (naive means local time), an ISO 8601 string or epoch seconds; ``expires``: seconds
        from now or a point in time after which it is not run (see :mod:`conveyor.timing`).
        ``link`` / ``link_error``: a signature or a list of them, run with the result /
        on failure (see :meth:`Signature.link`). ``argsrepr`` / ``kwargsrepr``: what logs
        and the dashboard show instead of the arguments (Celery's options of those names).
        ``message_group``: messages of one group are delivered in send order by a broker
        declaring ``message_groups`` (an SQS FIFO queue; kombu's ``MessageGroupId``); other
        brokers ignore it.

        Raises :class:`~conveyor.exceptions.TaskOptionError` (one line naming the argument) for
        a countdown that is no number or negative, an eta/expires of the wrong type or in the
        past, and :class:`~conveyor.exceptions.SerializationError` for
        arguments that cannot be encoded, before anything is sent.
        """
        if link is not None or link_error is not None or self.app.conf.task_always_eager:
            from conveyor.canvas.engine import send_linked

            return send_linked(self, args, kwargs, link=link, link_error=link_error,
                               countdown=countdown, eta=eta, expires=expires, queue=queue,
                               task_id=task_id, max_retries=max_retries, priority=priority,
                               argsrepr=argsrepr, kwargsrepr=kwargsrepr,
                               message_group=message_group)
        return self.app.send_task(
            self.name, args, kwargs, countdown=countdown, eta=eta,
            expires=expires if expires is not None else self.expires,
            queue=queue or self.queue, task_id=task_id, max_retries=max_retries,
            priority=priority if priority is not None else self.priority,
            argsrepr=argsrepr, kwargsrepr=kwargsrepr,
            message_group=message_group if message_group is not None else self.message_group)

    def apply(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
              **options: Any) -> Any:
        """Run the task in this process and return an :class:`~conveyor.result.EagerResult`
        (``link`` / ``link_error`` run here too); no broker, no backend."""
        from conveyor.canvas import Signature

        return Signature(self.name, args, kwargs, options, app=self.app).apply()

    def replace(self, sig: Signature) -> Any:
        """Replace this running task with ``sig``: ``raise self.replace(other.s())``.

        Always raises. The task's result becomes ``sig``'s (it runs under this task's id)
        and whatever followed this task in its chain or chord follows ``sig`` instead."""
        from conveyor.exceptions import Replace

        raise Replace(sig)

    def map(self, arguments: Iterable[Sequence[Any]], *,
            queue: str | None = None) -> GroupResult:
        """Send one task per argument tuple in one batch; returns a :class:`GroupResult`."""
        from conveyor.ids import new_id
        from conveyor.result import AsyncResult, GroupResult

        group_id = new_id()
        queue = queue or self.queue
        # A batch makes several objects per message and none refers back to another, so the
        # cyclic collector has nothing to find; left on, it ran repeatedly while the batch
        # grew (full collections of the whole heap among them): 40% of building 10,000.
        collecting = gc.isenabled()
        gc.disable()
        try:
            batch = self.app.build_many(self.name, arguments, queue=queue, group=group_id)
            self.app.publish(batch)
            return GroupResult([AsyncResult(o.message.id, app=self.app) for o in batch],
                               id=group_id)
        finally:
            if collecting:
                gc.enable()

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature: this task with (partial) arguments, for chains and groups."""
        from conveyor.canvas import Signature

        return Signature(self.name, args, kwargs, app=self.app)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: a chain does not prepend the previous result to it."""
        from conveyor.canvas import Signature

        return Signature(self.name, args, kwargs, immutable=True, app=self.app)

    def signature(self, args: Iterable[Any] | None = None,
                  kwargs: dict[str, Any] | None = None, **options: Any) -> Signature:
        """A signature with sending options: ``add.signature((2, 2), countdown=10)``."""
        from conveyor.canvas import Signature

        return Signature(self.name, args, kwargs, options, app=self.app)

    subtask = signature

    # -- retrying -------------------------------------------------------------------------
    def retry(self, args: Iterable[Any] | None = None,  # noqa: PLR0917 - Celery's signature
              kwargs: dict[str, Any] | None = None, exc: BaseException | None = None,
              throw: bool = True, eta: datetime | float | None = None,
              countdown: float | None = None, max_retries: int | None = None, *,
              queue: str | None = None, priority: int | None = None) -> Retry:
        """Ask for another attempt: ``raise self.retry(exc=exc, countdown=10)``, Celery's
        arguments in Celery's order.

        Always raises. :class:`Retry` when a retry is allowed; when ``max_retries`` is used
        up, ``exc`` itself if given (as Celery does) or :class:`MaxRetriesExceededError`.
        ``args``/``kwargs`` replace the arguments of the next attempt; ``queue`` and
        ``priority`` send it elsewhere or at another priority. ``throw=False`` (Celery: send
        the retry and carry on) is refused: here the worker sends the retry when the task
        raises it, so a task that carried on would have no retry.
        """
        if not throw:
            raise TaskOptionError("retry(throw=False) is not supported: raise self.retry(...) "
                                  "and let the worker send the next attempt")
        if priority is not None and (not isinstance(priority, int) or not 0 <= priority <= 9):
            raise TaskOptionError(f"retry(priority={priority!r}): give an integer 0..9")
        req = self.request
        limit = max_retries if max_retries is not None else (
            req.max_retries if req.max_retries is not None else self.max_retries)
        if limit is not None and req.retries >= limit:
            req.retries_exhausted = True
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"{self.name}[{req.id}] retried {req.retries} times, max_retries={limit}")
        from conveyor import timing

        if eta is not None:
            delay = max(0.0, timing.timestamp("eta", eta) - time.time())
        elif countdown is not None:
            delay = timing.seconds("countdown", countdown)
        else:
            delay = self.backoff_delay(req.retries)
        raise Retry(exc=exc, when=delay, max_retries=max_retries,
                    args=list(args) if args is not None else None,
                    kwargs=dict(kwargs) if kwargs is not None else None,
                    queue=queue, priority=priority)

    def backoff_delay(self, retries: int) -> float:
        """The delay before retry number ``retries + 1``: ``default_retry_delay``, or with
        ``retry_backoff`` ``factor * 2**retries`` capped at ``retry_backoff_max`` and
        jittered (uniform between 0 and the delay) when ``retry_jitter``."""
        if not self.retry_backoff:
            return self.default_retry_delay
        factor = 1.0 if self.retry_backoff is True else float(self.retry_backoff)
        delay = min(factor * (2 ** retries), self.retry_backoff_max)
        if self.retry_jitter:
            delay = random.uniform(0, delay)
        return float(delay)

    def should_autoretry(self, exc: BaseException) -> bool:
        """True when ``exc`` matches ``autoretry_for`` and not ``dont_autoretry_for``."""
        return (bool(self.autoretry_for) and isinstance(exc, self.autoretry_for)
                and not (self.dont_autoretry_for and isinstance(exc, self.dont_autoretry_for)))
