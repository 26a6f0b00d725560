"""``sqs://?region=...&prefix=...``: an Amazon SQS broker (boto3).

One SQS queue per conveyor queue, named ``<prefix><queue>`` (``conveyor-`` by default) and
created on first use unless ``create_queues=false``; its dead letters live in a companion
queue ``<prefix><queue>-dlq``, each carrying its reason, original id and time as message
attributes. A queue whose name ends in ``.fifo`` is an SQS FIFO queue (one message group per
``message_group`` option, a deduplication id per send).

How the interface maps onto SQS:

* ``reserve`` is ReceiveMessage (up to 10, long polling up to ``wait_time_seconds``) with the
  lease as its VisibilityTimeout; ``attempts`` is ApproximateReceiveCount.
* ``extend`` and ``nack(delay)`` are ChangeMessageVisibility; ``ack``/``ack_many`` are
  DeleteMessage(Batch); ``enqueue_many`` is SendMessageBatch; delays are DelaySeconds (up to
  ``max_delay`` <= 900 s; the core hops longer ones).
* **Lease tokens.** SQS (and moto) accept a stale receipt handle: a worker whose lease ran out
  could change or delete the new holder's delivery. Each reservation therefore carries its own
  lease clock (the monotonic time before the receive, plus the visibility timeout, which the
  server's timer can only outlast); ``extend``/``nack``/``ack`` of a lease that clock says has
  run out send nothing and report it lost.
* **Bodies** go as text when they are valid UTF-8 that SQS accepts, else base64. A body too
  large for ``max_message_size`` (256 KiB by default) is put in S3 under
  ``large_payload_bucket`` and the message carries a pointer; the object is deleted by the ack
  of a live lease and by ``delete_dead`` (anything else is left to a bucket lifecycle rule).
  Without a bucket such a send fails at once, naming the limit and the option.
* **purge** deletes the ready messages it can receive and, since SQS cannot remove a delayed
  message without also removing reserved ones (PurgeQueue drops both), tags the queue with the
  purge time: a delayed message sent before it is deleted when it first comes due.
* ``stats`` are SQS's approximate attribute counts (``exact_stats=False``).
"""

from __future__ import annotations

import base64
import contextlib
import json
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
from conveyor.stores.aws import AwsErrors, client_defaults, error_code, make_client, options_of
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
_RECEIVE = {"MessageSystemAttributeNames": ["ApproximateReceiveCount", "SentTimestamp"],
            "MessageAttributeNames": ["All"]}


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

    def alive(self, margin: float = 0.0) -> bool:
        return time.monotonic() < self.deadline - margin

    def end(self) -> None:
        self.deadline = -math.inf


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
    (FIFO queues), ``connect_timeout``, ``max_attempts``.
    """

    capabilities: ClassVar[BrokerCapabilities] = BrokerCapabilities(
        max_delay=900.0, max_lease=float(_MAX_VISIBILITY), time_resolution=1.0,
        exact_stats=False, fifo=False, blocking_reserve=True)

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
        bucket, _, key_prefix = str(opts["large_payload_bucket"]).partition("/")
        self._payload_bucket = bucket
        self._payload_prefix = (key_prefix.rstrip("/") + "/" if key_prefix else "") + "payloads/"
        max_delay = float(opts["max_delay"])
        if not 1 <= max_delay <= 900:
            raise ConfigurationError(f"max_delay={max_delay:g} in {url.masked!r}: SQS delays "
                                     "messages by 1 to 900 seconds")
        if max_delay != self.capabilities.max_delay:
            # Per instance: the hop length is a URL option (tests shorten it).
            vars(self)["capabilities"] = replace(self.capabilities, max_delay=max_delay)
        self._opts = opts
        self._errors = AwsErrors("sqs", "")
        self._sqs = make_client("sqs", opts, read_timeout=self._wait_cap + 15.0)
        self._s3: Any = None
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
                    raise AuthenticationError(
                        f"sqs queue {name!r} does not exist and create_queues=false: create "
                        f"it (aws sqs create-queue --queue-name {name}) or drop "
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

    def _s3_client(self) -> Any:
        with self._lock:
            if self._s3 is None:
                self._s3 = make_client("s3", self._opts)
            return self._s3

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
            if not self._payload_bucket:
                raise ValueRefusedError(
                    f"message of {len(body)} bytes is larger than SQS takes (max_message_size="
                    f"{self._max_size} bytes, attributes included): set "
                    "large_payload_bucket=BUCKET on the broker URL to send large bodies "
                    "through S3")
            key = f"{self._payload_prefix}{uuid.uuid4().hex}"
            with AwsErrors("s3", f"bucket {self._payload_bucket!r}"):
                self._s3_client().put_object(Bucket=self._payload_bucket, Key=key, Body=body)
            text = json.dumps({"bucket": self._payload_bucket, "key": key})
            attributes[_ENC] = _text("s3")
        return text, attributes

    def _unpack(self, text: str, attributes: dict[str, Any]) -> tuple[bytes, tuple[str, str] |
                                                                      None]:
        enc = _attr(attributes, _ENC)
        if enc == "b64":
            return base64.b64decode(text), None
        if enc != "s3":
            return text.encode("utf-8"), None
        pointer = json.loads(text)
        where = (str(pointer["bucket"]), str(pointer["key"]))
        with AwsErrors("s3", f"bucket {where[0]!r}"):
            try:
                got = self._s3_client().get_object(Bucket=where[0], Key=where[1])
            except ClientError as exc:
                if error_code(exc) != "NoSuchKey":
                    raise
                # The core dead-letters it as undecodable; the pointer stays in the reason.
                return f"large payload s3://{where[0]}/{where[1]} is missing".encode(), where
            return bytes(got["Body"].read()), where

    def _entry(self, queue: str, message: bytes, delay: float) -> dict[str, Any]:
        text, attributes = self._pack(bytes(message))
        entry: dict[str, Any] = {"MessageBody": text}
        if queue.endswith(".fifo"):
            if delay > 0:
                raise ConfigurationError(
                    f"queue {queue!r} is an SQS FIFO queue, which has no per-message delay: "
                    "send countdown, eta and retry delays to a standard queue")
            entry["MessageGroupId"] = self._group
            entry["MessageDeduplicationId"] = uuid.uuid4().hex
        elif delay > 0:
            limit = self.capabilities.max_delay or 900.0
            entry["DelaySeconds"] = _seconds(min(delay, limit), high=900)
            attributes[_DELAYED] = _text("1")
        if attributes:
            entry["MessageAttributes"] = attributes
        return entry

    # -- producing ------------------------------------------------------------------------
    def enqueue(self, queue: str, message: bytes, *, delay: float = 0.0) -> str:
        """SendMessage; durable when it returns."""
        entry = self._entry(queue, message, delay)
        url = self._need(queue)
        with self._errors:
            return str(self._sqs.send_message(QueueUrl=url, **entry)["MessageId"])

    def enqueue_many(self, queue: str, messages: Sequence[bytes], *,
                     delay: float = 0.0) -> list[str]:
        """SendMessageBatch, 10 messages (and at most ``max_message_size`` bytes) a request;
        not atomic as a whole (a failure may leave earlier batches sent)."""
        if not messages:
            return []
        entries = [self._entry(queue, m, delay) for m in messages]
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
        Waits are rounded up to whole seconds (``time_resolution=1.0``)."""
        if isinstance(queues, str):
            queues = [queues]
        if not queues or limit < 1:
            return []
        visibility = _seconds(lease, low=1)
        deadline = time.monotonic() + max(wait, 0.0)
        while True:
            for i, queue in enumerate(queues):
                got = self._take_spare(queue, limit, visibility)
                if got:
                    return got
                left = deadline - time.monotonic()
                poll = 0
                if i == len(queues) - 1 and left > 0.05:
                    poll = min(self._wait_cap, math.ceil(left)) if len(queues) == 1 else 1
                got = self._receive(queue, visibility, self._batch(queue, limit), poll)
                if len(got) > limit:
                    self._keep_spare(queue, got[limit:])
                    got = got[:limit]
                if got:
                    return got
            if deadline - time.monotonic() <= 0.05:
                return []

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

        def build(m: dict[str, Any]) -> Reservation:
            attributes = m.get("MessageAttributes", {})
            body, pointer = self._unpack(m["Body"], attributes)
            receipt = _Lease(url, m["ReceiptHandle"], started + visibility, started,
                             m["Body"], attributes, pointer)
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
        by_bucket: dict[str, list[str]] = {}
        for lease in leases:
            if lease.pointer is not None:
                by_bucket.setdefault(lease.pointer[0], []).append(lease.pointer[1])
        for bucket, keys in by_bucket.items():
            for start in range(0, len(keys), 1000):
                with AwsErrors("s3", f"bucket {bucket!r}"):
                    self._s3_client().delete_objects(Bucket=bucket, Delete={
                        "Objects": [{"Key": k} for k in keys[start:start + 1000]],
                        "Quiet": True})

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
            entry["MessageGroupId"] = self._group
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
        ``create_queues=false`` it also fails when no queue under the prefix exists (a
        missing single queue is reported by the first send or reserve on it)."""
        with self._errors:
            found = self._sqs.list_queues(QueueNamePrefix=self._prefix or "conveyor",
                                          MaxResults=1)
        if not self._create and not found.get("QueueUrls"):
            raise AuthenticationError(
                f"sqs: no queue named {self._prefix}* exists and create_queues=false: create "
                f"the queues (aws sqs create-queue --queue-name {self._prefix}default) or drop "
                "create_queues=false from the broker URL")

    def info(self) -> dict[str, str]:
        """Region, prefix and the large-payload bucket, for ``conveyor check``."""
        return {"region": str(self._sqs.meta.region_name), "prefix": self._prefix,
                "large_payload_bucket": self._payload_bucket or "-"}

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
        for client in (self._sqs, self._s3):
            if client is not None and hasattr(client, "close"):
                client.close()
