"""The Broker interface: what a driver must do to carry task messages.

A driver moves opaque bytes. The core owns serialization, retries, long delays (re-delayed in
hops when a driver's ``max_delay`` is short), dead-lettering policy and heartbeats.

Semantics every driver keeps (the contract suite in :mod:`conveyor.testing` checks them):

* **At-least-once.** A reserved message stays in the broker until ``ack``. When its lease
  runs out without ``ack``/``extend`` it is delivered again, to any consumer.
* **One live lease.** ``reserve`` is atomic: a message never has two unexpired leases.
* **Delays live in the broker.** ``delay`` and ``nack(delay=)`` are stored server-side.
* **Dead letters are kept** with their reason until deleted; moving a message there may
  duplicate it but never loses it.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from conveyor.url import URL


@dataclass(frozen=True)
class BrokerCapabilities:
    """What a broker driver can do; the contract suite and the core read these.

    ``max_delay``/``max_lease`` are in seconds (``None``: unlimited). ``time_resolution`` is
    the coarsest step of the server's clock for delays and leases, in seconds.
    """

    max_delay: float | None = None
    max_lease: float | None = None
    time_resolution: float = 0.001
    exact_stats: bool = True
    fifo: bool = False
    blocking_reserve: bool = True
    #: False for single-process drivers (``memory://``): workers in other processes can't share it.
    shared_between_processes: bool = True
    #: ``enqueue``/``enqueue_many`` take ``priority=`` (0..9, 9 first); within one queue a
    #: ready message of a higher priority is reserved before any lower one, and a message
    #: keeps its priority through ``nack`` and lease expiry. Only brokers declaring it are
    #: passed the keyword.
    priorities: bool = False
    #: Largest message body in bytes the broker takes (``None``: no fixed limit). The core
    #: refuses a larger one at send time with an error naming the limit.
    max_message_size: int | None = None
    #: ``enqueue``/``enqueue_many`` take ``message_group=`` (a string): on a queue that keeps
    #: order per group (an SQS FIFO queue), messages of one group are delivered in the order
    #: sent, one at a time. Only brokers declaring it are passed the keyword, and only for a
    #: message sent with a group (``apply_async(message_group=...)`` or the task's option).
    message_groups: bool = False
    #: Longest ``reserve`` wait (seconds) worth making while idle, for brokers that bill or
    #: cost per request (SQS: one long poll per 20 s). The worker waits this long instead of
    #: ``worker_poll_wait`` when it is longer, and calls :meth:`Broker.wake` on shutdown so
    #: the wait never delays it. ``None``: the worker's ``worker_poll_wait``.
    idle_wait: float | None = None


@dataclass(frozen=True, slots=True)
class Reservation:
    """A message held under a lease by one consumer.

    ``attempts`` counts deliveries of this message (1 on first delivery). ``receipt`` is the
    driver's private handle (row id, token, receipt handle); the core never looks inside it.
    """

    queue: str
    message_id: str
    body: bytes
    attempts: int
    receipt: Any = field(default=None, compare=False, repr=False)
    reserved_at: float = field(default_factory=time.time, compare=False)


@dataclass(frozen=True)
class DeadLetter:
    """A message in a queue's dead-letter queue, with the reason it was put there."""

    queue: str
    message_id: str
    body: bytes
    reason: str
    dead_at: float


@dataclass(frozen=True)
class QueueStats:
    """Message counts of one queue. Approximate when the driver says ``exact_stats=False``."""

    queue: str
    ready: int
    delayed: int
    reserved: int
    dead: int


class Broker(ABC):
    """Carries task messages between producers and workers.

    Drivers are built from a :class:`~conveyor.url.URL` and keyword-only options, must be
    safe to share between threads, and translate their client's exceptions into
    :mod:`conveyor.exceptions` (transient ones as :class:`ConnectionLostError`).
    """

    capabilities: ClassVar[BrokerCapabilities] = BrokerCapabilities()
    #: What to do about a body over ``capabilities.max_message_size``, ending the core's
    #: refusal; a driver with an option for large bodies names it.
    large_message_hint: ClassVar[str] = "keep large values elsewhere and pass a reference"

    def __init__(self, url: URL, **options: Any) -> None:
        self.url = url

    # -- producing ------------------------------------------------------------------------
    @abstractmethod
    def enqueue(self, queue: str, message: bytes, *, delay: float = 0.0) -> str:
        """Store ``message`` on ``queue``, deliverable after ``delay`` seconds; return its id.

        ``delay`` is at most ``capabilities.max_delay`` (the core hops longer delays).
        Durable once it returns, or at the latest once the same thread's next call on this
        broker returns: a driver may write now and read the server's confirmation then (the
        Redis driver does), provided it sends the message again when the confirmation is
        lost and raises from that next call when the server refused it. Never lost silently.
        """

    def enqueue_many(self, queue: str, messages: Sequence[bytes], *,
                     delay: float = 0.0) -> list[str]:
        """Store several messages; drivers override this to send them in one round trip."""
        return [self.enqueue(queue, m, delay=delay) for m in messages]

    # -- consuming ------------------------------------------------------------------------
    @abstractmethod
    def reserve(self, queues: Sequence[str], *, lease: float, wait: float = 0.0,
                limit: int = 1) -> list[Reservation]:
        """Take up to ``limit`` ready messages, each under a lease of ``lease`` seconds.

        Earlier queues in ``queues`` are served first. Blocks up to ``wait`` seconds when
        nothing is ready and returns ``[]`` on timeout. Atomic per message.
        """

    @abstractmethod
    def ack(self, reservation: Reservation) -> None:
        """Remove a reserved message for good. Idempotent; acking after the lease was lost is
        harmless (the message may then be delivered again)."""

    def ack_many(self, reservations: Sequence[Reservation]) -> None:
        """Ack several reservations, each as :meth:`ack`; override to do it in one round
        trip (not necessarily atomic as a whole)."""
        for reservation in reservations:
            self.ack(reservation)

    @abstractmethod
    def nack(self, reservation: Reservation, *, delay: float = 0.0) -> None:
        """Give a reserved message back, deliverable again after ``delay`` seconds."""

    @abstractmethod
    def extend(self, reservation: Reservation, *, lease: float) -> bool:
        """Push the lease out to ``lease`` seconds from now. Returns False when the lease was
        already lost (expired and possibly re-delivered, or acked)."""

    @abstractmethod
    def dead_letter(self, reservation: Reservation, *, reason: str) -> None:
        """Move a reserved message to its queue's dead-letter queue, keeping ``reason``."""

    # -- administration -------------------------------------------------------------------
    @abstractmethod
    def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters of ``queue``."""

    @abstractmethod
    def delete_dead(self, queue: str, message_ids: Iterable[str] | None = None) -> int:
        """Delete the named dead letters (all of ``queue``'s when ``None``); return how many."""

    @abstractmethod
    def purge(self, queue: str) -> int:
        """Delete ready and delayed messages of ``queue`` (not reserved, not dead); return how
        many were deleted (approximate when ``exact_stats`` is False)."""

    @abstractmethod
    def stats(self, queue: str) -> QueueStats:
        """Counts of ready, delayed, reserved and dead messages on ``queue``."""

    def queues(self) -> list[str]:
        """Names of queues the broker knows about (best effort; may be empty)."""
        return []

    def wake(self) -> None:  # noqa: B027 - optional hook
        """Make every ``reserve`` of this instance blocked now return promptly (with what it
        holds, usually ``[]``); when none is blocked, the next one returns promptly instead
        (so a wake racing the start of a wait is not missed); later calls wait as usual. Safe
        from any thread and from a signal handler. Brokers declaring ``idle_wait`` must
        implement it; a message an abandoned request still takes must not be lost (its lease
        lapses and it comes back)."""

    def ping(self) -> None:
        """Raise a :class:`~conveyor.exceptions.DriverError` when the server is unreachable."""
        self.stats("__ping__")

    def info(self) -> dict[str, str]:
        """Driver-specific facts for ``conveyor check`` (e.g. a schema version). May query."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Idempotent."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url.masked!r})"
