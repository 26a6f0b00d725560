"""The memory drivers pass the contract suite."""

from __future__ import annotations

import uuid

import pytest

from conveyor.testing import BrokerContract, ResultBackendContract


class TestMemoryBroker(BrokerContract):
    # An in-process driver has no server to lose: the outage area does not apply, so its
    # tests are not collected here (rather than skipped: under CI a skip is a failure).
    test_ping_raises_connection_lost_when_the_server_is_unreachable = None
    test_calls_raise_connection_lost_when_the_server_is_unreachable = None
    test_blocking_reserve_raises_instead_of_waiting_out_its_wait = None

    @pytest.fixture
    def broker_url(self) -> str:
        return f"memory://contract-{uuid.uuid4().hex}"


class TestMemoryResultBackend(ResultBackendContract):
    test_ping_raises_connection_lost_when_the_server_is_unreachable = None
    test_calls_raise_connection_lost_when_the_server_is_unreachable = None

    @pytest.fixture
    def backend_url(self) -> str:
        return f"memory://contract-{uuid.uuid4().hex}"
