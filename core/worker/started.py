"""STARTED records written behind the executors, so a short task costs no extra round trip.

STARTED is information for whoever watches a task; nothing in the delivery guarantees depends
on it for a first delivery. The runner hands the record here and runs the task at once; this
thread writes whatever has queued up after a short linger, with one ``store_many``. When the
task finishes first, the runner *settles* its id before storing the outcome: a STARTED still
queued is dropped (the outcome carries the whole attempt history), one being written is waited
for, so a STARTED never lands after the RETRY or the outcome that follows it.

Every delivery's record was read at pick-up, before the body (a task id that already had a
terminal record never gets here). Redeliveries do not come here: the runner writes their
STARTED synchronously, because an earlier delivery may still be finishing on a worker that
lost its lease. A first delivery's STARTED repeats the check behind the task, for a copy
running at the same moment elsewhere: a STARTED the backend does not write means a terminal
record exists, and ``settle`` reports it, so the runner acks that duplicate instead of
storing an outcome, retrying or dead-lettering (see docs/guarantees.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from conveyor.backend import StoredRecord
from conveyor.batching import store_each

log = logging.getLogger("conveyor.worker")

#: Seconds between the first queued STARTED and its write. Tasks shorter than this usually
#: never have their STARTED written at all; longer ones show it this much later.
LINGER = 0.02
#: Most records written in one batch.
BATCH = 500


class AlreadyFinished(Exception):  # noqa: N818 - a signal inside the runner, not an error
    """Raised in the runner when a task's STARTED found a terminal record (a duplicate)."""


class StartedWriter:
    """One thread that writes queued STARTED records in batches.

    ``add`` never blocks on I/O. ``settle`` returns once the id's STARTED can no longer land
    after the caller's next write. Thread-safe.
    """

    def __init__(self, store_many: Callable[[list[StoredRecord]], Sequence[bool]], *,
                 linger: float = LINGER) -> None:
        self._store_many = store_many
        self._linger = linger
        self._cond = threading.Condition()
        #: Task id -> how to build its STARTED record (built only if it is written).
        self._queued: dict[str, Callable[[], StoredRecord]] = {}
        self._writing: set[str] = set()
        #: Ids whose STARTED the backend did not write: they already hold a terminal record.
        self._finished: set[str] = set()
        self._closed = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="conveyor-started", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def add(self, record: StoredRecord) -> None:
        """Queue ``record`` (a STARTED) to be written within about the linger."""
        self.add_later(record.task_id, lambda: record)

    def add_later(self, task_id: str, build: Callable[[], StoredRecord]) -> None:
        """Queue the STARTED of ``task_id``, built by ``build`` only when it is written (a
        task that settles within the linger costs no encoding)."""
        with self._cond:
            wake = not self._queued  # the thread only sleeps unwoken on an empty queue
            self._queued[task_id] = build
            if wake:
                self._cond.notify_all()

    def settle(self, task_id: str) -> bool:
        """Drop the queued STARTED of ``task_id``, or wait while it is being written.

        True when its STARTED was written and found a terminal record already there."""
        with self._cond:
            if self._queued.pop(task_id, None) is not None:
                self.dropped += 1
            while task_id in self._writing:
                self._cond.wait()
            if task_id in self._finished:
                self._finished.discard(task_id)
                return True
            return False

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
                builders = [self._queued.pop(i) for i in ids]
                self._writing.update(ids)
            finished: list[str] = []
            try:
                batch = [build() for build in builders]
                # A record the backend refuses (an id too long for it) costs only its own
                # STARTED; the runner meets the refusal again when it stores the outcome.
                for record, written in zip(batch, store_each(self._store_many, batch),
                                           strict=True):
                    if written is False:
                        finished.append(record.task_id)
            except Exception as exc:
                # Only information is lost: the outcome is still recorded by the runner.
                log.warning("could not record STARTED for %d tasks: %s", len(ids), exc)
            finally:
                with self._cond:
                    self._finished.update(finished)
                    self._writing.difference_update(ids)
                    self._cond.notify_all()
