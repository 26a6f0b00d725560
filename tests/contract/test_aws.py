"""The SQS broker and the S3 result backend pass the contract suite, over real HTTP.

The endpoint is a moto server (``tests/servers/moto.py``) or ``CONVEYOR_TEST_AWS_ENDPOINT``;
each test has its own queue-name prefix and key prefix. The broker URL names a bucket for
large payloads, so the 256 KiB contract body travels through S3. The S3 backend runs twice:
as it is by default, and with its opt-in query index (``query_index=1``); the S3 class adds
two guarantees of its own (the mutation target ``s3-backend`` runs both classes).
"""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest

from conveyor.backend import RecordQuery, StoredRecord
from conveyor.registry import backend_from_url
from conveyor.testing import BrokerContract, ResultBackendContract
from tests.servers.moto import REGION


class TestSQSBroker(BrokerContract):
    @pytest.fixture
    def broker_url(self, sqs_url: str) -> str:
        return sqs_url


def _keys(s3_url: str, endpoint: str) -> list[str]:
    import boto3

    bucket, prefix = urlsplit(s3_url).netloc, urlsplit(s3_url).path.strip("/") + "/"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    return [item["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix) for item in page.get("Contents", [])]


class TestS3ResultBackend(ResultBackendContract):
    @pytest.fixture
    def backend_url(self, s3_url: str) -> str:
        return s3_url

    def test_purge_keeps_a_record_rewritten_between_its_read_and_its_delete(
            self, s3_url: str) -> None:
        # purge_expired deletes an expired object only if its ETag is still the one it read:
        # a task that wrote again meanwhile keeps its new record, and S3's refusal of the
        # delete (412) is no error.
        purger, writer = backend_from_url(s3_url), backend_from_url(s3_url)
        task_id = f"race-{uuid.uuid4()}"
        purger.store(StoredRecord(task_id, "SUCCESS", b"old"), ttl=0.2)
        time.sleep(0.4)
        rewrites: list[bool] = []

        def rewrite(**_: Any) -> None:
            if not rewrites:
                rewrites.append(writer.store(StoredRecord(task_id, "SUCCESS", b"new"),
                                             ttl=60))

        purger._s3.meta.events.register(  # type: ignore[attr-defined]
            "before-call.s3.DeleteObject", rewrite)
        assert purger.purge_expired() == 0
        assert rewrites == [True]
        assert purger.get(task_id) == StoredRecord(task_id, "SUCCESS", b"new")
        purger.close()
        writer.close()

    def test_object_keys_are_printable_ascii_whatever_ids_and_labels_hold(
            self, s3_url: str, moto_endpoint: str) -> None:
        # S3 lists control characters (DEL too) and non-ASCII among the characters to avoid
        # in keys (tools, lifecycle filters and inventories mishandle them): they are
        # percent-encoded, reversibly, in record, entry, join and index keys alike.
        backend = backend_from_url(s3_url + "&query_index=1")
        odd = "\x7f\x1f\u00e9/%~"
        task_id = f"keys-{uuid.uuid4()}-\u00e9 /%"
        backend.put_entry("e" + odd, b"v", ttl=60)
        assert backend.join("j" + odd, "m", ttl=60) == 1
        record = StoredRecord(task_id, "SUCCESS", b"d", "n" + odd, "q" + odd, "w" + odd)
        assert backend.store(record, ttl=60)
        keys = _keys(s3_url, moto_endpoint)
        assert len(keys) == 7, keys  # the record, an entry, a join, four index objects
        assert [k for k in keys if any(not 0x20 <= ord(c) < 0x7F for c in k)] == []
        assert backend.entries("e") == {"e" + odd: b"v"}
        assert backend.query(RecordQuery(name="n" + odd, worker="w" + odd)).records == [
            record]
        backend.close()


class TestS3ResultBackendIndexed(ResultBackendContract):
    @pytest.fixture
    def backend_url(self, s3_url: str) -> str:
        return s3_url + "&query_index=1"
