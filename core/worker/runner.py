"""Runs one reserved message through its whole life: the core's guarantees live here.

Order of effects, so that a crash at any point loses nothing:
record the outcome in the backend -> send follow-ups (retry, next chain step) -> ack.
A crash before the ack means the lease runs out and the message is delivered again; the
first-terminal-write-wins rule then keeps the first outcome.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from conveyor.app import Outgoing
from conveyor.backend import StoredRecord
from conveyor.broker import Reservation
from conveyor.canvas import followups as canvas
from conveyor.exceptions import (
    ConveyorError,
    MessageDecodeError,
    Reject,
    Replace,
    Retry,
    SerializationError,
    Terminated,
    TimeLimitExceeded,
    ValueRefusedError,
    describe,
)
from conveyor.message import Message
from conveyor.ratelimit import RateLimiter
from conveyor.record import Attempt, TaskRecord, request_fields
from conveyor.states import FAILURE, RETRY, REVOKED, STARTED, SUCCESS
from conveyor.task import Request, Task
from conveyor.worker import hooks
from conveyor.worker.completer import Completion
from conveyor.worker.limits import TimeLimits
from conveyor.worker.poison import PoisonGuard
from conveyor.worker.started import AlreadyFinished, StartedWriter

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.control.revoke import RevokedCache

log = logging.getLogger("conveyor.worker")
T = TypeVar("T")

#: How long to keep retrying a backend/broker write before giving the message up to
#: redelivery (the lease is extended meanwhile, so nothing is lost either way).
WRITE_PATIENCE = 120.0
#: Most argument shapes remembered as binding (see ``TaskRunner._check_signature``).
SHAPES = 4096


@dataclass
class Job:
    """One delivery being run: the reservation, its message, the task, the attempts so far
    and the attempt in progress."""

    res: Reservation
    msg: Message
    task: Task[Any, Any]
    history: list[dict[str, Any]]
    attempt: Attempt


@dataclass(slots=True)
class Pickup:
    """What the fetch thread learned about one reserved message before any body runs: the
    decoded message (or why it could not be decoded) and the task id's record at pick-up if
    it was terminal (None otherwise).

    ``checked`` is False when the backend could not be read then: the runner reads it itself
    before running the task."""

    msg: Message | None
    error: MessageDecodeError | None = None
    record: StoredRecord | None = None
    checked: bool = False


class TaskRunner:
    """Handles reservations for one worker process. Thread-safe: keeps no per-message state."""

    def __init__(self, app: Conveyor, *, hostname: str,
                 stopping: Callable[[], bool] = lambda: False,
                 defer: Callable[[Completion], None] | None = None) -> None:
        self.app = app
        self.hostname = hostname
        self._stopping = stopping
        #: Where successful tasks go to be recorded and acked in batches (None: do it here).
        self.defer = defer
        #: Whether the completer has work queued (then results go to it, not straight out).
        self.completer_busy: Callable[[], bool] = lambda: False
        #: Writes first deliveries' STARTED behind the task (None: written before it runs).
        self.started: StartedWriter | None = None
        #: Enforces time limits on running tasks (None: not enforced, e.g. in unit tests).
        self.limits: TimeLimits | None = None
        self.rate_limiter = RateLimiter(app)
        #: Ids revoked cluster-wide, refreshed by the worker's agent (None: not checked).
        self.revoked: RevokedCache | None = None
        #: Tasks running now: task id -> (task name, started at, thread id), for the registry
        #: and ``revoke(terminate=True)``.
        self.active: dict[str, tuple[str, float, int]] = {}
        #: Tasks that ended in FAILURE here.
        self.failed = 0
        self._terminate_lock = threading.Lock()
        self._terminating: set[str] = set()
        #: Retries scheduled here (for the worker's exit summary).
        self.retried = 0
        self.poison = PoisonGuard(self)
        #: Argument shapes that bound to their task's signature (see _check_signature).
        self._shapes: set[tuple[Any, ...]] = set()

    # -- entry point ----------------------------------------------------------------------
    def pickup(self, batch: list[Reservation]) -> list[Pickup]:
        """Decode a reserved batch and read its task ids' terminal records in one
        ``finished_many``: the duplicate and revoke check of every delivery, before any body
        runs (called by the fetch thread, so under load it overlaps the tasks running
        meanwhile). Only terminal records matter here, and the drivers read just those.

        A backend that cannot be read now leaves the batch unchecked (each task then reads
        its own record before it runs, with the usual patience)."""
        picked: list[Pickup] = []
        for res in batch:
            try:
                picked.append(Pickup(Message.decode(res.body, self.app.signer)))
            except MessageDecodeError as exc:
                picked.append(Pickup(None, exc))
        ids = [p.msg.id for p in picked if p.msg is not None]
        if not ids:
            return picked
        try:
            found = self.app.backend.finished_many(ids)
        except ConveyorError as exc:
            log.debug("pick-up check deferred to the executors: %s", exc)
            return picked
        for p in picked:
            if p.msg is not None:
                p.record, p.checked = found.get(p.msg.id), True
        return picked

    def handle(self, res: Reservation, pickup: Pickup | None = None) -> bool:
        """Run ``res`` to completion: decode, check, run, record, follow up, ack.

        ``pickup`` is what :meth:`pickup` learned (None: decode and check here). Returns True
        when the last steps were handed to :attr:`defer` (the completer), which then owns
        the reservation. A message delivered more than ``broker_max_deliveries`` times, or
        whose outcome the backend refuses, is dead-lettered instead of looping.
        """
        if self.poison.over_delivered(res):
            return False
        try:
            return self._handle(res, pickup)
        except ValueRefusedError as exc:
            self.poison.refused(res, exc)
            return False

    def _handle(self, res: Reservation, pickup: Pickup | None) -> bool:
        app = self.app
        if pickup is None:
            try:
                pickup = Pickup(Message.decode(res.body, app.signer))
            except MessageDecodeError as exc:
                pickup = Pickup(None, exc)
        msg = pickup.msg
        if msg is None:
            self._dead_letter(res, f"undecodable message: {pickup.error}")
            return False
        try:
            found = pickup.record if pickup.checked else self._reliably(
                lambda: app.backend.get(msg.id))
        except ValueRefusedError as exc:
            # An id the backend cannot even look up (a NUL on PostgreSQL): its outcome
            # could never be stored either, so it is dead-lettered before it runs.
            self.poison.refused(res, exc, what="task id")
            return False
        if found is not None and found.ready:
            # The duplicate rule, for every delivery: a task id with a terminal record is
            # acked without running (a redelivery, a second send of one id, a replay, or a
            # revoke: REVOKED is terminal).
            return self._known_terminal(res, msg, found)
        now = time.time()
        early = (msg.eta - now) if msg.eta is not None else 0.0
        if early > 0.5:
            # The broker's max_delay cut the delay short: send it on its next hop.
            self._reliably(lambda: app.enqueue([Outgoing(msg, res.queue, early)]))
            self._ack(res)
            return False
        task = app.tasks.get(msg.task)
        if task is None:
            reason = (f"unknown task {msg.task!r}: the worker does not know it; make sure "
                      "the module defining it is imported by the app given with -A")
            self._finish_rejected(res, msg, reason, "conveyor.exceptions.NotRegisteredError")
            return False
        if msg.expires is not None and now > msg.expires:
            expired = ("conveyor.exceptions.TaskRevokedError",
                       f"expired at {msg.expires:.3f}, {now - msg.expires:.1f}s before it "
                       "could run")
            self._store(self._record(msg, res, REVOKED, error=expired))
            self._canvas_failure(msg, expired, None)
            self._ack(res)
            hooks.revoked(task, Request(id=msg.id, task=msg.task, queue=res.queue,
                                        hostname=self.hostname), expired=True)
            return False
        try:
            args, kwargs = msg.arguments(app.task_codec)
            self._check_signature(task, args, kwargs)
        except (MessageDecodeError, TypeError) as exc:
            self._finish_rejected(res, msg, f"bad arguments for {msg.task}: {exc}",
                                  f"{type(exc).__module__}.{type(exc).__qualname__}")
            return False
        if self.revoked is not None and msg.id in self.revoked:
            return self._skip_revoked(res, msg, task, args, kwargs)
        if task.rate is not None and self._rate_limited(res, msg, task):
            return False
        return self._run(res, msg, task, canvas.call_arguments(msg, args), kwargs)

    def _known_terminal(self, res: Reservation, msg: Message, found: StoredRecord) -> bool:
        """``msg``'s task id held the terminal record ``found`` at pick-up: a REVOKED one is
        skipped as revoked, any other is acked as a duplicate. Nothing runs."""
        task = self.app.tasks.get(msg.task)
        if found.state == REVOKED and task is not None:
            try:
                args, kwargs = msg.arguments(self.app.task_codec)
            except MessageDecodeError:
                args, kwargs = [], {}
            return self._skip_revoked(res, msg, task, args, kwargs)
        log.info("task %s[%s] already finished (%s); acking the duplicate", msg.task, msg.id,
                 found.state)
        self._reissue_followups(msg, found)
        self._ack(res)
        return False

    def _skip_revoked(self, res: Reservation, msg: Message, task: Task[Any, Any],
                      args: list[Any], kwargs: dict[str, Any]) -> bool:
        """A revoked task (its REVOKED record is stored already): ack without running."""
        log.info("task %s[%s] was revoked; not running it", msg.task, msg.id)
        self._canvas_failure(msg, ("conveyor.exceptions.TaskRevokedError",
                                   f"parent task {msg.task}[{msg.id}] was revoked"), None)
        self._ack(res)
        hooks.revoked(task, Request(id=msg.id, task=msg.task, args=args, kwargs=kwargs,
                                    queue=res.queue, hostname=self.hostname))
        return False

    def _rate_limited(self, res: Reservation, msg: Message, task: Task[Any, Any]) -> bool:
        """Over the task's cluster-wide rate: send the message again, due when its turn
        comes, and ack this copy (a fresh message: no attempt is counted)."""
        wait = self._reliably(lambda: self.rate_limiter.delay_for(task, msg.id))
        if wait <= 0:
            return False
        log.debug("task %s[%s] rate-limited: again in %.2fs", msg.task, msg.id, wait)
        self._reliably(lambda: self.app.enqueue([Outgoing(msg, res.queue, wait)]))
        self._ack(res)
        return True

    # -- running --------------------------------------------------------------------------
    def _run(self, res: Reservation, msg: Message, task: Task[Any, Any], args: list[Any],
             kwargs: dict[str, Any]) -> bool:
        app = self.app
        history = list(msg.history)
        # Deliveries before this one ended without an outcome: their worker died or lost
        # its lease. Record them so the history shows what happened.
        for _ in range(res.attempts - 1):
            history.append(Attempt(len(history) + 1, None, None, outcome="lost").to_dict())
        job = Job(res, msg, task, history, Attempt(len(history) + 1, self.hostname, time.time()))
        if not self._start(job):
            return self._already_finished(job)
        if not (task.acks_late if task.acks_late is not None else app.conf.task_acks_late):
            self._ack(res)
        request = Request(id=msg.id, task=msg.task, args=args, kwargs=kwargs,
                          retries=msg.retries, max_retries=msg.max_retries, queue=res.queue,
                          hostname=self.hostname, delivery_attempt=res.attempts,
                          eta=msg.eta, expires=msg.expires, **canvas.request_fields(msg))
        if self.started is not None:
            request.settle_started = self.started.settle
        task._push_request(request)
        self.active[msg.id] = (msg.task, job.attempt.started_at or 0.0, threading.get_ident())
        hooks.prerun(task, request)
        watch = self.limits.watch(job, task) if self.limits is not None else None
        try:
            try:
                value = task.fn(task, *args, **kwargs) if task.bind else task.fn(*args, **kwargs)
            finally:
                if watch is not None:
                    watch.done()
                self._left_body(msg.id)
                if self.started is not None and self.started.settle(msg.id):
                    # Before any outcome is stored (its STARTED must not land after it):
                    # the STARTED write found a terminal record, so this was a duplicate.
                    raise AlreadyFinished(msg.id)
            if watch is not None and watch.expired:
                return False  # the hard time limit recorded the failure; this came too late
        except AlreadyFinished:
            return self._already_finished(job)
        except Retry as signal:
            if watch is not None and watch.expired:
                return False
            self._retry(job, signal, signal.exc)
            hooks.finished(task, request, RETRY, None, exc=signal.exc)
            return False
        except Replace as signal:
            self._replace(job, signal.sig)
            return False
        except Reject as exc:
            attempt = self._close(job.attempt, "rejected", exc)
            self._finish_rejected(res, msg, f"rejected by task: {exc.reason}",
                                  describe(exc)["type"], history=[*history, attempt.to_dict()])
            return False
        except Exception as exc:
            if watch is not None and watch.expired:
                return False
            if isinstance(exc, Terminated):
                # revoke(terminate=True): the REVOKED record is stored already.
                self._canvas_failure(msg, ("conveyor.exceptions.TaskRevokedError",
                                   f"parent task {msg.task}[{msg.id}] was revoked"), None)
                self._ack(res)
                hooks.revoked(task, request, terminated=True)
                return False
            tb = traceback.format_exc()
            if task.should_autoretry(exc) and not request.retries_exhausted:
                try:
                    task.retry(**{"exc": exc, "countdown": task.backoff_delay(msg.retries),
                                  **task.retry_kwargs})
                except Retry as signal:
                    self._retry(job, signal, exc)
                    hooks.finished(task, request, RETRY, None, exc=exc, tb=tb)
                    return False
                except BaseException:  # retries used up: fall through to FAILURE
                    pass
            self._fail(job, exc, tb, exhausted=request.retries_exhausted)
            self.failed += 1
            hooks.finished(task, request, FAILURE, None, exc=exc, tb=tb)
            return False
        finally:
            task._push_request(None)
            self.active.pop(msg.id, None)
        deferred = self._succeed(job, value)
        hooks.finished(task, request, SUCCESS, value)
        return deferred

    def terminate(self, task_id: str) -> bool:
        """Raise :class:`Terminated` inside the running task ``task_id`` (for
        ``revoke(terminate=True)``); False when it is not running here (any more)."""
        from conveyor.worker.limits import raise_in_thread

        with self._terminate_lock:
            entry = self.active.get(task_id)
            if entry is None or task_id in self._terminating:
                return False
            self._terminating.add(task_id)
            return raise_in_thread(entry[2], Terminated)

    def _left_body(self, task_id: str) -> None:
        # From here on no Terminated may be raised in this thread: it would land in the
        # runner's own bookkeeping. Cancel one scheduled but not yet delivered.
        with self._terminate_lock:
            self.active.pop(task_id, None)
            if task_id in self._terminating:
                from conveyor.worker.limits import raise_in_thread

                self._terminating.discard(task_id)
                raise_in_thread(threading.get_ident(), None)

    def time_limit_exceeded(self, job: Job, limit: float) -> None:
        """Record ``job`` as FAILURE with TimeLimitExceeded (called by the time-limit
        monitor while the task's thread is still stuck in it)."""
        if self.started is not None:
            self.started.settle(job.msg.id)
        exc = TimeLimitExceeded(f"{job.msg.task}[{job.msg.id}] ran past its time_limit of "
                                f"{limit:g}s and was ended")
        self._fail(job, exc, None, exhausted=False)
        self.failed += 1
        self.active.pop(job.msg.id, None)
        msg = job.msg
        args, kwargs = msg.arguments(self.app.task_codec)
        hooks.finished(job.task, Request(id=msg.id, task=msg.task, args=args, kwargs=kwargs,
                                         retries=msg.retries, queue=job.res.queue,
                                         hostname=self.hostname),
                       FAILURE, None, exc=exc)

    def _start(self, job: Job) -> bool:
        """Record STARTED as configured; False when the task already has an outcome.

        Every delivery's record was read at pick-up. A redelivery also writes STARTED
        synchronously: its earlier delivery may still be finishing elsewhere (a lost lease).
        A first delivery's STARTED goes to the write-behind :attr:`started` writer when there
        is one (it reports a terminal record written since the pick-up: a duplicate running
        at the same moment on two workers).
        """
        msg, res = job.msg, job.res
        if not self.app.conf.task_track_started:
            return True  # the record was read at pick-up
        if res.attempts <= 1 and self.started is not None and not msg.history:
            # The write-behind STARTED still checks: settle() reports a terminal record.
            # Built only if written (most short tasks settle it first).
            self.started.add_later(msg.id, lambda: self._record(
                msg, res, STARTED, attempts=[*job.history, job.attempt.to_dict()]).to_stored())
            return True
        return self._store(self._record(msg, res, STARTED,
                                        attempts=[*job.history, job.attempt.to_dict()]))

    def _already_finished(self, job: Job) -> bool:
        """A delivery of a task id that already holds a terminal record (a redelivery, a
        duplicate send, a replay): ack it without storing anything. Returns False."""
        log.info("task %s[%s] already finished; acking the duplicate", job.msg.task, job.msg.id)
        self._reissue_followups(job.msg)
        self._ack(job.res)
        return False

    def _reissue_followups(self, msg: Message, found: StoredRecord | None = None) -> None:
        """Send a finished workflow task's follow-ups again (same ids: run once), in case
        the delivery that finished it died before sending them."""
        if canvas.is_plain(msg):
            return
        if found is None:
            found = self._reliably(lambda: self.app.backend.get(msg.id))
        followups = canvas.reissue(self.app, msg, found, self._reliably)
        if followups:
            self._reliably(lambda: self.app.enqueue(followups))

    def _replace(self, job: Job, sig: Any) -> None:
        """``self.replace(sig)``: send ``sig`` under this task's id with its follow-ups."""
        followups = canvas.replaced(self.app, job.msg, sig, self._reliably,
                                    queue=job.res.queue)
        self._reliably(lambda: self.app.enqueue(followups))
        self._ack(job.res)

    def _canvas_failure(self, msg: Message, error: tuple[str, str], tb: str | None,
                        args: Any = None, kwargs: Any = None) -> None:
        """A failed workflow task's follow-ups: the rest of its chain fails with its own
        error, errbacks are sent, its chord is joined."""
        followups = canvas.after_failure(self.app, msg, error, tb, self._reliably,
                                         args=args, kwargs=kwargs)
        if followups:
            self._reliably(lambda: self.app.enqueue(followups))

    def _succeed(self, job: Job, value: Any) -> bool:
        msg, res, task = job.msg, job.res, job.task
        try:
            result_type, packed = self.app.result_codec.pack(value)
        except SerializationError as exc:
            self._fail(job, exc, None, exhausted=False)
            return False
        attempt = self._close(job.attempt, "success")
        record = self._record(msg, res, SUCCESS, attempts=[*job.history, attempt.to_dict()])
        if not canvas.is_plain(msg):
            record.children = canvas.children_of(msg)
        record.result, record.result_type = (None, "json") if task.ignore_result else (
            packed, result_type)
        # A chord's completer reads every member's outcome: store it before joining.
        joins = canvas.joins_chord(msg)
        if joins and not self._store(record):
            return self._already_finished(job)
        followups = canvas.after_success(self.app, msg, value, self._reliably)
        if joins and followups:
            # This task completed its chord: start the body now, not behind a batch.
            self._reliably(lambda: self.app.enqueue(followups))
            followups = []
        if not joins and self.defer is not None and self.completer_busy():
            # Under load: the completer stores it with others in one round trip.
            self.defer(Completion(res, followups, record.to_stored()))
            return True
        if not joins and not self._store(record):
            return self._already_finished(job)
        if self.defer is not None:
            # Nobody waits for follow-ups and acks: the completer batches them.
            self.defer(Completion(res, followups))
            return True
        if followups:
            self._reliably(lambda: self.app.enqueue(followups))
        self._ack(res)
        return False

    def _retry(self, job: Job, signal: Retry, exc: BaseException | None) -> None:
        self.retried += 1
        msg, res = job.msg, job.res
        delay = max(0.0, signal.when if signal.when is not None else job.task.default_retry_delay)
        attempt = self._close(job.attempt, "retry", exc)
        attempts = [*job.history, attempt.to_dict()]
        nxt = replace(msg, retries=msg.retries + 1, eta=time.time() + delay, history=attempts,
                      max_retries=signal.max_retries if signal.max_retries is not None
                      else msg.max_retries)
        if signal.args_override is not None or signal.kwargs_override is not None:
            # retry(args=, kwargs=): the next attempt runs with these (Celery's).
            old_args, old_kwargs = msg.arguments(self.app.task_codec)
            content_type, args, kwargs = Message.pack_arguments(
                self.app.task_codec,
                signal.args_override if signal.args_override is not None else old_args,
                signal.kwargs_override if signal.kwargs_override is not None else old_kwargs)
            nxt = replace(nxt, content_type=content_type, args=args, kwargs=kwargs)
        if signal.priority is not None:
            nxt = replace(nxt, priority=signal.priority)
        queue = signal.queue or res.queue
        record = self._record(nxt, res, RETRY, attempts=attempts,
                              error=self._error(exc) if exc else None)
        log.info("task %s[%s] retry %d in %.1fs: %s", msg.task, msg.id, nxt.retries, delay,
                 exc and describe(exc)["message"])
        # RETRY is stored before the next attempt exists, so it never overwrites its STARTED.
        if not self._store(record):
            self._already_finished(job)
            return
        self._reliably(lambda: self.app.enqueue([Outgoing(nxt, queue, delay)]))
        self._ack(res)

    def _fail(self, job: Job, exc: BaseException, tb: str | None, *, exhausted: bool) -> None:
        msg, res, task = job.msg, job.res, job.task
        attempt = self._close(job.attempt, "failure", exc)
        record = self._record(msg, res, FAILURE, attempts=[*job.history, attempt.to_dict()],
                              error=self._error(exc), traceback_text=tb)
        dead = exhausted or (task.dead_letter_failures if task.dead_letter_failures is not None
                             else self.app.conf.task_dead_letter_failures)
        if exhausted:
            record.dead_letter_reason = (f"max retries exceeded ({msg.retries}): "
                                         f"{describe(exc)['type']}: {exc}")
        elif dead:
            record.dead_letter_reason = f"failed: {describe(exc)['type']}: {exc}"
        log.warning("task %s[%s] failed: %s: %s", msg.task, msg.id, type(exc).__name__, exc)
        # Dead-letter before recording FAILURE: a redelivery after a crash in between finds
        # no terminal record and does the work again, instead of acking a message whose
        # dead letter was never written.
        if record.dead_letter_reason:
            self._dead_letter(res, record.dead_letter_reason)
        self._store(record)
        self._canvas_failure(msg, self._error(exc), tb)
        if not record.dead_letter_reason:
            self._ack(res)

    def _finish_rejected(self, res: Reservation, msg: Message, reason: str, error_type: str,
                         *, history: list[dict[str, Any]] | None = None) -> None:
        """FAILURE in the backend, the message in the dead-letter queue with ``reason``."""
        record = self._record(msg, res, FAILURE, attempts=history or list(msg.history),
                              error=(error_type, reason))
        record.dead_letter_reason = reason
        self._dead_letter(res, reason)
        self._store(record)
        self._canvas_failure(msg, (error_type, reason), None)

    # -- helpers --------------------------------------------------------------------------
    def _check_signature(self, task: Task[Any, Any], args: list[Any],
                         kwargs: dict[str, Any]) -> None:
        """Raise TypeError when the task cannot be called with these arguments. Whether a
        call binds depends only on how many positional arguments and which keywords it
        has, so each shape that bound is remembered (a few per task)."""
        sig = task.call_signature
        if sig is None:
            return
        shape = (task.name, len(args), *kwargs) if kwargs else (task.name, len(args))
        if shape in self._shapes:
            return
        if task.bind:
            sig.bind(None, *args, **kwargs)
        else:
            sig.bind(*args, **kwargs)
        if len(self._shapes) >= SHAPES:
            self._shapes.clear()  # hostile callers inventing keywords: start again
        self._shapes.add(shape)

    @staticmethod
    def _close(attempt: Attempt, outcome: str, exc: BaseException | None = None) -> Attempt:
        error = describe(exc) if exc is not None else {"type": None, "message": None}
        return Attempt(attempt.number, attempt.worker, attempt.started_at, time.time(),
                       outcome, error["type"], error["message"])

    @staticmethod
    def _error(exc: BaseException) -> tuple[str, str]:
        info = describe(exc)
        return info["type"], info["message"]

    def _record(self, msg: Message, res: Reservation, state: str, *,
                attempts: list[dict[str, Any]] | None = None,
                error: tuple[str, str] | None = None,
                traceback_text: str | None = None) -> TaskRecord:
        now = time.time()
        return TaskRecord(
            msg.id, str(state), task=msg.task, queue=res.queue, retries=msg.retries,
            attempts=attempts if attempts is not None else list(msg.history),
            worker=self.hostname, updated_at=now,
            date_done=now if state in (SUCCESS, FAILURE, REVOKED) else None,
            parent=msg.parent, group=msg.group,
            error_type=error[0] if error else None, error_message=error[1] if error else None,
            traceback=traceback_text,
            **request_fields(msg, extended=self.app.conf.result_extended))

    def _store(self, record: TaskRecord) -> bool:
        stored = record.to_stored()
        ttl = self.app.conf.result_expires
        return self._reliably(lambda: self.app.backend.store(stored, ttl=ttl))

    def _ack(self, res: Reservation) -> None:
        self._reliably(lambda: self.app.broker.ack(res))

    def _dead_letter(self, res: Reservation, reason: str) -> None:
        log.error("message %s on %r dead-lettered: %s", res.message_id, res.queue, reason)
        self._reliably(lambda: self.app.broker.dead_letter(res, reason=reason))

    def _reliably(self, op: Callable[[], T]) -> T:
        """Run a broker/backend write, retrying retryable errors with backoff for up to
        :data:`WRITE_PATIENCE` seconds (the heartbeat keeps the lease meanwhile)."""
        deadline = time.monotonic() + WRITE_PATIENCE
        pause = 0.1
        failing_since: float | None = None
        while True:
            try:
                value = op()
            except ConveyorError as exc:
                if not exc.retryable or time.monotonic() > deadline or self._stopping():
                    raise
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("server unavailable (%s): retrying with backoff", exc)
                time.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            if failing_since is not None:
                log.warning("server reachable again after %.1fs",
                            time.monotonic() - failing_since)
            return value
