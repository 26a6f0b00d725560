"""SQS- and S3-specific guarantees, on a moto server over real HTTP (``tests/servers/moto.py``)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from conveyor.backend import StoredRecord
from conveyor.brokers.sqs import SQSBroker
from conveyor.exceptions import (
    AuthenticationError,
    ConfigurationError,
    ConnectionLostError,
    ValueRefusedError,
)
from conveyor.registry import backend_from_url, broker_from_url
from conveyor.testing import reserve_count, reserve_within
from conveyor.url import URL
from tests.servers import free_port
from tests.servers.moto import REGION, aws_query

pytest.importorskip("boto3")

BIG = 300 * 1024  # over SQS's 256 KiB


def _option(url: str, name: str) -> str:
    return parse_qs(urlsplit(url).query)[name][0]


def _client(service: str, endpoint: str) -> Any:
    import boto3

    return boto3.client(service, endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def broker(sqs_url: str) -> Iterator[SQSBroker]:
    made = broker_from_url(sqs_url)
    assert isinstance(made, SQSBroker)
    yield made
    made.close()


@pytest.fixture
def queue() -> str:
    return f"q{uuid.uuid4().hex[:8]}"


def _payload_keys(moto_endpoint: str, sqs_url: str) -> list[str]:
    bucket, _, prefix = _option(sqs_url, "large_payload_bucket").partition("/")
    listed = _client("s3", moto_endpoint).list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for item in listed.get("Contents", [])]


# -- large payloads -----------------------------------------------------------------------
def test_large_body_travels_through_s3_and_its_object_goes_with_the_ack(
        broker: SQSBroker, queue: str, moto_endpoint: str, sqs_url: str) -> None:
    body = b"x" * BIG
    message_id = broker.enqueue(queue, body)
    [key] = _payload_keys(moto_endpoint, sqs_url)
    [held] = reserve_within(broker, [queue], lease=30, timeout=5, tick=1)
    assert (held.message_id, held.body) == (message_id, body)
    broker.ack(held)
    assert _payload_keys(moto_endpoint, sqs_url) == [], f"{key} left behind after the ack"


def test_dead_lettered_large_body_keeps_its_payload_until_deleted(
        broker: SQSBroker, queue: str, moto_endpoint: str, sqs_url: str) -> None:
    body = bytes(range(256)) * (BIG // 256)
    broker.enqueue(queue, body)
    [held] = reserve_within(broker, [queue], lease=30, timeout=5, tick=1)
    broker.dead_letter(held, reason="too big to run")
    [dead] = broker.dead_letters(queue)
    assert (dead.body, dead.reason) == (body, "too big to run")
    assert len(_payload_keys(moto_endpoint, sqs_url)) == 1
    assert broker.delete_dead(queue) == 1
    assert _payload_keys(moto_endpoint, sqs_url) == []


def test_large_body_without_a_bucket_fails_at_once_naming_the_limit_and_the_option(
        moto_endpoint: str, queue: str) -> None:
    broker = broker_from_url(f"sqs://?{aws_query(moto_endpoint)}&prefix=t{uuid.uuid4().hex[:6]}-")
    started = time.monotonic()
    with pytest.raises(ValueRefusedError, match="large_payload_bucket") as caught:
        broker.enqueue(queue, b"x" * BIG)
    assert "262144" in str(caught.value)
    with pytest.raises(ValueRefusedError, match="large_payload_bucket"):
        broker.enqueue_many(queue, [b"small", b"y" * BIG])
    assert time.monotonic() - started < 5
    assert broker.stats(queue).ready == 0  # nothing half-sent
    broker.close()


def test_body_just_under_the_limit_goes_inline(broker: SQSBroker, queue: str,
                                               moto_endpoint: str, sqs_url: str) -> None:
    body = b"a" * 200_000
    broker.enqueue(queue, body)
    assert _payload_keys(moto_endpoint, sqs_url) == []
    [held] = reserve_within(broker, [queue], lease=30, timeout=5, tick=1)
    assert held.body == body


# -- leases ---------------------------------------------------------------------------------
def test_stale_nack_leaves_the_new_holders_lease_alone(broker: SQSBroker, queue: str) -> None:
    # SQS (and moto) accept an old receipt handle: without the lease clock this nack would
    # make the message visible under the new holder's feet.
    broker.enqueue(queue, b"taken over")
    [stale] = reserve_within(broker, [queue], lease=1, timeout=5, tick=1)
    time.sleep(1.3)
    [fresh] = reserve_within(broker, [queue], lease=60, timeout=5, tick=1)
    assert fresh.attempts == 2
    broker.nack(stale)
    assert broker.reserve([queue], lease=60, wait=1.5) == []
    assert broker.extend(fresh, lease=60) is True


def test_lease_is_rounded_up_to_whole_seconds_never_down(broker: SQSBroker, queue: str) -> None:
    broker.enqueue(queue, b"m")
    [held] = reserve_within(broker, [queue], lease=0.2, timeout=5, tick=1)
    assert broker.reserve([queue], lease=60) == []  # a 0.2 s lease held for a full second
    assert broker.extend(held, lease=30) is True


# -- FIFO -----------------------------------------------------------------------------------
def test_fifo_queue_keeps_order_and_refuses_per_message_delays(broker: SQSBroker) -> None:
    queue = f"f{uuid.uuid4().hex[:8]}.fifo"
    ids = [broker.enqueue(queue, b"m%d" % i) for i in range(5)]
    ids += broker.enqueue_many(queue, [b"n%d" % i for i in range(12)])
    got = []
    while len(got) < len(ids):
        batch = reserve_within(broker, [queue], lease=30, timeout=5, tick=1, limit=10)
        assert batch, "a FIFO message was lost"
        got += batch
        broker.ack_many(batch)  # the group's next messages come once these are done
    assert [r.message_id for r in got] == ids
    with pytest.raises(ConfigurationError, match="FIFO"):
        broker.enqueue(queue, b"later", delay=5)
    assert "fifo" in " ".join(broker.queues())


def test_fifo_keeps_order_per_message_group_and_a_held_group_holds_back_no_other(
        broker: SQSBroker) -> None:
    queue = f"g{uuid.uuid4().hex[:8]}.fifo"
    sent: dict[str, list[bytes]] = {"a": [], "b": []}
    for i in range(3):
        for key in ("a", "b"):
            body = f"{key}{i}".encode()
            broker.enqueue(queue, body, message_group=key)
            sent[key].append(body)
    sent["c"] = [b"c0", b"c1", b"c2"]
    broker.enqueue_many(queue, sent["c"], message_group="c")
    [first] = reserve_within(broker, [queue], lease=60, timeout=5, tick=1)
    held_key = first.body[:1].decode()
    got: dict[str, list[bytes]] = {held_key: [first.body]}
    while batch := reserve_within(broker, [queue], lease=60, timeout=2, tick=1):
        [res] = batch
        got.setdefault(res.body[:1].decode(), []).append(res.body)
        broker.ack(res)
    # While the first message of its group is held, the other two groups went all the way.
    assert got[held_key] == [first.body]
    assert {k: v for k, v in got.items() if k != held_key} == {
        k: v for k, v in sent.items() if k != held_key}
    broker.ack(first)
    rest = reserve_count(broker, [queue], 2, lease=60, timeout=10, tick=1)
    assert [first.body] + [r.body for r in rest] == sent[held_key]
    broker.ack_many(rest)


def test_fifo_send_repeated_by_botocore_arrives_once_and_a_second_send_arrives_again(
        broker: SQSBroker) -> None:
    # The deduplication id belongs to the send: botocore's retry of a request (its reply
    # lost) repeats it, so SQS drops the copy; sending the same body again is a new message.
    queue = f"d{uuid.uuid4().hex[:8]}.fifo"
    sends: list[int] = []

    def count(**_: Any) -> None:
        sends.append(1)

    def retry_once(**_: Any) -> float | None:
        return 0.0 if len(sends) == 1 else None  # as if the first reply had been lost

    broker._sqs.meta.events.register("before-send.sqs.SendMessage", count)
    broker._sqs.meta.events.register("needs-retry.sqs.SendMessage", retry_once)
    broker.enqueue(queue, b"same")
    assert len(sends) == 2  # botocore sent that request twice
    broker.enqueue(queue, b"same")
    got = []
    while batch := reserve_within(broker, [queue], lease=30, timeout=2, tick=1, limit=10):
        got += [r.body for r in batch]
        broker.ack_many(batch)
    assert got == [b"same", b"same"]


def test_message_group_of_apply_async_and_of_the_task_reach_sqs(sqs_url: str) -> None:
    from conveyor import Conveyor

    queue = f"o{uuid.uuid4().hex[:8]}.fifo"
    app = Conveyor("groups", broker=sqs_url, backend="memory://")
    app.conf.task_default_queue = queue

    @app.task(message_group="orders")
    def place(n: int) -> int:
        return n

    place.apply_async((1,), message_group="customer-1")
    place.delay(2)
    broker = app.broker
    assert broker.capabilities.message_groups
    held = reserve_count(broker, [queue], 2, lease=30, timeout=10, tick=1)
    assert sorted(r.receipt.group for r in held) == ["customer-1", "orders"]
    broker.ack_many(held)
    app.close()


# -- long polling -----------------------------------------------------------------------------
def _count_receives(broker: SQSBroker, queue: str = "") -> list[float]:
    """The times of the ReceiveMessage requests ``broker`` makes (on SQS queues whose name
    ends in ``queue``), counted by a botocore event hook."""
    calls: list[float] = []

    def count(params: dict[str, Any], **_: Any) -> None:
        if params["QueueUrl"].endswith(queue):
            calls.append(time.monotonic())

    broker._sqs.meta.events.register("before-parameter-build.sqs.ReceiveMessage", count)
    return calls


def test_idle_worker_makes_one_receive_per_long_poll_and_stops_at_once(
        sqs_url: str, s3_url: str, queue: str) -> None:
    from conveyor import Conveyor
    from conveyor.worker.consumer import Consumer

    # A coordinating backend, so the worker's control channel (a queue of its own) is on.
    app = Conveyor("idle", broker=sqs_url, backend=s3_url)
    app.conf.task_default_queue = queue
    broker = app.broker
    assert isinstance(broker, SQSBroker) and broker.capabilities.idle_wait == 20.0
    calls = _count_receives(broker, queue)
    every = _count_receives(broker)
    consumer = Consumer(app, concurrency=1)
    worker = threading.Thread(target=consumer.run, daemon=True)
    worker.start()
    deadline = time.monotonic() + 60
    while len(calls) < 2 and time.monotonic() < deadline:  # into its second long poll
        time.sleep(0.1)
    idle = calls[-1] - calls[0]
    # worker_poll_wait is 1 s: a poll per second would have made about 20 requests here.
    assert len(calls) == 2 and idle >= 19, (len(calls), idle)
    # Its control queue is long-polled as well: one more request per 20 s, not one a second.
    assert len(every) <= 4, len(every)
    consumer.stop()  # ~20 s of the second poll left: the stop must not wait for it
    worker.join(timeout=8)
    assert not worker.is_alive(), "the worker waited for its long poll before stopping"
    assert len(calls) == 2
    app.close()


def test_a_message_taken_by_an_abandoned_long_poll_is_delivered_again(
        sqs_url: str, queue: str) -> None:
    for close in (False, True):
        waiting = broker_from_url(sqs_url)
        other = broker_from_url(sqs_url)
        assert isinstance(waiting, SQSBroker)
        calls = _count_receives(waiting)
        got: list[Any] = []

        def reserve(into: list[Any] = got, b: SQSBroker = waiting) -> None:
            into.append(b.reserve([queue], lease=3, wait=20))

        reserving = threading.Thread(target=reserve)
        reserving.start()
        while not calls:
            time.sleep(0.05)
        waiting.wake()
        reserving.join(timeout=5)
        assert got == [[]] and not reserving.is_alive()
        if close:
            waiting.close()  # gone: what its poll takes lapses after the 3 s lease
        body = b"sent during the abandoned poll %d" % close
        other.enqueue(queue, body)
        [again] = reserve_within(other, [queue], lease=30, timeout=15, tick=1)
        assert again.body == body
        other.ack(again)
        other.close()
        waiting.close()


def test_a_message_arriving_late_in_a_long_poll_gets_a_whole_lease_and_its_ack_holds(
        broker: SQSBroker, queue: str) -> None:
    # The poll starts well before the message comes, for longer than the lease: a lease clock
    # started with the request would have run out on arrival, and the ack would send nothing.
    got: list[Any] = []
    polling = threading.Thread(target=lambda: got.extend(
        broker.reserve([queue], lease=2, wait=10)))
    polling.start()
    time.sleep(3)
    broker.enqueue(queue, b"late")
    polling.join(timeout=10)
    [res] = got
    assert res.body == b"late" and res.attempts == 1
    assert broker.extend(res, lease=2)  # the lease is held, not lost
    broker.ack(res)
    time.sleep(3)  # past the lease: an ack that sent nothing would let it come back
    assert broker.reserve([queue], lease=2, wait=1) == []
    assert broker.stats(queue).reserved == 0


def test_wake_before_a_reserve_ends_that_reserve_at_once(broker: SQSBroker, queue: str) -> None:
    calls = _count_receives(broker)
    broker.wake()
    assert broker.reserve([queue], lease=5, wait=20) == []
    assert calls == []  # returned before asking SQS
    broker.enqueue(queue, b"m")
    assert [r.body for r in reserve_within(broker, [queue], lease=5, timeout=5, tick=2)] == [b"m"]


def test_size_limit_is_a_capability_without_a_bucket_and_none_with_one(
        moto_endpoint: str, sqs_url: str) -> None:
    from conveyor import Conveyor
    from conveyor.exceptions import TaskOptionError

    assert broker_from_url(sqs_url).capabilities.max_message_size is None
    plain = f"sqs://?{aws_query(moto_endpoint)}&prefix=t{uuid.uuid4().hex[:6]}-"
    assert broker_from_url(plain).capabilities.max_message_size == 262_144 - 1024
    app = Conveyor("sizes", broker=plain, backend="memory://")

    @app.task
    def echo(value: str) -> str:
        return value

    with pytest.raises(TaskOptionError, match="large_payload_bucket"):
        echo.delay("x" * BIG)
    assert app.broker.stats("default").ready == 0
    app.close()


# -- URLs, options and errors ---------------------------------------------------------------
def test_secret_key_is_masked_in_repr_and_errors(moto_endpoint: str) -> None:
    url = (f"sqs://?region={REGION}&endpoint_url={moto_endpoint}&aws_access_key_id=AKID"
           "&aws_secret_access_key=hunter2secret&prefix=x-&bogus=1")
    assert "hunter2secret" not in repr(URL(url))
    with pytest.raises(ConfigurationError, match="unknown option 'bogus'") as caught:
        broker_from_url(url)
    assert "hunter2secret" not in str(caught.value)
    broker = broker_from_url(url.replace("&bogus=1", ""))
    assert "hunter2secret" not in repr(broker)
    userinfo = broker_from_url(f"sqs://AKID:hunter2secret@?region={REGION}"
                               f"&endpoint_url={moto_endpoint}")
    assert "hunter2secret" not in repr(userinfo) and "***" in repr(userinfo)


def test_max_delay_option_shortens_the_hop(moto_endpoint: str) -> None:
    broker = broker_from_url(f"sqs://?{aws_query(moto_endpoint)}&max_delay=2")
    assert broker.capabilities.max_delay == 2.0
    assert SQSBroker.capabilities.max_delay == 900.0
    with pytest.raises(ConfigurationError, match="1 to 900"):
        broker_from_url(f"sqs://?{aws_query(moto_endpoint)}&max_delay=3600")


def test_invalid_queue_name_is_one_clear_error(broker: SQSBroker) -> None:
    with pytest.raises(ConfigurationError, match="letters, digits"):
        broker.enqueue("orders.high:1", b"x")


def test_missing_queue_with_create_queues_off_names_the_fix(moto_endpoint: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    broker = broker_from_url(f"sqs://?{aws_query(moto_endpoint)}&prefix={prefix}"
                             "&create_queues=false")
    with pytest.raises(AuthenticationError, match="create_queues=false") as caught:
        broker.reserve(["default"], lease=5)
    assert f"{prefix}default" in str(caught.value)
    with pytest.raises(AuthenticationError, match="create_queues=false"):
        broker.ping()
    _client("sqs", moto_endpoint).create_queue(QueueName=f"{prefix}default")
    broker.ping()
    assert broker.reserve(["default"], lease=5) == []


def test_missing_bucket_is_an_authentication_error_with_the_fix(moto_endpoint: str) -> None:
    backend = backend_from_url(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/p?"
                               f"{aws_query(moto_endpoint)}")
    with pytest.raises(AuthenticationError, match="bucket does not exist"):
        backend.ping()


def test_unreachable_endpoint_is_a_retryable_connection_error() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    broker = broker_from_url(f"sqs://?{aws_query(endpoint)}&max_attempts=1&connect_timeout=1")
    with pytest.raises(ConnectionLostError) as caught:
        broker.enqueue("q", b"x")
    assert caught.value.retryable
    backend = backend_from_url(f"s3://b/p?{aws_query(endpoint)}&max_attempts=1")
    with pytest.raises(ConnectionLostError):
        backend.get("x")


# -- S3 backend -----------------------------------------------------------------------------
def test_terminal_record_is_one_object_written_once(s3_url: str, moto_endpoint: str) -> None:
    backend = backend_from_url(s3_url)
    task_id = f"t-{uuid.uuid4()}"
    assert backend.store(StoredRecord(task_id, "STARTED", b"s"), ttl=60)
    assert backend.store(StoredRecord(task_id, "SUCCESS", b"done"), ttl=60)
    assert not backend.store(StoredRecord(task_id, "STARTED", b"late"), ttl=60)
    bucket, prefix = urlsplit(s3_url).netloc, urlsplit(s3_url).path.strip("/")
    head = _client("s3", moto_endpoint).head_object(Bucket=bucket, Key=f"{prefix}/t/{task_id}")
    assert head["Metadata"]["state"] == "SUCCESS"
    assert float(head["Metadata"]["expires-at"]) > time.time()


def test_get_many_reads_in_parallel(s3_url: str) -> None:
    backend = backend_from_url(s3_url)
    ids = [f"m-{uuid.uuid4()}" for _ in range(40)]
    backend.store_many([StoredRecord(i, "SUCCESS", i.encode()) for i in ids], ttl=60)
    # Count the GetObject calls in flight at once (botocore's own events), not seconds:
    # the machine's load says nothing about whether reads overlap.
    lock = threading.Lock()
    flight = {"now": 0, "most": 0, "threads": set()}

    def before(**_: Any) -> None:
        with lock:
            flight["now"] += 1
            flight["most"] = max(flight["most"], flight["now"])
            flight["threads"].add(threading.get_ident())
        time.sleep(0.01)  # hold each read open long enough for the others to overlap it

    def after(**_: Any) -> None:
        with lock:
            flight["now"] -= 1

    events = backend._s3.meta.events  # type: ignore[attr-defined]
    events.register("before-call.s3.GetObject", before)
    events.register("after-call.s3.GetObject", after)
    found = backend.get_many([*ids, "missing"])
    assert {k: v.data for k, v in found.items()} == {i: i.encode() for i in ids}
    assert flight["most"] > 1, "get_many read one record after the other"
    assert len(flight["threads"]) > 1



def test_wait_returns_within_its_timeout(s3_url: str) -> None:
    backend = backend_from_url(s3_url)
    for timeout in (0.05, 0.3, 1.2):
        started = time.monotonic()
        assert backend.wait(f"w-{uuid.uuid4()}", timeout=timeout) is None
        assert time.monotonic() - started < timeout + 0.5


def test_wait_sees_a_result_that_expired_between_two_of_its_polls(s3_url: str) -> None:
    # result_expires shorter than the wait's pause (1 s): the record is written just after a
    # poll and has expired by the next one. The task finished while get() waited.
    waiter, writer = backend_from_url(s3_url), backend_from_url(s3_url)
    task_id = f"w-{uuid.uuid4()}"
    began = time.monotonic()
    stored: list[float] = []

    def after_read(**_: Any) -> None:
        # 1.6 s in, the pause between polls has grown to the whole second.
        if not stored and time.monotonic() - began > 1.6:
            writer.store(StoredRecord(task_id, "SUCCESS", b"done"), ttl=0.3)
            stored.append(time.monotonic())

    waiter._s3.meta.events.register("after-call.s3.GetObject", after_read)  # type: ignore[attr-defined]
    assert waiter.wait(task_id, timeout=10) == StoredRecord(task_id, "SUCCESS", b"done")
    assert stored and waiter.get(task_id) is None  # seen expired: reads still hide it
    # One already expired when the wait began (an earlier run of a reused id) is no outcome.
    assert waiter.wait(task_id, timeout=1.2) is None
    waiter.close()
    writer.close()


def test_enqueue_many_and_ack_many_carry_more_than_one_batch_of_ten(
        broker: SQSBroker, queue: str) -> None:
    broker.enqueue(queue, b"make the queue")  # its create and lookup counted out below
    [first] = reserve_within(broker, [queue], lease=30, timeout=5, tick=1)
    broker.ack(first)
    calls: list[str] = []
    broker._sqs.meta.events.register(
        "before-call.sqs", lambda model, **_: calls.append(model.name))
    ids = broker.enqueue_many(queue, [b"b%d" % i for i in range(25)])
    assert calls == ["SendMessageBatch"] * 3
    calls.clear()
    held = reserve_count(broker, [queue], 25, lease=30, timeout=10, tick=1)
    assert sorted(r.message_id for r in held) == sorted(ids)
    # Up to 10 a receive (moto, like SQS, may return fewer).
    assert set(calls) == {"ReceiveMessage"} and len(calls) < 25
    calls.clear()
    broker.ack_many(held)
    assert calls == ["DeleteMessageBatch"] * 3
    assert broker.reserve([queue], lease=30) == []
