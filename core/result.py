"""Handles on task outcomes: :class:`AsyncResult` and :class:`GroupResult` (Celery's shape)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Generic, Literal, overload

from conveyor.exceptions import TaskRevokedError, TimeoutError
from conveyor.record import TaskRecord
from conveyor.serialization import dumps_json, loads_json
from conveyor.states import FAILURE, PENDING, READY_STATES, REVOKED, SUCCESS

if TYPE_CHECKING:
    from typing_extensions import TypeVar

    from conveyor.app import Conveyor

    #: The task's return type: ``add.delay(1, 2)`` is an ``AsyncResult[int]``; a bare
    #: ``AsyncResult`` (a result found by id) is ``AsyncResult[Any]``.
    T = TypeVar("T", default=Any)
else:
    from typing import TypeVar

    T = TypeVar("T")


#: ``AsyncResult.parent`` not known yet (read from the record on first use).
_UNKNOWN: Any = object()


def _adopt(parent: Any, child: Any) -> None:
    """Record ``child`` among ``parent``'s children (without reading any backend)."""
    if parent is None:
        return
    known = getattr(parent, "_children", None)
    (known if isinstance(known, list) else parent.children).append(child)


class AsyncResult(Generic[T]):
    """The state and result of one task, read from the result backend.

    Every property reads the backend afresh (no caching of unfinished states); a finished
    record is cached since it can no longer change.
    """

    __slots__ = ("_children", "_final", "_parent", "app", "id")

    def __init__(self, task_id: str, *, app: Conveyor, parent: Any = None) -> None:
        self.id = task_id
        self.app = app
        self._parent: Any = parent if parent is not None else _UNKNOWN
        self._children: list[Any] = []
        _adopt(parent, self)
        self._final: TaskRecord | None = None

    @property
    def children(self) -> list[Any]:
        """Results started by this one (the next chain step, a chord header, callbacks):
        known on handles from sending a workflow, else read from the finished record."""
        if not self._children:
            record = self._record()
            if record is not None and record.children:
                from conveyor.canvas.engine import header_result

                self._children.extend(header_result(self.app, c) or AsyncResult(c, app=self.app)
                                      for c in record.children)
        return self._children

    @property
    def parent(self) -> Any:
        """The result this task got its input from: the previous step of a chain, or a
        chord's header (a GroupResult). Known on handles from sending a workflow, else read
        from the record; None for a first task."""
        if self._parent is _UNKNOWN:
            record = self._record()
            self._parent = None
            if record is not None and record.parent:
                from conveyor.canvas.engine import header_result

                self._parent = (header_result(self.app, record.parent)
                                or AsyncResult(record.parent, app=self.app))
        return self._parent

    @parent.setter
    def parent(self, value: Any) -> None:
        self._parent = value

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
        if record.result is not None:
            return record.value(self.app.result_codec)  # a progress state's meta
        return None

    info = result

    def revoke(self, connection: Any = None, terminate: bool = False, signal: str | None = None,
               wait: bool = False, timeout: float | None = None) -> None:
        """Revoke this task durably (see ``app.control.revoke``). Celery's ``connection``,
        ``wait`` and ``timeout`` are accepted: the revocation is stored before this returns,
        so there is nothing to wait for."""
        self.app.control.revoke(self.id, terminate=terminate, signal=signal)

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

    @overload
    def get(self, timeout: float | None = None, *, propagate: Literal[True] = True,
            interval: float | None = None) -> T: ...
    @overload
    def get(self, timeout: float | None = None, *, propagate: bool,
            interval: float | None = None) -> T | BaseException: ...

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


    def collect(self, *, timeout: float | None = None) -> Any:
        """Yield ``(result, value)`` for this result and, depth first, its children,
        waiting for each (as Celery's ``collect``)."""
        yield from _collect(self, timeout)

    def iterdeps(self) -> Any:
        """Yield ``(parent, child)`` pairs of the workflow graph below this result."""
        stack: list[Any] = [self]
        while stack:
            node = stack.pop()
            for child in getattr(node, "children", ()):
                yield node, child
                stack.append(child)


def _collect(top: Any, timeout: float | None) -> Any:
    stack = [top]
    while stack:
        node = stack.pop()
        yield node, node.get(timeout=timeout)
        stack.extend(reversed(list(getattr(node, "children", ()))))


class ResultSet:
    """Several results handled together, in order (members may be GroupResults)."""

    def __init__(self, results: list[Any], *, app: Conveyor | None = None) -> None:
        self.results = list(results)
        self.app = app or next((r.app for r in self.results if getattr(r, "app", None)), None)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} [{len(self.results)} results]>"

    def __iter__(self) -> Any:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> Any:
        return self.results[index]

    def revoke(self, connection: Any = None, terminate: bool = False, signal: str | None = None,
               wait: bool = False, timeout: float | None = None) -> None:
        """Revoke every task of the set durably (see ``app.control.revoke``; Celery's
        ``connection``, ``wait`` and ``timeout`` are accepted, as for one result)."""
        if self.app is not None:
            self.app.control.revoke([r.id for r in self.results], terminate=terminate,
                                    signal=signal)

    def add(self, result: Any) -> None:
        """Add a result to the set."""
        if result not in self.results:
            self.results.append(result)

    def _states(self) -> list[str]:
        """One state per task below this set (nested groups flattened)."""
        ids: list[Any] = []
        groups: list[ResultSet] = []
        for r in self.results:
            (groups if isinstance(r, ResultSet) else ids).append(r)
        states = []
        if ids:
            if isinstance(ids[0], EagerResult):
                states = [r.state for r in ids]
            else:
                app = ids[0].app
                app.flush_pending()
                stored = app.backend.get_many([r.id for r in ids])
                states = [stored[r.id].state if r.id in stored else PENDING.value for r in ids]
        for g in groups:
            states.extend(g._states())
        return states

    def ready(self) -> bool:
        """True when every task has finished."""
        return all(s in READY_STATES for s in self._states())

    def successful(self) -> bool:
        """True when every task succeeded."""
        return all(s == SUCCESS for s in self._states())

    def failed(self) -> bool:
        """True when any task failed."""
        return any(s == FAILURE for s in self._states())

    def waiting(self) -> bool:
        """True when some task has not finished."""
        return not self.ready()

    def completed_count(self) -> int:
        """How many tasks succeeded."""
        return sum(s == SUCCESS for s in self._states())

    def get(self, timeout: float | None = None, *, propagate: bool = True,
            interval: float | None = None) -> list[Any]:
        """Wait for all and return their results in order (a nested group gives a list);
        ``timeout`` covers the whole wait. With ``propagate`` the first failure (in order)
        is raised."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for result in self.results:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.append(result.get(timeout=left, propagate=propagate))
        return values

    join = get

    def join_native(self, timeout: float | None = None, *, propagate: bool = True) -> list[Any]:
        """Same as :meth:`get` (Celery's name for its faster backend path)."""
        return self.get(timeout, propagate=propagate)

    def forget(self) -> None:
        """Delete every task's record."""
        for result in self.results:
            result.forget()


class GroupResult(ResultSet):
    """The results of a group, in member order; ``save()`` keeps it for ``restore(id)``."""

    def __init__(self, results: list[Any], *, id: str | None = None,
                 app: Conveyor | None = None, parent: Any = None) -> None:
        super().__init__(results, app=app)
        self.id = id
        self.parent = parent
        self.children: list[Any] = []
        _adopt(parent, self)

    def __repr__(self) -> str:
        return f"<GroupResult {self.id} [{len(self.results)} tasks]>"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, GroupResult) and other.id == self.id
                and other.results == self.results)

    __hash__ = None  # type: ignore[assignment]

    def collect(self, *, timeout: float | None = None) -> Any:
        """Yield ``(result, value)`` for each member and, depth first, their children."""
        for member in self.results:
            yield from _collect(member, timeout)

    def _tree(self) -> list[Any]:
        return [r._tree() if isinstance(r, GroupResult) else r.id for r in self.results]

    def save(self) -> None:
        """Keep the member ids in the backend (for ``result_expires``), so
        :meth:`restore` can rebuild this handle in another process."""
        if self.app is None or self.id is None:
            raise ValueError("only a sent group (with an id and an app) can be saved")
        data = dumps_json({"id": self.id, "results": self._tree()})
        self.app.backend.put_entry(GROUP_ENTRY + self.id, data,
                                   ttl=self.app.conf.result_expires)

    def delete(self) -> None:
        """Remove what :meth:`save` kept."""
        if self.app is not None and self.id is not None:
            self.app.backend.delete_entry(GROUP_ENTRY + self.id)

    @classmethod
    def restore(cls, group_id: str, *, app: Conveyor) -> GroupResult | None:
        """The group saved under ``group_id``; None when unknown or expired."""
        raw = app.backend.entries(GROUP_ENTRY + group_id).get(GROUP_ENTRY + group_id)
        if raw is None:
            return None
        data = loads_json(raw)

        def build(gid: str | None, items: list[Any]) -> GroupResult:
            return GroupResult([build(None, i) if isinstance(i, list) else
                                AsyncResult(str(i), app=app) for i in items], id=gid, app=app)

        return build(group_id, list(data["results"]))


class EagerResult(AsyncResult[Any]):
    """The outcome of a task run in this process (``task.apply()``, ``task_always_eager``):
    an :class:`AsyncResult` whose record is kept here, nothing read from a backend."""

    def __init__(self, task_id: str, value: Any, state: str, *, traceback: str | None = None,
                 name: str | None = None, parent: Any = None, retries: int = 0) -> None:
        # Not AsyncResult.__init__: there is no app (and no backend) behind it.
        self.id = task_id
        self.app = None  # type: ignore[assignment]
        self._parent = parent
        self._children = []
        self._final = None
        self._value = value
        self._state = str(state)
        self._traceback = traceback
        self._eager_record = TaskRecord(task_id, str(state), task=name, retries=retries,
                                        date_done=time.time(), traceback=traceback)
        _adopt(parent, self)

    def __repr__(self) -> str:
        return f"<EagerResult {self.id}: {self._state}>"

    def _record(self) -> TaskRecord | None:
        return self._eager_record

    @property
    def task_id(self) -> str:
        """Alias of ``id``."""
        return self.id

    @property
    def state(self) -> str:
        """SUCCESS, FAILURE (or REVOKED)."""
        return self._state

    status = state

    @property
    def result(self) -> Any:
        """The return value, or the exception on failure."""
        return self._value

    info = result

    @property
    def traceback(self) -> str | None:
        """The formatted traceback of the failure, if any."""
        return self._traceback

    def exists(self) -> bool:
        """Always True: the task ran."""
        return True

    def ready(self) -> bool:
        """Always True."""
        return True

    def successful(self) -> bool:
        """True when the task succeeded."""
        return self._state == SUCCESS

    def failed(self) -> bool:
        """True when the task failed."""
        return self._state == FAILURE

    def get(self, timeout: float | None = None, *, propagate: bool = True,
            interval: float | None = None, disable_sync_subtasks: bool = True) -> Any:
        """The return value; the exception is raised when it failed and ``propagate``."""
        if self._state != SUCCESS and propagate and isinstance(self._value, BaseException):
            raise self._value
        return self._value

    wait = get

    def forget(self) -> None:
        """Nothing to forget: no backend holds it."""


#: Prefix of saved groups in the backend's entry area.
GROUP_ENTRY = "group:"
