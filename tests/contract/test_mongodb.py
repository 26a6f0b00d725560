"""The MongoDB broker and result backend pass the contract suite.

The server comes from ``tests/servers/mongo.py`` (SecantusDB from PyPI, or
``CONVEYOR_TEST_MONGO_URL`` for a real mongod). Each class has its own collection prefix.
"""

from __future__ import annotations

import pytest

from conveyor.testing import BrokerContract, ResultBackendContract


def _with_prefix(url: str, prefix: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}prefix={prefix}"


class TestMongoBroker(BrokerContract):
    @pytest.fixture
    def broker_url(self, mongo_url: str) -> str:
        return _with_prefix(mongo_url, "contract_broker_")


class TestMongoResultBackend(ResultBackendContract):
    @pytest.fixture
    def backend_url(self, mongo_url: str) -> str:
        return _with_prefix(mongo_url, "contract_backend_")
