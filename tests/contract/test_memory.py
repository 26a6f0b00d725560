"""The memory drivers pass the contract suite."""

from __future__ import annotations

import uuid

import pytest

from conveyor.testing import BrokerContract, ResultBackendContract


class TestMemoryBroker(BrokerContract):
    @pytest.fixture
    def broker_url(self) -> str:
        return f"memory://contract-{uuid.uuid4().hex}"


class TestMemoryResultBackend(ResultBackendContract):
    @pytest.fixture
    def backend_url(self) -> str:
        return f"memory://contract-{uuid.uuid4().hex}"
