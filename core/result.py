"""Handles on task outcomes: :class:`AsyncResult` and :class:`GroupResult` (Celery's shape)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from conveyor.exceptions import TaskRevokedError, TimeoutError
from conveyor.record import TaskRecord
from conveyor.states import FAILURE, PENDING, READY_STATES, REVOKED, SUCCESS

if TYPE_CHECKING:
    from conveyor.app import Conveyor


class AsyncResult:
    """The state and result of one task, read from the result backend.

    Every property reads the backend afresh (no caching of unfinished states); a finished
    record is cached since it can no longer change.
    """

    __slots__ = ("_final", "app", "id", "parent")

    def __init__(self, task_id: str, *, app: Conveyor, parent: AsyncResult | None = None) -> None:
        self.id = task_id
        self.app = app
        self.parent = parent
        self._final: TaskRecord | None = None

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def task_id(self) -> str:
        """Alias of ``id``."""
        return self.id

    def _record(self) -> TaskRecord | None:
        if self._final is not None:
            return self._final
        record = self.app.record(self.id)
        if record is not None and record.state in READY_STATES:
            self._final = record
        return record

    @property
    def record(self) -> TaskRecord | None:
        """The full backend record (retries, attempt history...), or None when unknown."""
        return self._record()

    @property
    def state(self) -> str:
        """PENDING, STARTED, RETRY, SUCCESS, FAILURE or REVOKED. Unknown ids read PENDING,
        as in Celery; use :meth:`exists` to tell them apart."""
        record = self._record()
        return record.state if record is not None else PENDING.value

    status = state

    def exists(self) -> bool:
        """True when the backend has a record (a sent task, even while queued); False for an
        id that was never sent, was forgotten, or whose record expired."""
        return self._record() is not None

    def ready(self) -> bool:
        """True when the task has finished (SUCCESS, FAILURE or REVOKED)."""
        return self.state in READY_STATES

    def successful(self) -> bool:
        """True when the task succeeded."""
        return self.state == SUCCESS

    def failed(self) -> bool:
        """True when the task failed."""
        return self.state == FAILURE

    @property
    def result(self) -> Any:
        """The return value on SUCCESS, the exception on FAILURE/RETRY, else None."""
        record = self._record()
        if record is None:
            return None
        if record.state == SUCCESS:
            return record.value(self.app.result_codec)
        if record.error_type:
            return record.exception()
        return None

    info = result

    @property
    def traceback(self) -> str | None:
        """The formatted traceback of the failure, if any."""
        record = self._record()
        return record.traceback if record else None

    @property
    def retries(self) -> int:
        """How many times the task was retried so far."""
        record = self._record()
        return record.retries if record else 0

    @property
    def attempts(self) -> list[dict[str, Any]]:
        """The attempt history: number, worker, started_at, finished_at, outcome, error."""
        record = self._record()
        return list(record.attempts) if record else []

    @property
    def date_done(self) -> float | None:
        """Epoch seconds when the task finished."""
        record = self._record()
        return record.date_done if record else None

    @property
    def name(self) -> str | None:
        """The task's name, when known."""
        record = self._record()
        return record.task if record else None

    def get(self, timeout: float | None = None, *, propagate: bool = True,
            interval: float | None = None) -> Any:
        """Wait for the task to finish and return its result.

        Raises :class:`~conveyor.exceptions.TimeoutError` after ``timeout`` seconds; on
        FAILURE re-raises the task's exception when ``propagate`` (else returns it); on
        REVOKED raises :class:`TaskRevokedError`. ``interval`` is accepted for Celery
        compatibility; waiting is driven by the backend.
        """
        record = self._final
        if record is None:
            # No flush of PENDING records here: waiting only ends on a terminal state, which
            # a late PENDING write can never replace.
            stored = self.app.backend.wait(self.id, timeout=timeout)
            if stored is None:
                raise TimeoutError(f"task {self.id} not finished after {timeout}s "
                                   f"(state {self.state})")
            record = self._final = TaskRecord.from_stored(stored)
        if record.state == SUCCESS:
            return record.value(self.app.result_codec)
        exc: BaseException = (TaskRevokedError(record.error_message or "revoked")
                              if record.state == REVOKED else record.exception())
        if propagate:
            raise exc
        return exc

    wait = get

    def forget(self) -> None:
        """Delete the record from the backend."""
        self._final = None
        self.app.flush_pending()
        self.app.backend.forget(self.id)


class GroupResult:
    """The results of several tasks, in the order they were given."""

    def __init__(self, results: list[AsyncResult], *, id: str | None = None) -> None:
        self.results = results
        self.id = id

    def __repr__(self) -> str:
        return f"<GroupResult {self.id} [{len(self.results)} tasks]>"

    def __iter__(self) -> Any:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> AsyncResult:
        return self.results[index]

    def _states(self) -> list[str]:
        if not self.results:
            return []
        app = self.results[0].app
        app.flush_pending()
        stored = app.backend.get_many([r.id for r in self.results])
        return [stored[r.id].state if r.id in stored else PENDING.value for r in self.results]

    def ready(self) -> bool:
        """True when every task has finished."""
        return all(s in READY_STATES for s in self._states())

    def successful(self) -> bool:
        """True when every task succeeded."""
        return all(s == SUCCESS for s in self._states())

    def failed(self) -> bool:
        """True when any task failed."""
        return any(s == FAILURE for s in self._states())

    def completed_count(self) -> int:
        """How many tasks succeeded."""
        return sum(s == SUCCESS for s in self._states())

    def get(self, timeout: float | None = None, *, propagate: bool = True) -> list[Any]:
        """Wait for all and return their results in order; ``timeout`` covers the whole wait."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for result in self.results:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.append(result.get(timeout=left, propagate=propagate))
        return values

    join = get

    def forget(self) -> None:
        """Delete every task's record."""
        for result in self.results:
            result.forget()
