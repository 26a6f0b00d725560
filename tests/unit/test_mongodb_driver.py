"""MongoDB-specific guarantees of the MongoDB broker and result backend, on a real server
(SecantusDB from ``tests/servers/mongo.py``, or ``CONVEYOR_TEST_MONGO_URL``)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from conveyor.backend import StoredRecord
from conveyor.backends.mongodb import MongoResultBackend
from conveyor.brokers.mongodb import MongoBroker
from conveyor.exceptions import (
    ConfigurationError,
    ConnectionLostError,
    InvalidURLError,
    ValueRefusedError,
)
from conveyor.registry import backend_from_url, broker_from_url
from conveyor.url import URL
from tests.servers import free_port

pymongo = pytest.importorskip("pymongo")


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}_"


@pytest.fixture
def raw(mongo_url: str, prefix: str) -> Iterator[Any]:
    """The test database through a plain client; drops the test's collections afterwards."""
    client = pymongo.MongoClient(mongo_url, tz_aware=True)
    db = client.get_default_database("conveyor")
    yield db
    for name in db.list_collection_names():
        if name.startswith(prefix):
            db.drop_collection(name)
    client.close()


@pytest.fixture
def broker(mongo_url: str, prefix: str, raw: Any) -> Iterator[MongoBroker]:
    made = MongoBroker(URL(mongo_url), prefix=prefix)
    yield made
    made.close()


@pytest.fixture
def backend(mongo_url: str, prefix: str, raw: Any) -> Iterator[MongoResultBackend]:
    made = MongoResultBackend(URL(mongo_url), prefix=prefix)
    yield made
    made.close()


def test_prefix_in_the_url_names_the_collections_and_is_kept_from_pymongo(
        mongo_url: str, prefix: str, raw: Any) -> None:
    url = f"{mongo_url}&prefix={prefix}url_"
    broker = broker_from_url(url)
    backend = backend_from_url(url)
    try:
        broker.enqueue("q", b"x")
        backend.store(StoredRecord("id", "SUCCESS", b"y"), ttl=None)
        names = set(raw.list_collection_names())
        assert {f"{prefix}url_messages", f"{prefix}url_results"} <= names
        assert isinstance(broker, MongoBroker)
        assert "prefix" not in {k.lower() for k in broker._db.client.options.__dict__}
        assert broker.info()["prefix"] == f"{prefix}url_"
    finally:
        broker.close()
        backend.close()


def test_database_comes_from_the_url_path(mongo_url: str) -> None:
    url = mongo_url.replace("/conveyor_test?", "/another_db?")
    backend = backend_from_url(url)
    try:
        assert backend.info()["database"] == "another_db"
    finally:
        backend.close()


@pytest.mark.parametrize("bad", ["", "has$dollar", "system.x", "9starts_with_digit", "a b"])
def test_an_invalid_prefix_is_one_clear_error(mongo_url: str, bad: str) -> None:
    with pytest.raises(ConfigurationError, match="collection prefix"):
        MongoBroker(URL(mongo_url), prefix=bad)


def test_unreachable_server_is_a_retryable_error_with_the_password_masked() -> None:
    port = free_port()
    url = f"mongodb://user:hunter2@127.0.0.1:{port}/db?serverSelectionTimeoutMS=300"
    broker = broker_from_url(url)
    started = time.monotonic()
    with pytest.raises(ConnectionLostError) as caught:
        broker.ping()
    assert time.monotonic() - started < 5
    assert caught.value.retryable
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert isinstance(caught.value.__cause__, pymongo.errors.PyMongoError)
    broker.close()


def test_a_record_over_bsons_limit_is_refused_not_retried(
        backend: MongoResultBackend) -> None:
    with pytest.raises(ValueRefusedError) as caught:
        backend.store(StoredRecord("big", "SUCCESS", b"x" * (17 << 20)), ttl=None)
    assert not caught.value.retryable


def test_higher_priority_is_reserved_first_and_kept_through_nack(broker: MongoBroker) -> None:
    low = broker.enqueue("q", b"low", priority=0)
    high = broker.enqueue("q", b"high", priority=9)
    mid = broker.enqueue("q", b"mid", priority=5)
    [first] = broker.reserve(["q"], lease=30)
    assert first.message_id == high
    broker.nack(first)
    got = broker.reserve(["q"], lease=30, limit=3)
    assert [r.message_id for r in got] == [high, mid, low]


def test_info_names_the_server_and_the_wake_mode(broker: MongoBroker) -> None:
    info = broker.info()
    assert info["wake"] == "change stream"
    assert info["server"].split()[0] in {"mongodb", "secantusdb"}


def test_idle_consumer_wakes_on_a_nack_from_another_broker(
        broker: MongoBroker, mongo_url: str, prefix: str) -> None:
    other = MongoBroker(URL(mongo_url), prefix=prefix)
    try:
        other.enqueue("q", b"m")
        [held] = other.reserve(["q"], lease=60)
        timer = threading.Timer(0.3, other.nack, (held,))
        timer.start()
        started = time.monotonic()
        got = broker.reserve(["q"], lease=60, wait=10)
        timer.join()
        assert [r.message_id for r in got] == [held.message_id]
        assert time.monotonic() - started < 0.3 + 0.5
    finally:
        other.close()


def test_expired_record_is_hidden_before_the_ttl_monitor_deletes_it(
        backend: MongoResultBackend, raw: Any, prefix: str) -> None:
    results = raw[f"{prefix}results"]
    backend.store(StoredRecord("warmup", "STARTED", b""), ttl=None)  # creates the collection
    for attempt in range(5):
        task_id = f"expired-{attempt}"
        past = datetime.now(timezone.utc) - timedelta(seconds=5)
        results.insert_one({"_id": task_id, "state": "SUCCESS", "data": b"old",
                            "expires_at": past})
        assert backend.get(task_id) is None
        assert backend.get_many([task_id]) == {}
        if results.find_one({"_id": task_id}) is not None:
            return  # hidden by the read itself, not by the monitor
    pytest.fail("the TTL monitor always deleted the document first; could not observe")


def test_join_counts_a_member_that_looks_like_a_field_path_literally(
        backend: MongoResultBackend) -> None:
    assert backend.join("k", "$members", ttl=60) == 1
    assert backend.join("k", "$$NOW", ttl=60) == 2
    assert backend.join("k", "$members", ttl=60) == 2


@pytest.fixture(scope="module")
def standalone_url() -> Iterator[str]:
    """A server answering as a standalone mongod does: no replica set, no change streams."""
    from tests.servers.mongo import mongo_server

    with mongo_server(standalone=True) as server:
        yield server.url


def test_without_change_streams_consumers_poll_and_still_wake_promptly(
        standalone_url: str) -> None:
    consumer = MongoBroker(URL(standalone_url))
    producer = MongoBroker(URL(standalone_url))
    try:
        assert consumer.info()["wake"].startswith("polling")
        queue = f"q-{uuid.uuid4().hex[:8]}"
        sent: list[float] = []

        def send() -> None:
            producer.enqueue(queue, b"m")
            sent.append(time.monotonic())

        timer = threading.Timer(0.5, send)
        timer.start()
        got = consumer.reserve([queue], lease=30, wait=10)
        woke = time.monotonic()
        timer.join()
        assert [r.body for r in got] == [b"m"]
        assert woke - sent[0] < 0.5
    finally:
        consumer.close()
        producer.close()


@pytest.mark.parametrize(("query", "named"), [("journal=ture", "journal"),
                                              ("jurnal=true", "jurnal"),
                                              ("tls=maybe", "tls")])
def test_an_option_pymongo_would_ignore_or_refuse_is_one_clear_error(
        query: str, named: str) -> None:
    url = f"mongodb://app:s3cret@db-host/shop?{query}"
    with pytest.raises(InvalidURLError) as caught:
        broker_from_url(url)
    assert named in str(caught.value)
    assert "s3cret" not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_server_clock_is_in_epoch_seconds(backend: MongoResultBackend) -> None:
    now = backend._db.now()
    if "127.0.0.1" in backend.url.raw:
        # The server shares this host's clock: the measured offset is noise, ignored.
        assert abs(now - time.time()) < 0.05
        assert backend._db._offset == 0.0
    else:  # a server given by CONVEYOR_TEST_MONGO_URL may have a clock of its own
        assert abs(now - time.time()) < 300


def test_both_schemes_resolve_to_the_mongodb_drivers() -> None:
    from conveyor.registry import BACKEND_GROUP, BROKER_GROUP, find_driver

    for scheme in ("mongodb", "mongodb+srv"):
        url = URL(f"{scheme}://db-host/shop")
        assert find_driver(BROKER_GROUP, url) is MongoBroker
        assert find_driver(BACKEND_GROUP, url) is MongoResultBackend
