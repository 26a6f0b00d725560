"""Time limits of running tasks: ``soft_time_limit`` and ``time_limit``.

One monitor thread per worker process (started with the first limited task) checks running
tasks every 50 ms.

* **Soft limit**: :class:`~conveyor.exceptions.SoftTimeLimitExceeded` is raised inside the
  task's thread (an asynchronous exception), so the task may catch it and clean up. Python
  delivers it between bytecodes: a task blocked in one long C call (``time.sleep(60)``, a
  socket read without timeout) sees it only when that call returns.
* **Hard limit**: a thread cannot be killed, so the monitor records the attempt as FAILURE
  with :class:`~conveyor.exceptions.TimeLimitExceeded` (dead-lettered per the usual policy,
  chain broken), acks the message, and asks the worker to *recycle*: it stops reserving, lets
  its other tasks finish within ``worker_shutdown_grace``, and the process re-executes itself
  (same pid, same arguments), which frees the stuck thread. Whatever the stuck task does
  afterwards is ignored (the first terminal write wins and the runner drops its outcome).
  Under ``--pool processes`` each child is such a worker: the child is replaced, its siblings
  run on.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from conveyor.exceptions import SoftTimeLimitExceeded

if TYPE_CHECKING:
    from conveyor.task import Task
    from conveyor.worker.runner import Job

log = logging.getLogger("conveyor.worker")

#: Seconds between checks of running tasks' deadlines.
TICK = 0.05


def raise_in_thread(thread_id: int, exc_type: type[BaseException] | None) -> bool:
    """Schedule ``exc_type`` to be raised in the thread ``thread_id`` (None: cancel a
    scheduled one). True when the thread exists."""
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type) if exc_type else None)
    return bool(done)


class Watch:
    """One running task under time limits. ``expired`` is True once the hard limit ended it:
    the runner must then drop whatever outcome the body produces."""

    __slots__ = ("expired", "finished", "hard_at", "job", "lock", "soft_at", "soft_sent",
                 "thread_id", "time_limit")

    def __init__(self, job: Job, *, soft: float | None, hard: float | None) -> None:
        now = time.monotonic()
        self.job = job
        self.thread_id = threading.get_ident()
        self.soft_at = now + soft if soft is not None else None
        self.hard_at = now + hard if hard is not None else None
        self.time_limit = hard
        self.lock = threading.Lock()
        self.finished = self.expired = self.soft_sent = False

    def done(self) -> None:
        """The body returned or raised: no limit fires on it from now on."""
        with self.lock:
            self.finished = True
            if self.soft_sent:
                # A soft-limit exception scheduled but not yet delivered must not land in
                # the runner's own code after the body: cancel it.
                raise_in_thread(self.thread_id, None)


class TimeLimits:
    """Watches running tasks; calls ``on_hard(job, limit)`` from its thread when a task
    passes its hard limit."""

    def __init__(self, *, on_hard: Callable[[Job, float], None],
                 default_soft: float | None = None, default_hard: float | None = None) -> None:
        self.on_hard = on_hard
        self.default_soft = default_soft
        self.default_hard = default_hard
        self._watches: set[Watch] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, job: Job, task: Task[Any, Any]) -> Watch | None:
        """Start watching ``job`` (call from the thread running it); None when the task has
        no limits."""
        soft = task.soft_time_limit if task.soft_time_limit is not None else self.default_soft
        hard = task.time_limit if task.time_limit is not None else self.default_hard
        if soft is None and hard is None:
            return None
        w = Watch(job, soft=soft, hard=hard)
        with self._lock:
            self._watches.add(w)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="conveyor-limits",
                                                daemon=True)
                self._thread.start()
        return w

    def _run(self) -> None:
        while True:
            time.sleep(TICK)
            now = time.monotonic()
            with self._lock:
                watches = list(self._watches)
            for w in watches:
                with w.lock:
                    if w.finished:
                        with self._lock:
                            self._watches.discard(w)
                        continue
                    if w.soft_at is not None and not w.soft_sent and now >= w.soft_at:
                        w.soft_sent = True
                        log.warning("task %s[%s] passed its soft time limit",
                                    w.job.msg.task, w.job.msg.id)
                        raise_in_thread(w.thread_id, SoftTimeLimitExceeded)
                    if w.hard_at is None or now < w.hard_at:
                        continue
                    w.expired = w.finished = True
                    if w.soft_sent:
                        raise_in_thread(w.thread_id, None)
                with self._lock:
                    self._watches.discard(w)
                assert w.time_limit is not None
                log.error("task %s[%s] passed its hard time limit of %gs",
                          w.job.msg.task, w.job.msg.id, w.time_limit)
                try:
                    self.on_hard(w.job, w.time_limit)
                except Exception:
                    log.exception("could not record the time limit of %s; it will be "
                                  "redelivered", w.job.msg.id)


def reexec() -> None:
    """Replace this process with a fresh ``python -m conveyor`` run with the same arguments
    (same pid: a supervisor or process manager watching it sees the same process)."""
    import os
    import sys

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "conveyor", *sys.argv[1:]])
