"""The one error hierarchy of conveyor, rooted at :class:`ConveyorError`.

Each error mixes in the builtin a caller would already catch (``ImportError``, ``ValueError``,
``TimeoutError``, ``ConnectionError``), so ``except ValueError`` keeps working. Errors a caller may
simply try again declare ``retryable = True``.
"""

from __future__ import annotations

import builtins
from typing import Any


class ConveyorError(Exception):
    """Root of every error conveyor raises on purpose."""

    retryable: bool = False


class ConfigurationError(ConveyorError, ValueError):
    """A setting, URL or option is invalid; the message says which and how to fix it."""


class ConfigurationWarning(UserWarning):
    """A key given to the configuration is no setting (the message names the nearest one)."""


class InvalidURLError(ConfigurationError):
    """A broker or backend URL cannot be parsed or names nothing usable."""


class UnknownSchemeError(ConfigurationError, LookupError):
    """No broker or backend driver is registered for the URL's scheme."""


class MissingDependencyError(ConveyorError, ImportError):
    """A driver's client library is not installed; the message names the extra to install."""


class DriverError(ConveyorError):
    """A broker or backend operation failed; ``__cause__`` holds the client's exception."""


class ConnectionLostError(DriverError, ConnectionError):
    """The server could not be reached or the connection dropped. Safe to try again."""

    retryable = True


class ValueRefusedError(DriverError, ValueError):
    """The server is up but refuses this value (too large, an id too long or holding a
    character it cannot store, out of memory). Trying the same value again cannot succeed."""


class AuthenticationError(DriverError, PermissionError):
    """The server refused the credentials, or the database/bucket does not exist."""


class LeaseLostError(DriverError):
    """The reservation's lease expired and the message may already be with another worker."""


class SerializationError(ConveyorError, ValueError):
    """Arguments or a result cannot be encoded (raised at send time, not in the worker)."""


class TaskOptionError(ConveyorError, ValueError):
    """An option given when sending a task is invalid (negative countdown, eta in the past...)."""


class MessageDecodeError(ConveyorError, ValueError):
    """A message's bytes cannot be decoded or its signature does not verify."""


class NotRegisteredError(ConveyorError, KeyError):
    """A message names a task the worker does not know."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ImproperlyConfiguredError(ConfigurationError):
    """Settings contradict each other."""


class TimeoutError(ConveyorError, builtins.TimeoutError):
    """``AsyncResult.get`` waited longer than its timeout."""


class TaskError(ConveyorError):
    """Base of errors that describe a task's own outcome."""


class Retry(TaskError):  # noqa: N818 - Celery's name, raised by ``self.retry()``
    """Raised by ``Task.retry`` to tell the worker to schedule another attempt.

    ``raise self.retry(...)`` is the idiom; the worker catches it, records RETRY and re-sends.
    """

    def __init__(self, message: str = "", *, exc: BaseException | None = None,
                 when: float | None = None, max_retries: int | None = None,
                 args: list[Any] | None = None, kwargs: dict[str, Any] | None = None,
                 queue: str | None = None, priority: int | None = None) -> None:
        super().__init__(message or (f"Retry: {exc!r}" if exc else "Retry"))
        self.exc = exc
        self.when = when
        self.max_retries = max_retries
        #: New arguments for the next attempt (None: the same ones).
        self.args_override = args
        self.kwargs_override = kwargs
        #: Where and how urgently the next attempt goes (None: as this one).
        self.queue = queue
        self.priority = priority


class MaxRetriesExceededError(TaskError):
    """The task asked to retry but has used up ``max_retries``."""


class TaskRevokedError(TaskError):
    """The task was revoked or expired before it ran."""


class SoftTimeLimitExceeded(TaskError):  # noqa: N818 - Celery's name
    """Raised inside a task that ran past its ``soft_time_limit``: it may clean up and
    return, raise, or retry."""


class TimeLimitExceeded(TaskError):  # noqa: N818 - Celery's name
    """Recorded as the failure of a task that ran past its hard ``time_limit``."""


class Terminated(TaskError):  # noqa: N818 - Celery's name
    """Raised inside a running task revoked with ``terminate=True``."""


class RemoteTaskError(TaskError):
    """A task failed with an exception whose class cannot be rebuilt here.

    ``exc_type`` is the qualified name of the original class, ``args`` its message.
    """

    def __init__(self, exc_type: str, message: str) -> None:
        super().__init__(f"{exc_type}: {message}")
        self.exc_type = exc_type
        self.message = message


class ChordError(TaskError):
    """A chord's body could not run because a header task failed (the message names it)."""


class Replace(TaskError):  # noqa: N818 - a signal, like Retry
    """Raised by ``Task.replace(sig)``: the worker runs ``sig`` in the task's place."""

    def __init__(self, sig: Any) -> None:
        super().__init__(f"replaced by {sig!r}")
        self.sig = sig


class Reject(TaskError):  # noqa: N818 - Celery's name
    """Raised inside a task to send its message to the dead-letter queue without retrying."""

    def __init__(self, reason: str = "rejected by task") -> None:
        super().__init__(reason)
        self.reason = reason


__all__ = [
    "AuthenticationError", "ChordError",
    "ConfigurationError", "ConfigurationWarning", "ConnectionLostError",
    "ConveyorError",
    "DriverError", "ImproperlyConfiguredError", "InvalidURLError", "LeaseLostError",
    "MaxRetriesExceededError", "MessageDecodeError", "MissingDependencyError",
    "NotRegisteredError", "Reject", "RemoteTaskError", "Replace", "Retry", "SerializationError",
    "SoftTimeLimitExceeded", "TaskError", "TaskOptionError", "TaskRevokedError", "Terminated",
    "TimeLimitExceeded", "TimeoutError", "UnknownSchemeError", "ValueRefusedError",
]


class ExceptionInfo:
    """An exception with its formatted traceback, as task hooks and signals receive it
    (Celery's ``einfo``): ``exception``, ``type``, ``traceback`` (text)."""

    __slots__ = ("exception", "traceback", "type")

    def __init__(self, exception: BaseException, traceback: str | None = None) -> None:
        self.exception = exception
        self.type = type(exception)
        self.traceback = traceback or ""

    def __str__(self) -> str:
        return self.traceback

    def __repr__(self) -> str:
        return f"<ExceptionInfo {self.type.__name__}: {self.exception}>"


def describe(exc: BaseException) -> dict[str, Any]:
    """Return a JSON-safe description of ``exc``: its qualified type and message."""
    cls = type(exc)
    return {"type": f"{cls.__module__}.{cls.__qualname__}", "message": str(exc)}
