"""Dead-letter queue operations shared by the CLI and applications."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from conveyor.app import Outgoing
from conveyor.broker import DeadLetter
from conveyor.exceptions import MessageDecodeError
from conveyor.message import Message
from conveyor.record import TaskRecord
from conveyor.states import PENDING

if TYPE_CHECKING:
    from conveyor.app import Conveyor


@dataclass(frozen=True)
class DeadLetterView:
    """A dead letter with what could be decoded of its message."""

    letter: DeadLetter
    task_id: str | None
    task: str | None
    args: Any
    kwargs: Any
    retries: int | None
    decode_error: str | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict for ``--json`` output."""
        return {"message_id": self.letter.message_id, "queue": self.letter.queue,
                "reason": self.letter.reason, "dead_at": self.letter.dead_at,
                "task_id": self.task_id, "task": self.task, "args": self.args,
                "kwargs": self.kwargs, "retries": self.retries,
                "decode_error": self.decode_error,
                "body": None if self.task_id else self.letter.body.decode("utf-8", "replace")}


def view(app: Conveyor, letter: DeadLetter) -> DeadLetterView:
    """Decode what can be decoded of ``letter``."""
    try:
        msg = Message.decode(letter.body, app.signer)
    except MessageDecodeError as exc:
        return DeadLetterView(letter, None, None, None, None, None, str(exc))
    return DeadLetterView(letter, msg.id, msg.task, msg.args, msg.kwargs, msg.retries, None)


def replay(app: Conveyor, letters: Iterable[DeadLetter],
           progress: Callable[[], None] = lambda: None) -> int:
    """Send dead letters back to their queue and delete them from the DLQ.

    A decodable message starts over: retry count 0, no eta or expiry, and its old terminal
    record is replaced by PENDING (an operator's replay is the one thing allowed to reopen a
    finished task). An undecodable one is re-sent as it is. Re-send happens before delete,
    so a crash in between duplicates, never loses.
    """
    count = 0
    for letter in letters:
        try:
            msg = Message.decode(letter.body, app.signer)
        except MessageDecodeError:
            app.broker.enqueue(letter.queue, letter.body)
        else:
            old = app.record(msg.id)
            history = old.attempts if old is not None and old.attempts else list(msg.history)
            fresh = replace(msg, retries=0, eta=None, expires=None, history=history)
            app.backend.forget(msg.id)
            app.backend.store(TaskRecord(msg.id, PENDING, task=msg.task, queue=letter.queue,
                                         attempts=history).to_stored(),
                              ttl=app.conf.result_expires)
            app.enqueue([Outgoing(fresh, letter.queue, 0.0)])
        app.broker.delete_dead(letter.queue, [letter.message_id])
        count += 1
        progress()
    return count
