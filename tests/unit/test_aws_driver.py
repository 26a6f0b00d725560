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


def test_enqueue_many_and_ack_many_carry_more_than_one_batch_of_ten(
        broker: SQSBroker, queue: str) -> None:
    ids = broker.enqueue_many(queue, [b"b%d" % i for i in range(25)])
    held = reserve_count(broker, [queue], 25, lease=30, timeout=10, tick=1)
    assert sorted(r.message_id for r in held) == sorted(ids)
    broker.ack_many(held)
    assert broker.reserve([queue], lease=30) == []
