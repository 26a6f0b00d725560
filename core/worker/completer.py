"""Finishes successful tasks in batches, off the executor threads.

A successful task needs its SUCCESS record stored, its follow-ups (the next chain step) sent,
and its message acked, in that order. When the completer is idle the executor stores the
record itself (the lowest latency for whoever waits on it) and leaves the ack here; when it
is busy, the record comes here too, and everything that finished meanwhile is written with
one ``store_many`` and acked with one ``ack_many``: a group commit that grows with load. The
order per message is unchanged, so a crash anywhere means "delivered again", never "lost".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from conveyor.backend import StoredRecord
from conveyor.broker import Reservation

if TYPE_CHECKING:
    from conveyor.app import Conveyor, Outgoing

log = logging.getLogger("conveyor.worker")
T = TypeVar("T")

#: Most completions written in one batch.
BATCH = 500


@dataclass
class Completion:
    """A finished task: its record (None when already stored), follow-ups, what to ack."""

    reservation: Reservation
    followups: list[Outgoing] = field(default_factory=list)
    record: StoredRecord | None = None


class Completer:
    """One thread that stores, follows up and acks completions in batches.

    ``submit`` blocks while ``capacity`` completions are waiting, so a slow backend slows the
    executors down instead of piling up finished-but-unrecorded work.
    """

    def __init__(self, app: Conveyor, *, release: Callable[[Reservation], None],
                 reliably: Callable[[Callable[[], Any]], Any], capacity: int) -> None:
        self.app = app
        self._release = release
        self._reliably = reliably
        self._capacity = max(1, capacity)
        self._cond = threading.Condition()
        self._waiting: list[Completion] = []
        self._stopping = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="conveyor-completer",
                                        daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    @property
    def busy(self) -> bool:
        """True while a batch is being written or completions are waiting."""
        return self._busy or bool(self._waiting)

    def submit(self, completion: Completion) -> None:
        """Queue a completion; blocks while the queue is full."""
        with self._cond:
            while len(self._waiting) >= self._capacity and not self._stopping:
                self._cond.wait(0.5)
            self._waiting.append(completion)
            self._cond.notify_all()

    def stop(self, *, timeout: float) -> None:
        """Finish what was submitted, then stop the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if not self._waiting:
                    return
                batch, self._waiting = self._waiting[:BATCH], self._waiting[BATCH:]
                self._busy = True
                self._cond.notify_all()
            try:
                self._complete(batch)
            except Exception:
                # Unacked: the leases lapse and the messages are delivered again.
                log.exception("could not record %d finished tasks; they will be redelivered",
                              len(batch))
            finally:
                self._busy = False
                for c in batch:
                    self._release(c.reservation)

    def _complete(self, batch: list[Completion]) -> None:
        records = [c.record for c in batch if c.record is not None]
        if records:
            ttl = self.app.conf.result_expires
            self._reliably(lambda: self.app.backend.store_many(records, ttl=ttl))
        followups = [o for c in batch for o in c.followups]
        if followups:
            self._reliably(lambda: self.app.enqueue(followups))
        reservations = [c.reservation for c in batch]
        self._reliably(lambda: self.app.broker.ack_many(reservations))
