"""Dead-letter queue operations shared by the CLI and applications."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from conveyor.app import Outgoing
from conveyor.broker import DeadLetter
from conveyor.canvas import followups as canvas
from conveyor.exceptions import MessageDecodeError
from conveyor.message import Message
from conveyor.record import TaskRecord
from conveyor.serialization import SIGNED_PREFIX
from conveyor.states import PENDING, READY_STATES

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
        msg = Message.decode(letter.body, app.signer, check_age=False)
    except MessageDecodeError as exc:
        return DeadLetterView(letter, None, None, None, None, None, str(exc))
    return DeadLetterView(letter, msg.id, msg.task, msg.args, msg.kwargs, msg.retries, None)


@dataclass(frozen=True)
class Skipped:
    """A dead letter :func:`replay` left in the dead-letter queue, and why."""

    letter: DeadLetter
    reason: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict for ``--json`` output."""
        return {"message_id": self.letter.message_id, "queue": self.letter.queue,
                "reason": self.reason}


@dataclass
class ReplayReport:
    """What :func:`replay` did: how many dead letters it re-sent, which it left alone."""

    replayed: int = 0
    skipped: list[Skipped] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict for ``--json`` output."""
        return {"replayed": self.replayed, "skipped": [s.to_json() for s in self.skipped]}


def _unverifiable(app: Conveyor, body: bytes) -> str | None:
    """Why ``body``'s signature cannot be verified here (None when it verifies, or when
    signing is not in use at all)."""
    if not app.signer.enabled:
        if body.startswith(SIGNED_PREFIX):
            return ("its signature cannot be verified: the message is signed but no "
                    "task_signing_key is configured here; replay it with the key")
        return None
    try:
        app.signer.verify(body)
    except MessageDecodeError as exc:
        return f"its signature cannot be verified ({exc})"
    return None


def _reopens_safely(old: TaskRecord | None, letter: DeadLetter) -> bool:
    """A replay may replace the task's record only when it is not terminal, or is the
    FAILURE written together with this very dead letter."""
    if old is None or old.state not in READY_STATES:
        return True
    return old.dead_letter_reason is not None and old.dead_letter_reason == letter.reason


def replay(app: Conveyor, letters: Iterable[DeadLetter],
           progress: Callable[[], None] = lambda: None) -> ReplayReport:
    """Send dead letters back to their queue and delete them from the DLQ.

    A decodable message starts over: retry count 0, no eta or expiry, and the FAILURE
    recorded when it was dead-lettered is replaced by PENDING (an operator's replay is the one
    thing allowed to reopen a finished task). A message that is not a conveyor message is
    re-sent as it is. Re-send happens before delete, so a crash in between duplicates, never
    loses.

    Left in the dead-letter queue, and listed in the report's ``skipped``: a message whose
    signature cannot be verified here (forged, or signed with a key this app lacks), and one
    whose task id holds a terminal record this dead letter did not produce (a task that has
    since succeeded, or a forged message naming someone else's task): replay never deletes
    a record it did not write.
    """
    report = ReplayReport()
    for letter in letters:
        why = _unverifiable(app, letter.body)
        if why is None:
            why = _resend(app, letter)
        if why is not None:
            report.skipped.append(Skipped(letter, why))
        else:
            app.broker.delete_dead(letter.queue, [letter.message_id])
            report.replayed += 1
        progress()
    return report


def _resend(app: Conveyor, letter: DeadLetter) -> str | None:
    """Re-send one verified dead letter; the reason it was not re-sent, or None."""
    try:
        # An operator's replay re-signs the message: its age starts again.
        msg = Message.decode(letter.body, app.signer, check_age=False)
    except MessageDecodeError:
        app.broker.enqueue(letter.queue, letter.body)
        return None
    old = app.record(msg.id)
    if not _reopens_safely(old, letter):
        assert old is not None
        return (f"task {msg.id} already holds a {old.state} record that this dead letter did "
                "not produce; it is left as it is")
    history = old.attempts if old is not None and old.attempts else list(msg.history)
    fresh = replace(msg, retries=0, eta=None, expires=None, history=history)
    # Replace the record this dead letter produced (store() keeps a terminal record).
    app.backend.forget(msg.id)
    canvas.reopen(app, msg)  # the rest of its chain, failed by it, may run again
    app.backend.store(TaskRecord(msg.id, PENDING, task=msg.task, queue=letter.queue,
                                 attempts=history).to_stored(), ttl=app.conf.result_expires)
    app.enqueue([Outgoing(fresh, letter.queue, 0.0)])
    return None
