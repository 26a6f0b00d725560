"""Messages that cannot be finished: they end in the dead-letter queue, never loop.

Two ways a message can be delivered for ever: the backend refuses its outcome (a result over
MySQL's ``max_allowed_packet``, a task id too long for the results table or holding a NUL on
PostgreSQL, Redis out of memory), or something else keeps killing or failing its delivery
before the ack. The first is recognised by the driver's :class:`ValueRefusedError` and ended
at once; the second by ``broker_max_deliveries``. Either way the message goes to the
dead-letter queue with a reason, and a small FAILURE record (no result, no traceback) is
stored when the backend takes one, so ``get()`` raises instead of waiting for ever.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from conveyor.broker import Reservation
from conveyor.exceptions import MessageDecodeError, ValueRefusedError
from conveyor.message import Message
from conveyor.record import Attempt, TaskRecord
from conveyor.states import FAILURE

if TYPE_CHECKING:
    from conveyor.worker.runner import TaskRunner

log = logging.getLogger("conveyor.worker")

REFUSED_TYPE = "conveyor.exceptions.ValueRefusedError"
OVER_DELIVERED_TYPE = "conveyor.exceptions.DeliveryLimitError"


class PoisonGuard:
    """Ends the messages of one worker's :class:`TaskRunner` that cannot be finished."""

    def __init__(self, runner: TaskRunner) -> None:
        self.runner = runner

    def over_delivered(self, res: Reservation) -> bool:
        """True when ``res`` has been delivered more than ``broker_max_deliveries`` times;
        then it has been dead-lettered (or, when its task already finished, acked)."""
        limit = self.runner.app.conf.broker_max_deliveries
        if not limit or res.attempts <= limit:
            return False
        reason = (f"delivered {res.attempts} times without finishing (broker_max_deliveries="
                  f"{limit}): each delivery was lost before its outcome was stored")
        self._end(res, reason, OVER_DELIVERED_TYPE, lost=res.attempts - 1)
        return True

    def refused(self, res: Reservation, exc: ValueRefusedError, *, what: str = "outcome") -> None:
        """End ``res`` whose outcome (or follow-up, or ``what`` else) the backend or broker
        refused."""
        reason = f"{what} refused: {exc}"
        self._end(res, reason, REFUSED_TYPE, lost=res.attempts - 1, finished=True)

    def _end(self, res: Reservation, reason: str, error_type: str, *, lost: int,
             finished: bool = False) -> None:
        runner = self.runner
        try:
            msg: Message | None = Message.decode(res.body, runner.app.signer)
        except MessageDecodeError:
            msg = None
        if msg is not None and not finished:
            found = runner._reliably(lambda: runner.app.backend.get(msg.id))
            if found is not None and found.ready:
                log.info("task %s[%s] already finished; acking its delivery %d", msg.task,
                         msg.id, res.attempts)
                runner._reissue_followups(msg)
                runner._ack(res)
                return
        # Dead-letter first, as for any failure: a crash before the record is stored then
        # leaves a dead letter, never a message acked without one.
        runner._dead_letter(res, reason)
        if msg is None:
            return
        history = list(msg.history)
        for _ in range(lost):
            history.append(Attempt(len(history) + 1, None, None, outcome="lost").to_dict())
        if finished:
            now = time.time()
            history.append(Attempt(len(history) + 1, runner.hostname, None, now, "failure",
                                   error_type, reason).to_dict())
        record = TaskRecord(msg.id, FAILURE, task=msg.task, queue=res.queue,
                            retries=msg.retries, attempts=history, worker=runner.hostname,
                            date_done=time.time(), updated_at=time.time(), parent=msg.parent,
                            group=msg.group, error_type=error_type, error_message=reason,
                            dead_letter_reason=reason)
        try:
            runner._store(record)
        except ValueRefusedError as again:
            log.error("task %s: not even a FAILURE record could be stored (%s); its message is "
                      "in the dead-letter queue", _short(msg.id), again)
        runner._canvas_failure(msg, (error_type, reason), None)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"

