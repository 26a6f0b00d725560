"""``sqs://?region=...&prefix=...``: an Amazon SQS broker (boto3).

One SQS queue per conveyor queue, named ``<prefix><queue>`` (``conveyor-`` by default) and
created on first use unless ``create_queues=false``; its dead letters live in a companion
queue ``<prefix><queue>-dlq``, each carrying its reason, original id and time as message
attributes. A queue whose name ends in ``.fifo`` is an SQS FIFO queue: each message goes in
the group named by its ``message_group`` (``apply_async(message_group=...)`` or the task's
option; the URL's ``message_group`` when it has none), so messages of one key come in send
order, one at a time, while other keys go on; each send carries a fresh deduplication id,
which SQS uses to drop the copies of botocore's retries of that request.

How the interface maps onto SQS:

* ``reserve`` is ReceiveMessage (up to 10, long polling up to ``wait_time_seconds``) with the
  lease as its VisibilityTimeout; ``attempts`` is ApproximateReceiveCount. The capabilities
  declare ``idle_wait=wait_time_seconds``, so an idle worker makes one request per 20 s. A
  long poll runs on a helper thread and :meth:`SQSBroker.wake` abandons it (the worker's
  shutdown): messages it still receives are given back by the driver, or, when the process
  has gone, come back once their visibility timeout (the lease) lapses: never lost.
* ``extend`` and ``nack(delay)`` are ChangeMessageVisibility; ``ack``/``ack_many`` are
  DeleteMessage(Batch); ``enqueue_many`` is SendMessageBatch; delays are DelaySeconds (up to
  ``max_delay`` <= 900 s; the core hops longer ones).
* **Lease tokens.** SQS (and moto) accept a stale receipt handle: a worker whose lease ran out
  could change or delete the new holder's delivery. Each reservation therefore carries its own
  lease clock (the monotonic time before the receive, plus the visibility timeout, which the
  server's timer can only outlast); ``extend``/``nack``/``ack`` of a lease that clock says has
  run out send nothing and report it lost. A receive that took over a third of the lease (a
  long poll the message came late in) restarts its messages' visibility timeout at once, one
  ChangeMessageVisibilityBatch, so the clock starts before that request instead.
* **Bodies** go as text when they are valid UTF-8 that SQS accepts, else base64. A body too
  large for ``max_message_size`` (256 KiB by default) is put in S3 under
  ``large_payload_bucket`` (:class:`conveyor.stores.aws.LargePayloads`) and the message
  carries a pointer; the object is deleted by the ack of a live lease and by ``delete_dead``
  (anything else is left to a bucket lifecycle rule). Without a bucket the capabilities
  declare ``max_message_size``, so the core refuses a larger body at send time, naming the
  limit and the option.
* **purge** deletes the ready messages it can receive and, since SQS cannot remove a delayed
  message without also removing reserved ones (PurgeQueue drops both), tags the queue with the
  purge time: a delayed message sent before it is deleted when it first comes due.
* ``stats`` are SQS's approximate attribute counts (``exact_stats=False``).
"""

from __future__ import annotations

import base64
import contextlib
import math
import re
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from botocore.exceptions import ClientError

from conveyor.broker import Broker, BrokerCapabilities, DeadLetter, QueueStats, Reservation
from conveyor.exceptions import (
    AuthenticationError,
    ConfigurationError,
    DriverError,
    ValueRefusedError,
)
from conveyor.stores.aws import (
    AwsErrors,
    LargePayloads,
    client_defaults,
    error_code,
    make_client,
    options_of,
)
from conveyor.url import URL

_DEFAULTS: dict[str, Any] = {
    **client_defaults(), "prefix": "conveyor-", "visibility_timeout": 30,
    "wait_time_seconds": 20, "create_queues": True, "max_delay": 900.0,
    "large_payload_bucket": "", "max_message_size": 262_144, "message_group": "default",
}
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
# Characters SQS accepts in a message body (XML 1.0's); anything else goes base64.
_REFUSED_CHARS = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_NOT_HELD = {"ReceiptHandleIsInvalid", "AWS.SimpleQueueService.MessageNotInflight",
             "MessageNotInflight", "InvalidParameterValue"}
_MISSING_QUEUE = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
_PURGED_TAG = "conveyor-purged-at"
_ENC, _DELAYED, _ID, _REASON, _DEAD_AT = "cv-enc", "cv-delayed", "cv-id", "cv-reason", "cv-dead"
#: Room kept under the size limit for message attributes.
_ATTRIBUTE_ROOM = 1024
#: Lease time an ``extend``/``nack`` keeps in hand for its request to reach SQS.
_MARGIN = 0.2
_MAX_VISIBILITY = 43_200
#: A receive for a ``reserve`` of 2 or more takes up to 10 messages; those beyond its ``limit``
#: wait in the driver for the next ``reserve`` for at most this long (seconds), then go back
#: to SQS: SQS bills per request, and a busy worker asks for a few messages at a time. When
#: spares had to go back (a consumer slower than its receives), the next receives of that
#: queue take only ``limit`` for :data:`_SPARE_PAUSE` seconds, so other workers get them.
_SPARE_HOLD = 0.5
_SPARE_PAUSE = 10.0
#: How long ``ack_many`` of a part batch waits before sending it: the worker's completer
#: gathers the acks that finish meanwhile into its next call, so deletes go 10 a request.
_ACK_LINGER = 0.25
_RECEIVE = {"MessageSystemAttributeNames": ["ApproximateReceiveCount", "SentTimestamp",
                                            "MessageGroupId"],
            "MessageAttributeNames": ["All"]}
#: How often a waiting ``reserve`` looks for a :meth:`SQSBroker.wake` (seconds).
_WAKE_CHECK = 0.1
_TOO_LARGE = ("set large_payload_bucket=BUCKET[/PREFIX] on the broker URL to send large "
              "bodies through S3")


@dataclass
class _Lease:
    """One delivery's receipt handle and its lease clock (monotonic seconds)."""

    url: str
    handle: str
    deadline: float
    received: float
    text: str
    attributes: dict[str, Any]
    pointer: tuple[str, str] | None = None
    group: str | None = None

    def alive(self, margin: float = 0.0) -> bool:
        return time.monotonic() < self.deadline - margin

    def end(self) -> None:
        self.deadline = -math.inf


@dataclass
class _Poll:
    """One long poll on a helper thread; ``abandoned`` when its ``reserve`` stopped waiting."""

    done: threading.Event
    result: list[Reservation] | None = None
    error: BaseException | None = None
    abandoned: bool = False


def _seconds(value: float, *, low: int = 0, high: int = _MAX_VISIBILITY) -> int:
    """Whole seconds for SQS, rounded up (a delay or lease never ends early)."""
    return max(low, min(high, math.ceil(max(value, 0.0) - 1e-6)))


def _text(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value}


def _attr(attributes: dict[str, Any], name: str) -> str | None:
    found = attributes.get(name)
    if found is None:
        return None
    if "BinaryValue" in found:
        return bytes(found["BinaryValue"]).decode("utf-8", "replace")
    return str(found.get("StringValue"))


class SQSBroker(Broker):
    """An SQS broker. Thread-safe (one boto3 client); see the module docstring for the design.

    URL options: ``region``, ``endpoint_url``, ``aws_access_key_id``/``aws_secret_access_key``
    /``aws_session_token`` or ``profile`` (else boto3's chain), ``prefix`` (queue name prefix,
    default ``conveyor-``), ``visibility_timeout`` (the default of queues it creates, 30),
    ``wait_time_seconds`` (longest long poll, 1-20, default 20), ``create_queues`` (default
    true), ``max_delay`` (the delay hop, at most 900 s), ``large_payload_bucket``
    (``bucket[/prefix]``), ``max_message_size`` (bytes, default 262144), ``message_group``
    (the group of FIFO messages sent without one, default ``default``), ``connect_timeout``,
    ``max_attempts``.
    """

    capabilities: ClassVar[BrokerCapabilities] = BrokerCapabilities(
        max_delay=900.0, max_lease=float(_MAX_VISIBILITY), time_resolution=1.0,
        exact_stats=False, fifo=False, blocking_reserve=True, message_groups=True,
        idle_wait=20.0)
    large_message_hint: ClassVar[str] = _TOO_LARGE

    def __init__(self, url: URL, **options: Any) -> None:
        super().__init__(url)
        if url.raw.split("://", 1)[1].split("?", 1)[0].rpartition("@")[2].strip("/"):
            raise ConfigurationError(
                f"{url.masked!r}: an SQS URL names no host; give the region and endpoint as "
                "query options, e.g. 'sqs://?region=eu-west-1'")
        opts = options_of(url, _DEFAULTS, options)
        self._prefix = str(opts["prefix"])
        self._wait_cap = max(1, min(20, int(opts["wait_time_seconds"])))
        self._visibility = _seconds(float(opts["visibility_timeout"]), low=0)
        self._create = bool(opts["create_queues"])
        self._max_size = int(opts["max_message_size"])
        self._group = str(opts["message_group"])
        location = str(opts["large_payload_bucket"])
        self._payloads = LargePayloads(location, opts) if location.partition("/")[0] else None
        #: Reads and deletes the payloads pointers name (in any bucket: a sender's option).
        self._pointers = self._payloads or LargePayloads("", opts)
        max_delay = float(opts["max_delay"])
        if not 1 <= max_delay <= 900:
            raise ConfigurationError(f"max_delay={max_delay:g} in {url.masked!r}: SQS delays "
                                     "messages by 1 to 900 seconds")
        # Per instance: the hop length, the long poll and the size limit are URL options.
        vars(self)["capabilities"] = replace(
            self.capabilities, max_delay=max_delay, idle_wait=float(self._wait_cap),
            max_message_size=(None if self._payloads is not None
                              else self._max_size - _ATTRIBUTE_ROOM))
        self._opts = opts
        self._errors = AwsErrors("sqs", "")
        self._sqs = make_client("sqs", opts, read_timeout=self._wait_cap + 15.0)
        self._wakes = self._woken = 0
        self._urls: dict[str, str] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._spare: dict[str, list[Reservation]] = {}
        self._no_spares_until: dict[str, float] = {}
        self._held: dict[str, _Lease] = {}
        self._sweeper: threading.Thread | None = None
        self._closed = threading.Event()

    # -- names and queues -----------------------------------------------------------------
    def _name(self, queue: str, *, dead: bool = False) -> str:
        fifo = queue.endswith(".fifo")
        base = self._prefix + (queue[:-5] if fifo else queue)
        longest = base + "-dlq" + (".fifo" if fifo else "")
        if base.endswith("-dlq"):  # the companion of the queue without it: one SQS queue
            raise ConfigurationError(
                f"queue {queue!r} cannot be an SQS queue: names ending in '-dlq' are the "
                "dead-letter companions of other queues; choose another name")
        if not _NAME.match(base) or len(longest) > 80:
            raise ConfigurationError(
                f"queue {queue!r} cannot be an SQS queue name: with the prefix "
                f"{self._prefix!r} and the dead-letter suffix '-dlq' it must be at most 80 "
                "letters, digits, '-' or '_' (plus '.fifo' for a FIFO queue)")
        return base + ("-dlq" if dead else "") + (".fifo" if fifo else "")

    def _url(self, queue: str, *, dead: bool = False, create: bool) -> str | None:
        """The queue's URL, creating it when ``create`` and allowed; None when it does not
        exist; raises AuthenticationError (with the fix) when it is required but missing."""
        name = self._name(queue, dead=dead)
        found = self._urls.get(name)
        if found is not None:
            return found
        with self._errors:
            try:
                found = str(self._sqs.get_queue_url(QueueName=name)["QueueUrl"])
            except ClientError as exc:
                if error_code(exc) not in _MISSING_QUEUE:
                    raise
                if not create:
                    return None
                if not self._create:
                    region = self._sqs.meta.region_name
                    raise AuthenticationError(
                        f"sqs queue {name!r} does not exist in region {region} and "
                        f"create_queues=false: create it (aws sqs create-queue --queue-name "
                        f"{name} --region {region}), set ?region= to where it is, or drop "
                        "create_queues=false from the broker URL") from exc
                attributes = {"VisibilityTimeout": str(self._visibility)}
                if name.endswith(".fifo"):
                    attributes["FifoQueue"] = "true"
                found = str(self._sqs.create_queue(QueueName=name,
                                                   Attributes=attributes)["QueueUrl"])
        self._urls[name] = found
        return found

    def _need(self, queue: str, *, dead: bool = False) -> str:
        found = self._url(queue, dead=dead, create=True)
        assert found is not None  # create=True returns a URL or raises
        return found

    def _map(self, fn: Any, items: Sequence[Any]) -> list[Any]:
        if len(items) <= 1:
            return [fn(item) for item in items]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(8, thread_name_prefix="conveyor-sqs")
        return list(self._pool.map(fn, items))

    # -- bodies ---------------------------------------------------------------------------
    def _pack(self, body: bytes) -> tuple[str, dict[str, Any]]:
        """The message text and attributes carrying ``body`` (in S3 when too large)."""
        attributes: dict[str, Any] = {}
        try:
            text = body.decode("utf-8")
            plain = bool(text) and not _REFUSED_CHARS.search(text)
        except UnicodeDecodeError:
            plain = False
        if not plain:
            text = base64.b64encode(body).decode("ascii") or "="
            attributes[_ENC] = _text("b64")
        if len(text.encode("utf-8")) > self._max_size - _ATTRIBUTE_ROOM:
            # Past the declared limit the core refused it already; this is a binary body
            # whose base64 text outgrew the limit.
            if self._payloads is None:
                raise ValueRefusedError(
                    f"message of {len(body)} bytes is larger than SQS takes (max_message_size="
                    f"{self._max_size} bytes, base64 and attributes included): {_TOO_LARGE}")
            text = self._payloads.put(body)
            attributes[_ENC] = _text("s3")
        return text, attributes

    def _unpack(self, text: str, attributes: dict[str, Any]) -> tuple[bytes, tuple[str, str] |
                                                                      None]:
        enc = _attr(attributes, _ENC)
        if enc == "b64":
            return base64.b64decode(text), None
        if enc != "s3":
            return text.encode("utf-8"), None
        body, where = self._pointers.get(text)
        if body is None:
            # The core dead-letters it as undecodable; the pointer stays in the reason.
            return f"large payload s3://{where[0]}/{where[1]} is missing".encode(), where
        return body, where

    def _entry(self, queue: str, message: bytes, delay: float,
               group: str | None) -> dict[str, Any]:
        text, attributes = self._pack(bytes(message))
        entry: dict[str, Any] = {"MessageBody": text}
        if queue.endswith(".fifo"):
            if delay > 0:
                raise ConfigurationError(
                    f"queue {queue!r} is an SQS FIFO queue, which has no per-message delay: "
                    "send countdown, eta and retry delays to a standard queue")
            entry["MessageGroupId"] = group or self._group
            entry["MessageDeduplicationId"] = uuid.uuid4().hex
        elif delay > 0:
            limit = self.capabilities.max_delay or 900.0
            entry["DelaySeconds"] = _seconds(min(delay, limit), high=900)
            attributes[_DELAYED] = _text("1")
        if attributes:
            entry["MessageAttributes"] = attributes
        return entry

    # -- producing ------------------------------------------------------------------------
    def enqueue(self, queue: str, message: bytes, *, delay: float = 0.0,
                message_group: str | None = None) -> str:
        """SendMessage; durable when it returns. ``message_group`` is the FIFO group (standard
        queues ignore it)."""
        entry = self._entry(queue, message, delay, message_group)
        url = self._need(queue)
        with self._errors:
            return str(self._sqs.send_message(QueueUrl=url, **entry)["MessageId"])

    def enqueue_many(self, queue: str, messages: Sequence[bytes], *, delay: float = 0.0,
                     message_group: str | None = None) -> list[str]:
        """SendMessageBatch, 10 messages (and at most ``max_message_size`` bytes) a request,
        in order; not atomic as a whole (a failure may leave earlier batches sent)."""
        if not messages:
            return []
        entries = [self._entry(queue, m, delay, message_group) for m in messages]
        url = self._need(queue)
        ids: list[str] = []
        batch: list[dict[str, Any]] = []
        size = 0
        for entry in entries:
            length = len(entry["MessageBody"].encode()) + _ATTRIBUTE_ROOM
            if batch and (len(batch) == 10 or size + length > self._max_size):
                ids += self._send_batch(url, batch)
                batch, size = [], 0
            batch.append(entry)
            size += length
        return ids + self._send_batch(url, batch)

    def _send_batch(self, url: str, batch: list[dict[str, Any]]) -> list[str]:
        ids: dict[str, str] = {}
        pending = {str(i): entry for i, entry in enumerate(batch)}
        for _ in range(3):
            with self._errors:
                done = self._sqs.send_message_batch(
                    QueueUrl=url, Entries=[{"Id": k, **e} for k, e in pending.items()])
            ids.update({ok["Id"]: ok["MessageId"] for ok in done.get("Successful", [])})
            failed = done.get("Failed", [])
            if any(f.get("SenderFault") for f in failed):
                raise ValueRefusedError(f"sqs refused a message: {failed[0].get('Code')}: "
                                        f"{failed[0].get('Message')}")
            pending = {f["Id"]: pending[f["Id"]] for f in failed}
            if not pending:
                return [ids[str(i)] for i in range(len(batch))]
            time.sleep(0.1)
        with self._errors:
            raise ClientError({"Error": {"Code": "InternalError",
                                         "Message": f"{len(pending)} sends failed"}},
                              "SendMessageBatch")

    # -- consuming ------------------------------------------------------------------------
    def reserve(self, queues: Sequence[str], *, lease: float, wait: float = 0.0,
                limit: int = 1) -> list[Reservation]:
        """ReceiveMessage, earlier queues first. One queue is long-polled for the whole wait
        (at most ``wait_time_seconds`` a request); with several, all but the last are
        short-polled and the last long-polled for a second, in turns, until ``wait`` ends.
        Waits are rounded up to whole seconds (``time_resolution=1.0``). Long polls run on a
        helper thread, so :meth:`wake` ends the wait at once."""
        if isinstance(queues, str):
            queues = [queues]
        if not queues or limit < 1:
            return []
        visibility = _seconds(lease, low=1)
        deadline = time.monotonic() + max(wait, 0.0)
        if wait > 0 and self._wakes != self._woken:  # a wake() while none was waiting
            self._woken = self._wakes
            return []
        start = self._wakes
        while True:
            for i, queue in enumerate(queues):
                got = self._take_spare(queue, limit, visibility)
                if got:
                    return got
                left = deadline - time.monotonic()
                count = self._batch(queue, limit)
                if i == len(queues) - 1 and left > 0.05:
                    poll = min(self._wait_cap, math.ceil(left)) if len(queues) == 1 else 1
                    found = self._long_poll(queue, visibility, count, poll, start)
                    if found is None:  # woken
                        return []
                    got = found
                else:
                    got = self._receive(queue, visibility, count, 0)
                if len(got) > limit:
                    self._keep_spare(queue, got[limit:])
                    got = got[:limit]
                if got:
                    return got
            if deadline - time.monotonic() <= 0.05 or self._woken_since(start):
                return []

    def wake(self) -> None:
        """End the waits of the ``reserve`` calls blocked now (or of the next one, when none
        is). Lock-free, so a signal handler may call it; an abandoned long poll goes on alone
        and what it receives is given back (see the module docstring)."""
        self._wakes += 1

    def _woken_since(self, start: int) -> bool:
        """Whether :meth:`wake` was called since the wake count was ``start``."""
        wakes = self._wakes
        if wakes == start:
            return False
        self._woken = wakes
        return True

    def _long_poll(self, queue: str, visibility: int, count: int, poll: int,
                   start: int) -> list[Reservation] | None:
        """One long-polling receive on a helper thread; None when :meth:`wake` ended the
        wait first (the receive's messages then become spares, given back soon)."""
        box = _Poll(threading.Event())

        def run() -> None:
            try:
                box.result = self._receive(queue, visibility, count, poll)
            except BaseException as exc:  # handed to the waiting reserve, or dropped
                box.error = exc
            with self._lock:
                abandoned = box.abandoned
                box.done.set()
            if abandoned and box.result:
                self._abandoned(queue, box.result)

        threading.Thread(target=run, daemon=True, name="conveyor-sqs-poll").start()
        while not box.done.wait(_WAKE_CHECK):
            if self._woken_since(start) or self._closed.is_set():
                with self._lock:
                    if not box.done.is_set():
                        box.abandoned = True
                        return None
                break
        if box.error is not None:
            raise box.error
        assert box.result is not None
        return box.result

    def _abandoned(self, queue: str, got: list[Reservation]) -> None:
        """Messages a woken (abandoned) long poll received: spares for the next ``reserve``,
        given back after :data:`_SPARE_HOLD`; at once when closed (and, should that fail,
        their leases lapse: delivered again, never lost)."""
        if not self._closed.is_set():
            self._keep_spare(queue, got)
            return
        with contextlib.suppress(DriverError):
            self._release([r for r in got if r.receipt.alive(_MARGIN)])

    def _take_spare(self, queue: str, limit: int, visibility: int) -> list[Reservation]:
        """Up to ``limit`` spare reservations of ``queue`` with at least two thirds of the
        lease left (the heartbeat extends at a third)."""
        with self._lock:
            spare = self._spare.pop(queue, [])
            now = time.monotonic()
            fresh = [r for r in spare if r.receipt.deadline - now >= visibility * 2 / 3]
            if len(fresh) > limit:
                self._spare[queue] = fresh[limit:]
        if len(fresh) < len(spare):
            self._release([r for r in spare if r not in fresh and r.receipt.alive(_MARGIN)])
        return fresh[:limit]

    def _batch(self, queue: str, limit: int) -> int:
        if limit == 1 or time.monotonic() < self._no_spares_until.get(queue, 0.0):
            return min(limit, 10)
        return 10

    def _keep_spare(self, queue: str, spare: list[Reservation]) -> None:
        with self._lock:
            self._spare.setdefault(queue, []).extend(spare)
            if self._sweeper is None:
                self._sweeper = threading.Thread(target=self._sweep, daemon=True,
                                                 name="conveyor-sqs-spares")
                self._sweeper.start()

    def _sweep(self) -> None:
        """Give spares nobody took within :data:`_SPARE_HOLD` back to SQS."""
        while not self._closed.wait(_SPARE_HOLD / 2):
            now = time.monotonic()
            with self._lock:
                old = [r for spare in self._spare.values() for r in spare
                       if now - r.receipt.received > _SPARE_HOLD]
                for queue, spare in list(self._spare.items()):
                    self._spare[queue] = [r for r in spare if r not in old]
                    if len(self._spare[queue]) < len(spare):
                        self._no_spares_until[queue] = now + _SPARE_PAUSE
            # On failure their leases lapse instead: delivered again, never lost.
            with contextlib.suppress(DriverError):
                self._release([r for r in old if r.receipt.alive(_MARGIN)])

    def _receive(self, queue: str, visibility: int, count: int, poll: int,
                 *, dead: bool = False) -> list[Reservation]:
        url = self._need(queue, dead=dead)
        started = time.monotonic()
        with self._errors:
            got = self._sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=count,
                                            VisibilityTimeout=visibility,
                                            WaitTimeSeconds=poll, **_RECEIVE)
        messages = got.get("Messages", [])
        if not dead:
            messages = self._drop_purged(url, self._drop_held(messages))
        clock = started
        if messages and time.monotonic() - started > visibility / 3:
            clock, messages = self._restart(url, messages, visibility)

        def build(m: dict[str, Any]) -> Reservation:
            attributes = m.get("MessageAttributes", {})
            body, pointer = self._unpack(m["Body"], attributes)
            receipt = _Lease(url, m["ReceiptHandle"], clock + visibility, started,
                             m["Body"], attributes, pointer,
                             m["Attributes"].get("MessageGroupId"))
            return Reservation(queue, _attr(attributes, _ID) or m["MessageId"], body,
                               int(m["Attributes"]["ApproximateReceiveCount"]), receipt=receipt)

        taken = self._map(build, messages)
        if not dead:
            with self._lock:
                if len(self._held) > 10_000:
                    self._held = {k: v for k, v in self._held.items() if v.alive()}
                self._held.update((m["MessageId"], r.receipt)
                                  for m, r in zip(messages, taken, strict=True))
        return taken

    def _restart(self, url: str, messages: list[dict[str, Any]],
                 visibility: int) -> tuple[float, list[dict[str, Any]]]:
        """Start the visibility timeout of ``messages`` again (ChangeMessageVisibilityBatch)
        and return the lease clock's new start with the messages it holds.

        A long poll's lease clock starts before the request, but SQS took each message at
        some moment during the wait: after a poll longer than the lease the clock has run out
        on arrival, so the ack would send nothing and the message would run again. Only a
        receive that took over a third of the lease pays this request (the heartbeat extends
        at a third); a message SQS no longer holds for this receipt is left out (it comes
        back)."""
        clock = time.monotonic()
        kept: list[dict[str, Any]] = []
        for start in range(0, len(messages), 10):
            part = messages[start:start + 10]
            with self._errors:
                done = self._sqs.change_message_visibility_batch(QueueUrl=url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"],
                     "VisibilityTimeout": visibility} for i, m in enumerate(part)])
            ok = {entry["Id"] for entry in done.get("Successful", [])}
            kept += [m for i, m in enumerate(part) if str(i) in ok]
        return clock, kept

    def _drop_held(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Leave out messages this instance holds under a live lease: a standard queue may
        hand out a message twice (SQS rarely; moto's server under concurrent receives). The
        lease clock never outlasts the server's, so a live one means a duplicate."""
        with self._lock:
            return [m for m in messages if not (
                (held := self._held.get(m["MessageId"])) is not None and held.alive())]

    def _drop_purged(self, url: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Delete delayed messages, coming due for the first time, that a purge sent after
        them was meant to remove (see the module docstring)."""
        suspects = [m for m in messages if _DELAYED in m.get("MessageAttributes", {})
                    and m["Attributes"]["ApproximateReceiveCount"] == "1"]
        if not suspects:
            return messages
        with self._errors:
            tags = self._sqs.list_queue_tags(QueueUrl=url).get("Tags", {})
        purged_at = float(tags.get(_PURGED_TAG, 0.0))
        dropped = [m for m in suspects if int(m["Attributes"]["SentTimestamp"]) / 1000 < purged_at]
        if dropped:
            self._delete(url, [m["ReceiptHandle"] for m in dropped])
        return [m for m in messages if m not in dropped]

    def _delete(self, url: str, handles: Sequence[str]) -> None:
        for start in range(0, len(handles), 10):
            with self._errors:
                self._sqs.delete_message_batch(QueueUrl=url, Entries=[
                    {"Id": str(i), "ReceiptHandle": h}
                    for i, h in enumerate(handles[start:start + 10])])

    def _drop_payloads(self, leases: Iterable[_Lease]) -> None:
        places = [lease.pointer for lease in leases if lease.pointer is not None]
        if places:
            self._pointers.delete(places)

    def ack(self, reservation: Reservation) -> None:
        """DeleteMessage (and the large payload) while the lease holds; idempotent. A lapsed
        lease sends nothing: the message comes back, and the core acks the duplicate."""
        self._ack_now([reservation])

    def ack_many(self, reservations: Sequence[Reservation]) -> None:
        """DeleteMessageBatch, 10 a request, for the reservations whose leases still hold.
        A part batch waits :data:`_ACK_LINGER` first (see there)."""
        if 0 < len(reservations) < 10:
            time.sleep(_ACK_LINGER)
        self._ack_now(reservations)

    def _ack_now(self, reservations: Sequence[Reservation]) -> None:
        by_url: dict[str, list[_Lease]] = {}
        for reservation in reservations:
            lease: _Lease = reservation.receipt
            if lease.alive():
                lease.end()
                by_url.setdefault(lease.url, []).append(lease)
        for url, leases in by_url.items():
            self._delete(url, [lease.handle for lease in leases])
            self._drop_payloads(leases)

    def nack(self, reservation: Reservation, *, delay: float = 0.0) -> None:
        """ChangeMessageVisibility to ``delay`` (0: deliverable at once); a no-op once the
        lease lapsed. Capped by SQS's 12 hours since this delivery."""
        lease: _Lease = reservation.receipt
        if not lease.alive(_MARGIN):
            lease.end()
            return
        lease.end()
        held_for = time.monotonic() - lease.received
        seconds = _seconds(min(delay, _MAX_VISIBILITY - held_for - 1))
        self._change(lease, seconds)

    def _change(self, lease: _Lease, seconds: int) -> bool:
        with self._errors:
            try:
                self._sqs.change_message_visibility(QueueUrl=lease.url,
                                                    ReceiptHandle=lease.handle,
                                                    VisibilityTimeout=seconds)
            except ClientError as exc:
                if error_code(exc) in _NOT_HELD:
                    return False
                raise
        return True

    def extend(self, reservation: Reservation, *, lease: float) -> bool:
        """ChangeMessageVisibility; False, sending nothing, when the lease clock ran out
        (the message may be with another consumer), and when SQS no longer holds it."""
        held: _Lease = reservation.receipt
        if not held.alive(_MARGIN):
            return False
        started = time.monotonic()
        seconds = _seconds(lease, low=1)
        if not self._change(held, seconds):
            held.end()
            return False
        held.deadline = started + seconds
        return True

    def dead_letter(self, reservation: Reservation, *, reason: str) -> None:
        """Send a copy (body or S3 pointer, id, reason, time) to the companion queue, then
        delete the original while its lease holds (after a lapse it may be delivered again:
        a duplicate, never a loss)."""
        lease: _Lease = reservation.receipt
        attributes = {k: v for k, v in lease.attributes.items() if k == _ENC}
        attributes[_ID] = _text(reservation.message_id)
        attributes[_REASON] = {"DataType": "Binary", "BinaryValue": str(reason).encode()}
        attributes[_DEAD_AT] = _text(repr(time.time()))
        entry: dict[str, Any] = {"MessageBody": lease.text, "MessageAttributes": attributes}
        if reservation.queue.endswith(".fifo"):
            entry["MessageGroupId"] = lease.group or self._group
            entry["MessageDeduplicationId"] = uuid.uuid4().hex
        url = self._need(reservation.queue, dead=True)
        with self._errors:
            self._sqs.send_message(QueueUrl=url, **entry)
        if lease.alive():
            lease.end()
            self._delete(lease.url, [lease.handle])

    # -- administration -------------------------------------------------------------------
    def _take_all(self, queue: str, *, dead: bool) -> list[Reservation]:
        """Receive every visible message of a queue, hidden for a minute while we decide."""
        taken: list[Reservation] = []
        while True:
            got = self._receive(queue, 60, 10, 0, dead=dead)
            if not got:
                return taken
            taken += got

    def _release(self, held: Sequence[Reservation]) -> None:
        """Make messages visible again at once; their leases end here (so a later receive
        of them by this instance is not taken for a duplicate)."""
        by_url: dict[str, list[_Lease]] = {}
        for reservation in held:
            reservation.receipt.end()
            by_url.setdefault(reservation.receipt.url, []).append(reservation.receipt)
        for url, leases in by_url.items():
            for start in range(0, len(leases), 10):
                with self._errors:
                    self._sqs.change_message_visibility_batch(QueueUrl=url, Entries=[
                        {"Id": str(i), "ReceiptHandle": lease.handle, "VisibilityTimeout": 0}
                        for i, lease in enumerate(leases[start:start + 10])])

    def _dead(self, queue: str) -> list[tuple[DeadLetter, Reservation]]:
        if self._url(queue, dead=True, create=False) is None:
            return []
        found = []
        for r in self._take_all(queue, dead=True):
            attributes = r.receipt.attributes
            found.append((DeadLetter(queue, r.message_id, r.body,
                                     _attr(attributes, _REASON) or "",
                                     float(_attr(attributes, _DEAD_AT) or 0.0)), r))
        found.sort(key=lambda pair: pair[0].dead_at)
        return found

    def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters. Reads the whole dead-letter queue (hiding it
        from other readers meanwhile) and gives every message back: meant for small DLQs."""
        if limit < 1:
            return []
        found = self._dead(queue)
        self._release([r for _, r in found])
        return [letter for letter, _ in found[:limit]]

    def delete_dead(self, queue: str, message_ids: Iterable[str] | None = None) -> int:
        """Delete the named dead letters (all when None) and their large payloads."""
        wanted = None if message_ids is None else set(message_ids)
        if wanted is not None and not wanted:
            return 0
        found = self._dead(queue)
        doomed = [r for letter, r in found if wanted is None or letter.message_id in wanted]
        self._release([r for letter, r in found if r not in doomed])
        if doomed:
            self._delete(doomed[0].receipt.url, [r.receipt.handle for r in doomed])
            self._drop_payloads(r.receipt for r in doomed)
        return len(doomed)

    def purge(self, queue: str) -> int:
        """Delete the ready messages and mark the delayed ones as purged (they are deleted
        when due); reserved messages and dead letters stay. Returns an approximate count."""
        url = self._url(queue, create=False)
        if url is None:
            return 0
        with self._errors:
            self._sqs.tag_queue(QueueUrl=url, Tags={_PURGED_TAG: repr(time.time())})
        delayed = self.stats(queue).delayed
        taken = self._take_all(queue, dead=False)
        self._delete(url, [r.receipt.handle for r in taken])
        self._drop_payloads(r.receipt for r in taken)
        return len(taken) + delayed

    def stats(self, queue: str) -> QueueStats:
        """SQS's approximate counts (GetQueueAttributes on the queue and its DLQ)."""
        counts = [0, 0, 0, 0]
        names = ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed",
                 "ApproximateNumberOfMessagesNotVisible")
        for dead in (False, True):
            url = self._url(queue, dead=dead, create=False)
            if url is None:
                continue
            with self._errors:
                found = self._sqs.get_queue_attributes(QueueUrl=url, AttributeNames=list(names))
            values = [int(found["Attributes"].get(n, 0)) for n in names]
            if dead:
                counts[3] = sum(values)
            else:
                counts[:3] = values
        return QueueStats(queue, *counts)

    def queues(self) -> list[str]:
        """The queues under this broker's prefix (dead-letter companions left out)."""
        names: list[str] = []
        with self._errors:
            for page in self._sqs.get_paginator("list_queues").paginate(
                    QueueNamePrefix=self._prefix):
                for queue_url in page.get("QueueUrls", []):
                    name = queue_url.rsplit("/", 1)[1][len(self._prefix):]
                    if not name.removesuffix(".fifo").endswith("-dlq"):
                        names.append(name)
        return sorted(names)

    def ping(self) -> None:
        """ListQueues under the prefix: reachability and credentials. With
        ``create_queues=false`` it also fails when no queue under the prefix exists in the
        region (a missing single queue is reported by the first send or reserve on it). The
        large-payload bucket must exist, in the same region (:func:`check_bucket`)."""
        with self._errors:
            found = self._sqs.list_queues(QueueNamePrefix=self._prefix or "conveyor",
                                          MaxResults=1)
        if not self._create and not found.get("QueueUrls"):
            region = self._sqs.meta.region_name
            raise AuthenticationError(
                f"sqs: no queue named {self._prefix}* exists in region {region} and "
                f"create_queues=false: create the queues (aws sqs create-queue --queue-name "
                f"{self._prefix}default --region {region}), set ?region= to where they are, "
                "or drop create_queues=false from the broker URL")
        if self._payloads is not None:
            self._payloads.check()

    def info(self) -> dict[str, str]:
        """Region, prefix and the large-payload bucket, for ``conveyor check``."""
        return {"region": str(self._sqs.meta.region_name), "prefix": self._prefix,
                "large_payload_bucket": self._payloads.bucket if self._payloads else "-"}

    def close(self) -> None:
        """Give spare messages back, close the HTTP connections and the payload thread
        pool. Idempotent."""
        self._closed.set()
        with self._lock:
            spare = [r for rs in self._spare.values() for r in rs if r.receipt.alive(_MARGIN)]
            self._spare.clear()
            pool, self._pool = self._pool, None
        with contextlib.suppress(DriverError):
            self._release(spare)
        if pool is not None:
            pool.shutdown(wait=False)
        self._pointers.close()
        if hasattr(self._sqs, "close"):
            self._sqs.close()
