"""One worker process: a fetch loop, a pool of executor threads, and a lease heartbeat.

The fetch loop reserves straight from the broker (no IPC hop), never holding more than
``concurrency * prefetch_multiplier`` messages. The heartbeat extends the lease of every
held message, so a long task is never handed to a second worker while this one is alive,
and a dead worker's messages come back after one short lease.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from typing import TYPE_CHECKING

from conveyor import signals
from conveyor.broker import Broker, Reservation
from conveyor.control.agent import WorkerAgent
from conveyor.exceptions import (
    AuthenticationError,
    ConfigurationError,
    ConveyorError,
    MissingDependencyError,
)
from conveyor.outage import OutageLog
from conveyor.worker.completer import Completer, Completion
from conveyor.worker.limits import TimeLimits
from conveyor.worker.runner import Job, Pickup, TaskRunner
from conveyor.worker.started import StartedWriter

if TYPE_CHECKING:
    from conveyor.app import Conveyor

log = logging.getLogger("conveyor.worker")

#: Exit code of a worker process that must be re-executed (a thread is stuck past a hard
#: time limit); ``conveyor worker`` re-executes itself on it.
RECYCLE = 75

#: Tasks shorter than this on average (seconds) are worth prefetching.
SHORT_TASK = 0.1


def _is_fatal(exc: ConveyorError) -> bool:
    """Errors no amount of waiting fixes: refused credentials, missing database, bad config,
    a driver's client library not installed."""
    return isinstance(exc, AuthenticationError | ConfigurationError | MissingDependencyError)


def default_hostname() -> str:
    """``host:pid``: names this worker in attempt histories."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Consumer:
    """Consumes ``queues`` with ``concurrency`` threads until :meth:`stop` is called."""

    def __init__(self, app: Conveyor, *, queues: list[str] | None = None,
                 concurrency: int | None = None, prefetch_multiplier: int | None = None,
                 hostname: str | None = None) -> None:
        conf = app.conf
        self.app = app
        self.queues = queues or [conf.task_default_queue]
        self.concurrency = max(1, concurrency or conf.worker_concurrency)
        self._multiplier = max(1, prefetch_multiplier or conf.worker_prefetch_multiplier)
        self.prefetch_limit = self.concurrency * self._multiplier
        #: Moving average of task run times; prefetch only while tasks are short.
        self._avg_run: float | None = None
        self.hostname = hostname or default_hostname()
        self.lease = conf.broker_visibility_timeout
        self._stop = threading.Event()
        self._abort = threading.Event()
        #: The broker the fetch loop waits on, woken by :meth:`stop`.
        self._reserving: Broker | None = None
        self._held: dict[str, Reservation] = {}
        self._held_lock = threading.Condition()
        self._work: queue.Queue[tuple[Reservation, Pickup] | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self.runner = TaskRunner(app, hostname=self.hostname, stopping=self._abort.is_set)
        #: Messages handed to the completer and not yet acked (held, but not running).
        self._completing = 0
        self.completer = Completer(app, release=self._release, reliably=self.runner._reliably,
                                   capacity=self.concurrency * 4,
                                   refused=self.runner.poison.refused)
        self.runner.defer = self._defer
        self.runner.completer_busy = self._batching
        self.started = StartedWriter(
            lambda records: self.runner._reliably(
                lambda: app.backend.store_many(records, ttl=app.conf.result_expires)))
        self.runner.started = self.started
        self.processed = 0
        #: 0, or RECYCLE once a hard time limit asked this process to re-execute itself.
        self.exit_code = 0
        self.limits = TimeLimits(on_hard=self._hard_limit,
                                 default_soft=conf.task_soft_time_limit,
                                 default_hard=conf.task_time_limit)
        self.runner.limits = self.limits
        self.agent = WorkerAgent(self)
        self.runner.revoked = self.agent.revoked

    # -- lifecycle ------------------------------------------------------------------------
    def run(self) -> int:
        """Consume until stopped; returns 0 after a graceful stop."""
        self.app.conf.validate()
        self._preflight()
        log.info("worker %s ready: broker=%s backend=%s queues=%s concurrency=%d",
                 self.hostname, self.app.broker.url.masked, self.app.backend.url.masked,
                 ",".join(self.queues), self.concurrency)
        self.completer.start()
        self.started.start()
        for i in range(self.concurrency):
            self._spawn(self._execute_loop, f"conveyor-exec-{i}")
        self._spawn(self._heartbeat_loop, "conveyor-heartbeat")
        if not self.app.backend.capabilities.native_expiry:
            self._spawn(self._cleanup_loop, "conveyor-cleanup")
        signals.worker_process_init.send(sender=None)
        self.agent.start()
        signals.worker_ready.send(sender=self)
        try:
            self._fetch_loop()
        finally:
            self._shutdown()
            self.agent.stop()
            signals.worker_shutdown.send(sender=self)
        return self.exit_code

    def _hard_limit(self, job: Job, limit: float) -> None:
        """A task passed its hard time limit: record it, forget it, recycle the process."""
        # Logged before the failure is recorded: whoever reads that record may already look
        # for this line, and the other threads keep serving until the stop.
        log.warning("recycling this worker process: a thread is stuck in %s[%s]",
                    job.msg.task, job.msg.id)
        self.runner.time_limit_exceeded(job, limit)
        self._release(job.res, completing=False)
        self.exit_code = RECYCLE
        self.stop()

    def held(self) -> list[Reservation]:
        """The messages this worker holds now (reserved: waiting or running), a snapshot."""
        with self._held_lock:
            return list(self._held.values())

    def resize(self, delta: int) -> int:
        """Add (``delta`` > 0) or remove executor threads, never below one; returns the new
        size. Removed threads finish their current task first."""
        with self._held_lock:
            if delta > 0:
                for _ in range(delta):
                    self._spawn(self._execute_loop, f"conveyor-exec-{len(self._threads)}")
            else:
                delta = -min(-delta, self.concurrency - 1)
                for _ in range(-delta):
                    self._work.put(None)
            self.concurrency += delta
            self.prefetch_limit = self.concurrency * self._multiplier
            self._held_lock.notify_all()
            return self.concurrency

    def _preflight(self) -> None:
        """Fail at once on what waiting cannot fix (credentials, a missing database, a bad
        URL); an unreachable server is only logged: the loops retry it with backoff."""
        for kind, get in (("broker", lambda: self.app.broker),
                          ("backend", lambda: self.app.backend)):
            try:
                get().ping()
            except ConveyorError as exc:
                if _is_fatal(exc):
                    raise
                log.error("%s unavailable at start (%s): will retry with backoff", kind, exc)

    def stop(self) -> None:
        """Graceful: stop reserving, finish running tasks, give back unstarted ones."""
        self._stop.set()
        if self._reserving is not None:
            self._reserving.wake()  # a long idle wait (SQS) must not delay the stop
        with self._held_lock:
            self._held_lock.notify_all()

    def abort(self) -> None:
        """Stop without waiting for running tasks (their leases will lapse)."""
        self._abort.set()
        self.stop()

    @property
    def max_held(self) -> int:
        """How many messages to hold (running or waiting). Beyond one per thread only while
        tasks are short: prefetching long tasks would starve other workers of them."""
        if self._avg_run is not None and self._avg_run < SHORT_TASK:
            return self.prefetch_limit
        return self.concurrency

    def _spawn(self, target: object, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    # -- fetching -------------------------------------------------------------------------
    def _fetch_loop(self) -> None:
        broker = self._reserving = self.app.broker
        # A broker billed per request (SQS) is waited on longer while idle; stop() wakes it.
        wait = max(self.app.conf.worker_poll_wait, broker.capabilities.idle_wait or 0.0)
        pause = 0.1
        outage = OutageLog(log, "broker", first_level=logging.ERROR)
        while not self._stop.is_set():
            with self._held_lock:
                while not self._stop.is_set():
                    # Messages waiting in the completer do not take an execution slot.
                    free = self.max_held - len(self._held) + self._completing
                    # While the executors still have messages queued, top up by half the
                    # prefetch at a time: one reserve and one pick-up read for several
                    # messages, not one of each per finished task. (Waiting here always
                    # leaves work queued: an executor only goes idle after a release,
                    # which wakes this loop.)
                    if free > 0 and (2 * free >= self.max_held or self._work.empty()):
                        break
                    self._held_lock.wait(0.5)
            if self._stop.is_set():
                break
            try:
                batch = broker.reserve(self.queues, lease=self.lease, wait=wait, limit=free)
            except ConveyorError as exc:
                if _is_fatal(exc):
                    raise
                outage.failed(exc)
                self._stop.wait(pause)
                pause = min(pause * 2, 5.0)
                continue
            if outage.failing:
                outage.recovered()
                pause = 0.1
            if batch:
                with self._held_lock:
                    for res in batch:
                        self._held[res.message_id] = res
                # Held first: the heartbeat extends their leases while the check reads.
                for item in zip(batch, self.runner.pickup(batch), strict=True):
                    self._work.put(item)

    # -- executing ------------------------------------------------------------------------
    def _execute_loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            res, pickup = item
            deferred = False
            started = time.monotonic()
            try:
                deferred = self.runner.handle(res, pickup)
                took = time.monotonic() - started
                self._avg_run = took if self._avg_run is None else (
                    0.9 * self._avg_run + 0.1 * took)
            except Exception:
                # Not acked: the lease lapses and the message is delivered again.
                log.exception("could not finish message %s; it will be redelivered",
                              res.message_id)
            finally:
                if not deferred:
                    self._release(res, completing=False)

    def _batching(self) -> bool:
        """Whether a finished task's record should go to the completer, to be stored with
        others in one round trip: while the completer has work, and while other messages
        held here are still to finish (running or waiting for a thread: their records
        follow within moments). A task finishing alone stores its record itself, the lowest
        latency for whoever waits on it."""
        return self.completer.busy or len(self._held) - self._completing > 1

    def _defer(self, completion: Completion) -> None:
        with self._held_lock:
            self._completing += 1
            self._held_lock.notify_all()
        self.completer.submit(completion)

    def _release(self, res: Reservation, *, completing: bool = True) -> None:
        """Forget a message that is finished (acked, or left to be redelivered)."""
        with self._held_lock:
            self._held.pop(res.message_id, None)
            if completing:
                self._completing -= 1
            self.processed += 1
            self._held_lock.notify_all()

    # -- heartbeat ------------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        interval = self.app.conf.heartbeat_interval
        broker = self.app.broker
        # A message acked just after the snapshot below fails to extend too, and stays held
        # until its release a moment later: warn only for one still held, and still not
        # extendable, a grace period after the first failure.
        grace = max(1.0, interval)
        suspect: dict[str, float] = {}
        warned: set[str] = set()
        while not self._abort.wait(interval):
            with self._held_lock:
                held = list(self._held.values())
            failed: list[str] = []
            error: ConveyorError | None = None
            now = time.monotonic()
            for res in held:
                try:
                    if broker.extend(res, lease=self.lease):
                        suspect.pop(res.message_id, None)
                        continue
                    since = suspect.setdefault(res.message_id, now)
                    if now - since >= grace and res.message_id not in warned:
                        warned.add(res.message_id)
                        log.warning("lease of %s lost; another worker may run it too",
                                    res.message_id)
                except ConveyorError as exc:
                    failed.append(res.message_id)
                    error = exc
            with self._held_lock:
                suspect = {i: t for i, t in suspect.items() if i in self._held}
                warned &= suspect.keys()
            if failed:
                log.warning("could not extend %d leases (broker unavailable?): %s",
                            len(failed), error)
            if self._stop.is_set() and not held:
                return

    def _cleanup_loop(self) -> None:
        interval = self.app.conf.result_cleanup_interval
        while not self._stop.wait(interval):
            try:
                purged = self.app.backend.purge_expired()
                if purged:
                    log.info("purged %d expired results", purged)
            except ConveyorError as exc:
                log.warning("could not purge expired results: %s", exc)

    # -- shutdown -------------------------------------------------------------------------
    def _shutdown(self) -> None:
        # Give back what was reserved but not started, so other workers take it now.
        released = 0
        while True:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                break
            if item is None:
                continue
            res = item[0]
            try:
                self.app.broker.nack(res)
                released += 1
            except ConveyorError as exc:
                log.warning("could not release %s (its lease will lapse): %s",
                            res.message_id, exc)
            with self._held_lock:
                self._held.pop(res.message_id, None)
        if released:
            log.info("released %d unstarted messages", released)
        for _ in range(self.concurrency):
            self._work.put(None)
        deadline = time.monotonic() + self.app.conf.worker_shutdown_grace
        with self._held_lock:
            while self._held and not self._abort.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("%d tasks still running after the grace period; leaving them "
                                "to be redelivered", len(self._held))
                    break
                self._held_lock.wait(min(left, 0.2))
        self.completer.stop(timeout=max(1.0, deadline - time.monotonic()))
        self.started.stop(timeout=1.0)
        self._abort.set()
