"""Finishes successful tasks in batches, off the executor threads.

A successful task needs its SUCCESS record stored, its follow-ups (the next chain step) sent,
and its message acked, in that order. When the completer is idle and the task finished with
nothing else held by its worker, the executor stores the record itself (the lowest latency
for whoever waits on it) and leaves the ack here; otherwise the record comes here too, and
everything that finished meanwhile is written with one ``store_many`` and acked with one
``ack_many``: a group commit that grows with load (see ``Consumer._batching``). The
order per message is unchanged, so a crash anywhere means "delivered again", never "lost".

Two threads, so that results never wait for the broker: the *store* thread writes records to
the backend and passes each completion on; the *ack* thread sends follow-ups and acks. While
the broker is down, acks queue up behind it but results keep being stored as tasks finish;
when their leases lapse meanwhile, the redeliveries find the stored outcome and are acked
without running again. A record the backend refuses does not sink its batch: the rest are
stored and the refused message is handed to ``refused`` (dead-lettered, not redelivered).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from conveyor.backend import StoredRecord
from conveyor.batching import store_each
from conveyor.broker import Reservation
from conveyor.exceptions import ValueRefusedError

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
    """Two threads that store, then follow up and ack, completions in batches.

    ``submit`` blocks while ``capacity`` completions wait to be stored, so a slow backend
    slows the executors down instead of piling up finished-but-unrecorded work. Completions
    whose record is already stored skip the store thread.
    """

    def __init__(self, app: Conveyor, *, release: Callable[[Reservation], None],
                 reliably: Callable[[Callable[[], Any]], Any], capacity: int,
                 refused: Callable[[Reservation, ValueRefusedError], None] | None = None
                 ) -> None:
        self.app = app
        self._release = release
        self._reliably = reliably
        self._refused = refused
        self._capacity = max(1, capacity)
        self._cond = threading.Condition()
        self._waiting: list[Completion] = []  # to store
        self._acking: list[Completion] = []  # stored: to follow up and ack
        self._stopping = False
        self._busy = False
        self._acker_busy = False
        self._threads = [
            threading.Thread(target=self._store_loop, name="conveyor-completer", daemon=True),
            threading.Thread(target=self._ack_loop, name="conveyor-acker", daemon=True)]
        self._storing_done = False

    def start(self) -> None:
        """Start the threads."""
        for thread in self._threads:
            thread.start()

    @property
    def busy(self) -> bool:
        """True while either thread has work: then a finished task's record is better sent
        here, to be stored with others in one round trip (the store thread never waits for
        the broker, so this holds during a broker outage too)."""
        return self._busy or self._acker_busy or bool(self._waiting) or bool(self._acking)

    def submit(self, completion: Completion) -> None:
        """Queue a completion; blocks while the store queue is full."""
        with self._cond:
            if completion.record is None:
                self._acking.append(completion)
            else:
                while len(self._waiting) >= self._capacity and not self._stopping:
                    self._cond.wait(0.5)
                self._waiting.append(completion)
            self._cond.notify_all()

    def stop(self, *, timeout: float) -> None:
        """Finish what was submitted, then stop the threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _store_loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if not self._waiting:
                    self._storing_done = True
                    self._cond.notify_all()
                    return
                batch, self._waiting = self._waiting[:BATCH], self._waiting[BATCH:]
                self._busy = True
                self._cond.notify_all()
            stored: list[Completion] = []
            try:
                stored = self._store(batch)
            except Exception:
                # Unacked: the leases lapse and the messages are delivered again.
                log.exception("could not record %d finished tasks; they will be redelivered",
                              len(batch))
                for c in batch:
                    self._release(c.reservation)
            finally:
                with self._cond:
                    self._busy = False
                    self._acking.extend(stored)
                    self._cond.notify_all()

    def _store(self, batch: list[Completion]) -> list[Completion]:
        """Store the batch's records; return the completions to ack (refused ones are
        handed to ``refused`` instead)."""
        records = [c.record for c in batch if c.record is not None]
        ttl = self.app.conf.result_expires
        outcomes = store_each(
            lambda part: self._reliably(lambda: self.app.backend.store_many(part, ttl=ttl)),
            records)
        refusals = {r.task_id: o for r, o in zip(records, outcomes, strict=True)
                    if isinstance(o, ValueRefusedError)}
        if not refusals:
            return batch
        keep = []
        for c in batch:
            exc = refusals.get(c.record.task_id) if c.record is not None else None
            if exc is None:
                keep.append(c)
                continue
            try:
                if self._refused is None:
                    raise exc
                self._refused(c.reservation, exc)
            except Exception:
                log.exception("could not dead-letter message %s whose outcome was refused",
                              c.reservation.message_id)
            finally:
                self._release(c.reservation)
        return keep

    def _ack_loop(self) -> None:
        while True:
            with self._cond:
                while not self._acking and not (self._stopping and self._storing_done):
                    self._cond.wait()
                if not self._acking:
                    return
                batch, self._acking = self._acking[:BATCH], self._acking[BATCH:]
                self._acker_busy = True
            try:
                self._ack(batch)
            except Exception:
                # Outcomes are stored: the redeliveries are acked without running again.
                log.exception("could not ack %d finished tasks; their redeliveries will be "
                              "acked as duplicates", len(batch))
            finally:
                self._acker_busy = False
                for c in batch:
                    self._release(c.reservation)

    def _ack(self, batch: list[Completion]) -> None:
        followups = [o for c in batch for o in c.followups]
        if followups:
            self._reliably(lambda: self.app.enqueue(followups))
        reservations = [c.reservation for c in batch]
        self._reliably(lambda: self.app.broker.ack_many(reservations))
