"""The MongoDB broker and result backend pass the contract suite.

The server comes from ``tests/servers/mongo.py`` (SecantusDB from PyPI, or
``CONVEYOR_TEST_MONGO_URL`` for a real mongod). Each class has its own collection prefix.
"""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.broker import Broker
from conveyor.stores.mongodb import DEFAULT_DATABASE
from conveyor.testing import BrokerContract, ResultBackendContract


def _with_prefix(url: str, prefix: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}prefix={prefix}"


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


class TestMongoResultBackend(ResultBackendContract):
    @pytest.fixture
    def backend_url(self, mongo_url: str) -> str:
        return _with_prefix(mongo_url, "contract_backend_")
