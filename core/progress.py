"""Progress states: ``self.update_state(state="PROGRESS", meta={...})`` inside a task.

The state and its ``meta`` are stored as the task's record (meta where a result goes), so
``AsyncResult.state`` reads ``"PROGRESS"`` and ``.info`` the meta while the task runs. The
backend never lets a non-terminal write replace a terminal record, so the final state always
wins, even over a progress update that arrives late.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from conveyor.exceptions import TaskOptionError
from conveyor.record import TaskRecord
from conveyor.states import PENDING, READY_STATES

if TYPE_CHECKING:
    from conveyor.task import Task

#: Longest state name every backend stores (the SQL ``state`` column).
MAX_STATE_LENGTH = 16


def store_progress(task: Task[Any, Any], task_id: str, state: str, meta: Any) -> None:
    """Store ``state`` with ``meta`` for ``task_id``. Raises :class:`TaskOptionError` for a
    terminal or PENDING state, a name over 16 characters, or no task id (called outside a
    worker without one)."""
    state = str(state)
    if not task_id:
        raise TaskOptionError("update_state needs a task_id outside a running task")
    if state in READY_STATES or state == PENDING:
        raise TaskOptionError(f"update_state(state={state!r}): {state} is set by the worker "
                              "itself; use a progress state such as 'PROGRESS'")
    if not state or len(state) > MAX_STATE_LENGTH or not state.isprintable():
        raise TaskOptionError(f"state name {state!r} must be 1 to {MAX_STATE_LENGTH} printable "
                              "characters")
    app = task.app
    req = task.request
    if req.settle_started is not None and req.id == task_id:
        req.settle_started(task_id)  # a write-behind STARTED must not land after this
    result_type, packed = app.result_codec.pack(meta)
    now = time.time()
    record = TaskRecord(task_id, state, task=task.name, queue=req.queue, result=packed,
                        result_type=result_type, retries=req.retries, worker=req.hostname,
                        updated_at=now)
    app.backend.store(record.to_stored(), ttl=app.conf.result_expires)
