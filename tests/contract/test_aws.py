"""The SQS broker and the S3 result backend pass the contract suite, over real HTTP.

The endpoint is a moto server (``tests/servers/moto.py``) or ``CONVEYOR_TEST_AWS_ENDPOINT``;
each test has its own queue-name prefix and key prefix. The broker URL names a bucket for
large payloads, so the 256 KiB contract body travels through S3. The S3 backend runs twice:
as it is by default, and with its opt-in query index (``query_index=1``).
"""

from __future__ import annotations

import pytest

from conveyor.testing import BrokerContract, ResultBackendContract


class TestSQSBroker(BrokerContract):
    @pytest.fixture
    def broker_url(self, sqs_url: str) -> str:
        return sqs_url


class TestS3ResultBackend(ResultBackendContract):
    @pytest.fixture
    def backend_url(self, s3_url: str) -> str:
        return s3_url


class TestS3ResultBackendIndexed(ResultBackendContract):
    @pytest.fixture
    def backend_url(self, s3_url: str) -> str:
        return s3_url + "&query_index=1"
