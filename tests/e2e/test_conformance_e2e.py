"""The shipped end-to-end conformance class (``conveyor.testing.e2e``) passes on our drivers.

Unlike the rest of tests/e2e, it needs nothing from this repository: its tasks ship in the
package and its only inputs are the two URLs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.testing.e2e import EndToEndContract

pytestmark = pytest.mark.timeout(180)


class TestSQLiteEndToEnd(EndToEndContract):
    @pytest.fixture
    def broker_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'conformance.db'}"

    @pytest.fixture
    def backend_url(self, broker_url: str) -> str:
        return broker_url


class TestRedisEndToEnd(EndToEndContract):
    @pytest.fixture
    def broker_url(self, redis_url: str) -> str:
        return redis_url

    @pytest.fixture
    def backend_url(self, redis_url: str) -> str:
        return redis_url


class TestPostgresEndToEnd(EndToEndContract):
    @pytest.fixture
    def broker_url(self, postgres_url: str) -> str:
        return postgres_url

    @pytest.fixture
    def backend_url(self, postgres_url: str) -> str:
        return postgres_url



class TestMySQLEndToEnd(EndToEndContract):
    @pytest.fixture
    def broker_url(self, mysql_url: str) -> str:
        return mysql_url

    @pytest.fixture
    def backend_url(self, mysql_url: str) -> str:
        return mysql_url


class TestMongoEndToEnd(EndToEndContract):
    @pytest.fixture
    def broker_url(self, mongo_url: str) -> str:
        return mongo_url

    @pytest.fixture
    def backend_url(self, mongo_url: str) -> str:
        return mongo_url


class TestSQSAndS3EndToEnd(EndToEndContract):
    @pytest.fixture
    def broker_url(self, sqs_url: str) -> str:
        return sqs_url

    @pytest.fixture
    def backend_url(self, s3_url: str) -> str:
        return s3_url
