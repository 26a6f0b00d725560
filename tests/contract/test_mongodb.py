"""The MongoDB broker and result backend pass the contract suite.

The server comes from ``tests/servers/mongo.py`` (SecantusDB from PyPI, or
``CONVEYOR_TEST_MONGO_URL`` for a real mongod). Each class has its own collection prefix.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from conveyor.broker import Broker
from conveyor.brokers.mongodb import MongoBroker
from conveyor.stores.mongodb import DEFAULT_DATABASE
from conveyor.testing import BrokerContract, ResultBackendContract
from conveyor.url import URL


def _with_prefix(url: str, prefix: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}prefix={prefix}"


def _woken_after(consumer: Broker, producer: Broker, queue: str, *, after: float) -> float:
    """Start a ``reserve`` waiting 15 s on ``queue``, enqueue through ``producer`` ``after``
    seconds into it, and return how long after that enqueue the reserve returned it."""
    sent: list[float] = []

    def send() -> None:
        producer.enqueue(queue, b"wake")
        sent.append(time.monotonic())

    timer = threading.Timer(after, send)
    timer.start()
    try:
        got = consumer.reserve([queue], lease=60.0, wait=15.0)
        woke = time.monotonic()
    finally:
        timer.join()
    assert [r.body for r in got] == [b"wake"]
    return woke - sent[0]


def _change_stream_opens() -> Any:
    """A pymongo command listener (pymongo's own monitoring API: what the client really
    sent) whose ``count`` is the ``aggregate`` commands that opened a change stream."""
    from pymongo.monitoring import CommandListener

    class Opens(CommandListener):
        count = 0

        def started(self, event: Any) -> None:
            pipeline = event.command.get("pipeline") or [{}]
            if event.command_name == "aggregate" and "$changeStream" in pipeline[0]:
                self.count += 1

        def succeeded(self, event: Any) -> None:
            pass

        def failed(self, event: Any) -> None:
            pass

    return Opens()


def _commands(name: str) -> Any:
    """A pymongo command listener keeping the ``name`` commands the client sent."""
    from pymongo.monitoring import CommandListener

    class Kept(CommandListener):
        def __init__(self) -> None:
            self.sent: list[dict[str, Any]] = []

        def started(self, event: Any) -> None:
            if event.command_name == name:
                self.sent.append(dict(event.command))

        def succeeded(self, event: Any) -> None:
            pass

        def failed(self, event: Any) -> None:
            pass

    return Kept()


def _stages(plan: dict[str, Any]) -> list[str]:
    """Every stage of an explained plan, outermost first."""
    inner = [plan["inputStage"]] if "inputStage" in plan else plan.get("inputStages", [])
    return [plan.get("stage", "?")] + [s for p in inner for s in _stages(p)]


class TestMongoBroker(BrokerContract):
    @pytest.fixture
    def broker_url(self, mongo_url: str) -> str:
        return _with_prefix(mongo_url, "contract_broker_")

    def test_indexes_are_key_patterns_a_real_mongod_accepts(
            self, broker: Broker, queue: str, mongo_url: str) -> None:
        # SecantusDB takes any index key pattern; a real mongod refuses a direction that is
        # not 1 or -1 (or an index type name) when the broker first creates the index.
        import pymongo

        broker.enqueue(queue, b"indexed")
        [held] = broker.reserve([queue], lease=60.0, wait=2.0)
        broker.dead_letter(held, reason="contract")
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_url)
        try:
            db = client.get_default_database(DEFAULT_DATABASE)
            for name in ("contract_broker_messages", "contract_broker_dead"):
                for index in db[name].list_indexes():
                    bad = {k: v for k, v in index["key"].items() if v not in (1, -1)}
                    assert not bad, f"index {index['name']} of {name} has directions {bad}"
        finally:
            client.close()
            broker.delete_dead(queue)

    def test_the_claims_sort_is_one_a_real_mongod_serves_from_an_index(
            self, broker_url: str, queue: str) -> None:
        # SecantusDB sorts in memory whatever the indexes are; a mongod walks an index whose
        # keys, after the equality on queue, are the claim's sort keys all in the index's
        # directions or all reversed (else every claim sorts the queue's ready messages).
        sent = _commands("findAndModify"), _commands("find")
        consumer = MongoBroker(URL(broker_url), event_listeners=list(sent))
        try:
            consumer.enqueue_many(queue, [b"a", b"b", b"c"])
            assert len(consumer.reserve([queue], lease=60.0)) == 1  # findAndModify
            assert len(consumer.reserve([queue], lease=60.0, limit=2)) == 2  # find, update
            indexes = [list(ix["key"].items()) for ix in consumer._messages.list_indexes()]
            sorts = [list(c["sort"].items()) for kept in sent for c in kept.sent
                     if c.get("sort") and "messages" in str(c.get("find", c.get("findAndModify")))]
            assert len(sorts) >= 2
            for sort in sorts:
                flipped = [(k, -d) for k, d in sort]
                assert any(keys[0][0] == "queue" and keys[1:] in (sort, flipped)
                           for keys in indexes), f"no index serves the claim's sort {sort}"
        finally:
            consumer.close()

    def test_a_waiting_reserve_returns_a_delayed_message_when_it_is_due(
            self, broker: Broker, queue: str) -> None:
        # The driver's own promise (reserve's docstring): a wait also ends when the next
        # delay or lease is due. No change-stream event marks that moment; the driver
        # reads when the earliest is due and sleeps until then, not a second longer.
        broker.enqueue(queue, b"soon", delay=0.1)
        sent = time.monotonic()
        got = broker.reserve([queue], lease=60.0, wait=5.0)
        late = time.monotonic() - sent
        assert [r.body for r in got] == [b"soon"]
        assert late < 0.6, f"a message due 0.1 s after its enqueue came after {late:.3f}s"

    def test_a_waiting_reserve_wakes_on_the_change_stream_not_by_polling(
            self, broker_url: str, broker_factory: Callable[[], Broker], queue: str) -> None:
        # poll_interval=5: a consumer that polled instead (10 ms doubling to 5 s) would find
        # a message sent 3 s into its wait about 2 s late; the change stream wakes it at once.
        consumer = MongoBroker(URL(broker_url), poll_interval=5.0)
        try:
            assert consumer.info()["wake"] == "change stream"
            lag = _woken_after(consumer, broker_factory(), queue, after=3.0)
            assert lag < 1.0, f"woke {lag:.3f}s after the enqueue"
        finally:
            consumer.close()

    def test_waiting_consumers_still_wake_promptly_after_the_collection_is_dropped(
            self, mongo_url: str) -> None:
        # Dropping the messages collection (a reset by hand, dropDatabase) invalidates the
        # change stream; pymongo's try_next then returns None at once, forever. The waker
        # must reopen the stream, not spin on the dead one while consumers wait 5 s.
        import pymongo

        prefix = f"contract_drop_{uuid.uuid4().hex[:8]}_"
        url = _with_prefix(mongo_url, prefix)
        consumer = MongoBroker(URL(url), poll_interval=5.0)
        producer = MongoBroker(URL(url))
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_url)
        queue = f"contract-{uuid.uuid4()}"
        try:
            assert consumer.info()["wake"] == "change stream"
            producer.enqueue(queue, b"first")
            assert consumer.reserve([queue], lease=60.0, wait=5.0)
            db = client.get_default_database(DEFAULT_DATABASE)
            db.drop_collection(prefix + "messages")
            time.sleep(1.0)
            lag = _woken_after(consumer, producer, queue, after=3.0)
            assert lag < 1.0, f"woke {lag:.3f}s after the enqueue, after the drop"
        finally:
            consumer.close()
            producer.close()
            client.get_default_database(DEFAULT_DATABASE).drop_collection(prefix + "messages")
            client.close()

    def test_a_lost_change_stream_is_reopened_with_bounded_backoff_not_a_hot_loop(
            self) -> None:
        # The server comes back as a standalone (a replica-set member restarted alone for
        # maintenance): every reopen of the stream is refused at once. The waker must back
        # off (0.1 s doubling to 2 s: a handful of tries in 4 s, not hundreds) and keep
        # trying, so that once change streams are back a waiting consumer wakes on them.
        from tests.servers.mongo import mongo_server

        with mongo_server() as server:
            opens = _change_stream_opens()
            url = f"{server.url}&serverSelectionTimeoutMS=500&prefix=contract_outage_"
            consumer = MongoBroker(URL(url), poll_interval=5.0, event_listeners=[opens])
            producer = MongoBroker(URL(url))
            queue = f"contract-{uuid.uuid4()}"
            try:
                assert consumer.info()["wake"] == "change stream"
                server.stop()
                server.standalone = True
                server.start()
                time.sleep(3.0)  # the backoff grows while the server is down, then refuses
                before = opens.count
                time.sleep(4.0)
                tries = opens.count - before
                assert 1 <= tries <= 8, f"{tries} change-stream opens in 4 s of refusals"
                server.stop()
                server.standalone = False
                server.start()
                time.sleep(3.0)  # longer than the backoff's 2 s cap, plus a reopen
                lag = _woken_after(consumer, producer, queue, after=3.0)
                assert lag < 1.0, f"woke {lag:.3f}s after the enqueue, after the outage"
            finally:
                consumer.close()
                producer.close()


class TestMongoResultBackend(ResultBackendContract):
    @pytest.fixture
    def backend_url(self, mongo_url: str) -> str:
        return _with_prefix(mongo_url, "contract_backend_")

    def test_the_newest_first_query_is_read_from_an_index_without_a_sort(
            self, backend_url: str, task_id: str) -> None:
        # The dashboard's list walks the whole results collection newest first: an index
        # must serve that order (or its exact reverse), else every page sorts the
        # collection in memory (on a real mongod a blocking sort over 100 MB spills to disk
        # or fails). The sort the driver sends is explained. Without its filter: SecantusDB
        # scans for any filter holding an $or (the driver's expiry test), and sorts after
        # an equality prefix (state, name, queue) where a mongod walks the compound index.
        from conveyor.backend import RecordQuery, StoredRecord
        from conveyor.backends.mongodb import MongoResultBackend

        finds = _commands("find")
        backend = MongoResultBackend(URL(backend_url), event_listeners=[finds])
        try:
            backend.store(StoredRecord(task_id, "SUCCESS", b""), ttl=60.0)
            assert backend.query(RecordQuery(limit=5)).records
            sent = finds.sent[-1]
            explained = backend._db.db.command("explain", {
                "find": sent["find"], "filter": {}, "sort": sent["sort"],
                "limit": sent["limit"]})
            stages = _stages(explained["queryPlanner"]["winningPlan"])
            assert "SORT" not in stages, f"the newest-first query sorts in memory: {stages}"
        finally:
            backend.close()
