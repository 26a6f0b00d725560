"""STARTED records written behind the executors, so a short task costs no extra round trip.

STARTED is information for whoever watches a task; nothing in the delivery guarantees depends
on it for a first delivery. The runner hands the record here and runs the task at once; this
thread writes whatever has queued up after a short linger, with one ``store_many``. When the
task finishes first, the runner *settles* its id before storing the outcome: a STARTED still
queued is dropped (the outcome carries the whole attempt history), one being written is waited
for, so a STARTED never lands after the RETRY or the outcome that follows it.

Redeliveries do not come here: the runner writes their STARTED synchronously, because that
write is also the check that an earlier delivery has not already finished the task.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from conveyor.backend import StoredRecord

log = logging.getLogger("conveyor.worker")

#: Seconds between the first queued STARTED and its write. Tasks shorter than this usually
#: never have their STARTED written at all; longer ones show it this much later.
LINGER = 0.02
#: Most records written in one batch.
BATCH = 500


class StartedWriter:
    """One thread that writes queued STARTED records in batches.

    ``add`` never blocks on I/O. ``settle`` returns once the id's STARTED can no longer land
    after the caller's next write. Thread-safe.
    """

    def __init__(self, store_many: Callable[[list[StoredRecord]], object], *,
                 linger: float = LINGER) -> None:
        self._store_many = store_many
        self._linger = linger
        self._cond = threading.Condition()
        self._queued: dict[str, StoredRecord] = {}
        self._writing: set[str] = set()
        self._closed = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="conveyor-started", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def add(self, record: StoredRecord) -> None:
        """Queue ``record`` (a STARTED) to be written within about the linger."""
        with self._cond:
            wake = not self._queued  # the thread only sleeps unwoken on an empty queue
            self._queued[record.task_id] = record
            if wake:
                self._cond.notify_all()

    def settle(self, task_id: str) -> None:
        """Drop the queued STARTED of ``task_id``, or wait while it is being written."""
        with self._cond:
            if self._queued.pop(task_id, None) is not None:
                self.dropped += 1
            while task_id in self._writing:
                self._cond.wait()

    def stop(self, *, timeout: float) -> None:
        """Write what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queued and not self._closed:
                    self._cond.wait()
                if not self._queued:
                    return
                # Give short tasks time to finish and settle: then nothing is written.
                deadline = time.monotonic() + self._linger
                while not self._closed and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                ids = list(self._queued)[:BATCH]
                batch = [self._queued.pop(i) for i in ids]
                self._writing.update(ids)
            try:
                if batch:
                    self._store_many(batch)
            except Exception as exc:
                # Only information is lost: the outcome is still recorded by the runner.
                log.warning("could not record STARTED for %d tasks: %s", len(batch), exc)
            finally:
                with self._cond:
                    self._writing.difference_update(ids)
                    self._cond.notify_all()
