"""The task record: state, result or error, retries and attempt history, as the core sees it.

Backends keep it as :class:`~conveyor.backend.StoredRecord` bytes; this module converts.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from conveyor.backend import StoredRecord
from conveyor.exceptions import MessageDecodeError, RemoteTaskError
from conveyor.serialization import Codec, dumps_json, loads_json

if TYPE_CHECKING:
    from conveyor.message import Message


@dataclass
class Attempt:
    """One try at running a task. ``outcome`` is success, failure, retry, lost or rejected."""

    number: int
    worker: str | None
    started_at: float | None
    finished_at: float | None = None
    outcome: str | None = None
    error_type: str | None = None
    error_message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form kept in records and messages."""
        return {"number": self.number, "worker": self.worker, "started_at": self.started_at,
                "finished_at": self.finished_at, "outcome": self.outcome,
                "error_type": self.error_type, "error_message": self.error_message}


@dataclass
class TaskRecord:
    """Everything the backend knows about one task."""

    task_id: str
    state: str
    task: str | None = None
    queue: str | None = None
    result: Any = None
    result_type: str = "json"
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    retries: int = 0
    attempts: list[dict[str, Any]] = field(default_factory=list)
    worker: str | None = None
    date_done: float | None = None
    updated_at: float | None = None
    parent: str | None = None
    group: str | None = None
    dead_letter_reason: str | None = None
    #: Ids of what this task started on success: its chain's next step (a group's id for
    #: a group or chord), its callbacks. Read by ``AsyncResult.children`` and the CLI.
    children: list[str] = field(default_factory=list)
    #: When the producer sent the task and when it was due (a countdown, eta or retry
    #: delay): the dashboard's wait time is the last attempt's start minus the later one.
    sent_at: float | None = None
    eta: float | None = None
    #: With ``result_extended``: the arguments as the message carried them (``args_type``
    #: says how they are encoded, as ``Message.content_type``), and the ``argsrepr`` /
    #: ``kwargsrepr`` shown instead of them when the sender gave those.
    args: Any = None
    kwargs: Any = None
    args_type: str | None = None
    argsrepr: str | None = None
    kwargsrepr: str | None = None

    def to_stored(self) -> StoredRecord:
        """Encode for a backend driver."""
        # A shallow dict (asdict() would deep-copy the attempt history on every write),
        # without fields left at their empty defaults.
        # (A result of [] is a value, kept: only an empty attempt history is left out.)
        data = {name: value for name in _FIELDS
                if (value := getattr(self, name)) is not None
                and (value != [] or name == "result")}
        return StoredRecord(self.task_id, self.state, dumps_json(data), self.task, self.queue,
                            self.worker)

    @classmethod
    def from_stored(cls, stored: StoredRecord) -> TaskRecord:
        """Decode what a backend driver returned."""
        data = loads_json(stored.data)
        if not isinstance(data, dict):
            raise MessageDecodeError(f"record of {stored.task_id} is not a JSON object")
        record = cls(**{k: v for k, v in data.items() if k in _FIELDS})
        record.state = stored.state
        return record

    def value(self, codec: Codec) -> Any:
        """The decoded result (for SUCCESS)."""
        return codec.unpack(self.result_type, self.result)

    def exception(self) -> BaseException:
        """Rebuild the task's exception: the original class when it can be imported and
        built from its message, else :class:`RemoteTaskError` carrying type and message."""
        type_name = self.error_type or "Exception"
        message = self.error_message or ""
        module_name, _, qualname = type_name.rpartition(".")
        # Only classes from modules already imported here: a stored record must not be able
        # to make the reader import arbitrary code.
        obj: Any = sys.modules.get(module_name or "builtins")
        try:
            for part in qualname.split("."):
                obj = getattr(obj, part)
            if isinstance(obj, type) and issubclass(obj, BaseException):
                exc = obj(message)
                if str(exc) == message:
                    return exc
        except Exception:
            pass
        return RemoteTaskError(type_name, message)


def request_fields(msg: Message, *, extended: bool) -> dict[str, Any]:
    """The record fields a worker copies from the message it runs: when it was sent and
    due, and with ``extended`` (the ``result_extended`` setting) its arguments."""
    found: dict[str, Any] = {"sent_at": msg.sent_at or None, "eta": msg.eta}
    if extended:
        found.update(args=msg.args, kwargs=msg.kwargs, args_type=msg.content_type,
                     argsrepr=msg.argsrepr, kwargsrepr=msg.kwargsrepr)
    return found


_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(TaskRecord))
