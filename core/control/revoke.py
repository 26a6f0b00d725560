"""Durable revocations: a REVOKED record plus an entry each worker's cache reads.

``revoke(id)`` writes two things to the backend: the terminal REVOKED record (first terminal
write wins, so a task that already finished keeps its outcome, and any later delivery of the
id, redelivery or restart alike, is acked without running), and an entry ``revoked:<id>``
that every worker reads into a local set about twice a second.

Every delivery's record is read when the worker picks its batch up (one ``get_many`` per
batch, see :meth:`conveyor.worker.runner.TaskRunner.pickup`), so a task revoked before its
pick-up never runs. The cached set is checked again just before the body, for a message
revoked while it waited in the worker's prefetch; one revoked between those two checks may
still run, and its outcome is then discarded (the REVOKED record stays).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from conveyor.record import TaskRecord
from conveyor.states import REVOKED

if TYPE_CHECKING:
    from conveyor.app import Conveyor

PREFIX = "revoked:"
TERMINATE = b"terminate"


def revoke(app: Conveyor, task_ids: Iterable[str], *, terminate: bool = False,
           reason: str = "revoked") -> None:
    """Revoke ``task_ids``: REVOKED records and the entries workers watch (kept as long as
    results, ``result_expires``). ``terminate``: running ones are ended where the pool can
    (see :mod:`conveyor.worker.limits` for what "can" means on threads)."""
    ttl = app.conf.result_expires
    backend = app.backend
    for task_id in task_ids:
        found = app.record(task_id)
        now = time.time()
        record = found or TaskRecord(task_id, REVOKED)
        record.state = str(REVOKED)
        record.error_type = "conveyor.exceptions.TaskRevokedError"
        record.error_message = reason
        record.date_done = record.updated_at = now
        backend.store(record.to_stored(), ttl=ttl)
        backend.put_entry(PREFIX + task_id, TERMINATE if terminate else b"", ttl=ttl)


def revoked_ids(app: Conveyor) -> dict[str, bool]:
    """Every live revocation: task id -> whether it asked to terminate a running task (one
    backend read; raises the backend's errors)."""
    entries = app.backend.entries(PREFIX)
    return {key[len(PREFIX):]: value == TERMINATE for key, value in entries.items()}


class RevokedCache:
    """The ids revoked cluster-wide, as this worker last read them. Thread-safe."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app
        self._ids: dict[str, bool] = {}
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Read the revoked entries (one query). Raises the backend's errors."""
        ids = revoked_ids(self.app)
        with self._lock:
            self._ids = ids

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._ids

    def to_terminate(self, running: Iterable[str]) -> list[str]:
        """Those of ``running`` revoked with ``terminate=True``."""
        ids = self._ids
        return [t for t in running if ids.get(t)]
