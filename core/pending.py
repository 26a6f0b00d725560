"""PENDING records written behind the send path, so ``delay()`` costs one broker round trip.

Each send queues its PENDING record here; a background thread writes whatever has queued up
with one ``store_many`` (so a burst of sends becomes one backend round trip). Every read of
results through the same app flushes first, so ``r = t.delay(); r.exists()`` is True in the
sending process; other processes see the record within about LINGER (50 ms). A PENDING write
never replaces an existing record (backend contract), so one that lands after the worker's
STARTED changes nothing.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable

from conveyor.backend import ResultBackend, StoredRecord
from conveyor.batching import store_each
from conveyor.exceptions import ConveyorError, ValueRefusedError

log = logging.getLogger("conveyor.pending")

#: Most records written in one batch.
BATCH = 1000
#: Seconds the writer waits after the first record of a batch for more to arrive: at most
#: one wake-up per LINGER, so the writer barely competes with the sending thread for the GIL.
LINGER = 0.05
#: Default of ``task_pending_exit_timeout``: the longest interpreter exit waits for PENDING
#: records to be written.
EXIT_TIMEOUT = 3.0


class PendingWriter:
    """Batches PENDING records to the backend from one background thread per process.

    ``add`` never blocks on I/O; ``flush`` writes everything added so far before returning.
    """

    def __init__(self, backend: Callable[[], ResultBackend], *, ttl: Callable[[], float | None],
                 exit_timeout: Callable[[], float] = lambda: EXIT_TIMEOUT) -> None:
        self._backend = backend
        self._ttl = ttl
        self._exit_timeout = exit_timeout
        #: Records taken from the buffer and not yet written (for the exit report).
        self._in_flight = 0
        #: Records given up after retrying (for the exit report).
        self._given_up = 0
        #: At exit: when retrying a write stops (monotonic seconds).
        self._deadline: float | None = None
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._buffer: list[StoredRecord] = []
        self._pid = 0
        self._thread: threading.Thread | None = None
        self._closed = False

    def add(self, records: list[StoredRecord]) -> None:
        """Queue records to be written soon."""
        with self._cond:
            self._ensure_thread()
            self._buffer.extend(records)
            self._cond.notify()

    def flush(self) -> None:
        """Write every queued record now (waiting for a batch already being written)."""
        if not self._buffer and not self._write_lock.locked():
            return
        with self._write_lock:
            self._write(self._take(len(self._buffer) or 1))
            while self._buffer:
                self._write(self._take(BATCH))

    def close(self) -> None:
        """Flush and stop the thread."""
        self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _ensure_thread(self) -> None:
        # After a fork the child has the buffer but not the thread: start its own.
        if self._thread is None or self._pid != os.getpid():
            self._pid = os.getpid()
            self._closed = False
            try:
                # Import and build the driver now: at interpreter exit, importing a client
                # library can fail ("can't register atexit after shutdown"), and the exit
                # flush would lose the records.
                self._backend()
            except ConveyorError as exc:
                log.error("result backend unavailable for PENDING records: %s", exc)
            self._thread = threading.Thread(target=self._run, name="conveyor-pending",
                                            daemon=True)
            self._thread.start()
            _LIVE.add(self)

    def _take(self, limit: int) -> list[StoredRecord]:
        with self._cond:
            batch, self._buffer = self._buffer[:limit], self._buffer[limit:]
            return batch

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._buffer and not self._closed:
                    self._cond.wait()
                if self._closed and not self._buffer:
                    return
            # Linger briefly so a burst of sends becomes one write, not one per send.
            time.sleep(LINGER)
            with self._write_lock:
                self._write(self._take(BATCH))

    def _write(self, batch: list[StoredRecord]) -> None:
        if not batch:
            return
        self._in_flight = len(batch)
        try:
            self._write_batch(batch)
        finally:
            self._in_flight = 0

    def _write_batch(self, batch: list[StoredRecord]) -> None:
        pause = 0.05
        for _ in range(8):
            if self._deadline is not None and time.monotonic() > self._deadline:
                break
            try:
                # A record the backend refuses (an id it cannot key) costs only its own
                # PENDING: the rest of the batch is written.
                outcomes = store_each(lambda part: self._backend().store_many(
                    part, ttl=self._ttl()), batch)
            except ConveyorError as exc:
                if not exc.retryable:
                    log.error("could not write %d PENDING records: %s", len(batch), exc)
                    return
                time.sleep(pause)
                pause *= 2
                continue
            for record, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, ValueRefusedError):
                    log.error("PENDING record of %.80r refused: %s", record.task_id, outcome)
            return
        self._given_up += len(batch)
        if self._deadline is None:      # at exit, flush_at_exit reports once for all
            log.error("backend unavailable: %d PENDING records not written (the tasks still "
                      "run and record their progress)", len(batch))

    def flush_at_exit(self) -> None:
        """Flush, waiting at most ``task_pending_exit_timeout`` seconds: a producer whose
        backend is unreachable exits in bounded time, logging once how many PENDING records
        it dropped (the tasks themselves were sent; only ``exists()`` from another process
        reads False until a worker records them)."""
        timeout = self._exit_timeout()
        done = threading.Event()

        def flush() -> None:
            try:
                self.flush()
            except Exception as exc:  # at exit: report, never raise
                log.error("could not flush PENDING records at exit: %s", exc)
            finally:
                done.set()

        self._deadline = time.monotonic() + timeout
        given_up = self._given_up
        try:
            threading.Thread(target=flush, name="conveyor-pending-exit", daemon=True).start()
        except RuntimeError:
            # Python 3.12+ starts no thread at exit: flush here, retries cut at the deadline.
            flush()
        done.wait(max(0.0, self._deadline - time.monotonic()))
        lost = len(self._buffer) + self._in_flight + self._given_up - given_up
        if lost:
            log.error("exiting with %d PENDING records not written: the result backend did not "
                      "answer within task_pending_exit_timeout=%gs (the tasks were sent and "
                      "will run; until a worker records them, other processes read exists() "
                      "== False)", lost, timeout)


_LIVE: weakref.WeakSet[PendingWriter] = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:
    for writer in list(_LIVE):
        writer.flush_at_exit()
