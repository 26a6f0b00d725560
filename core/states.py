"""Task states. Each is a ``str``, so ``result.state == "SUCCESS"`` works as in Celery."""

from __future__ import annotations

from enum import Enum


class State(str, Enum):
    """The life of a task: PENDING -> STARTED -> (RETRY -> STARTED)* -> SUCCESS/FAILURE/REVOKED."""

    PENDING = "PENDING"
    STARTED = "STARTED"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"

    def __str__(self) -> str:
        return self.value


PENDING = State.PENDING
STARTED = State.STARTED
RETRY = State.RETRY
SUCCESS = State.SUCCESS
FAILURE = State.FAILURE
REVOKED = State.REVOKED

#: States after which nothing changes: the first one written wins.
READY_STATES: frozenset[str] = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
#: States that are neither queued nor finished.
UNREADY_STATES: frozenset[str] = frozenset({"PENDING", "STARTED", "RETRY"})
ALL_STATES: frozenset[str] = READY_STATES | UNREADY_STATES


def is_terminal(state: str) -> bool:
    """True when ``state`` is SUCCESS, FAILURE or REVOKED."""
    return state in READY_STATES
