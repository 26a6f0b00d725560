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
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from conveyor.backend import RecordQuery, StoredRecord
from conveyor.exceptions import ConfigurationError
from conveyor.registry import backend_from_url
from conveyor.testing import BrokerContract, ResultBackendContract
from conveyor.testing.query import collect
from tests.servers.moto import REGION


class TestSQSBroker(BrokerContract):
    @pytest.fixture
    def broker_url(self, sqs_url: str) -> str:
        return sqs_url


def _s3(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _keys(s3_url: str, endpoint: str) -> list[str]:
    """Every object key under the URL's prefix."""
    bucket, prefix = urlsplit(s3_url).netloc, urlsplit(s3_url).path.strip("/") + "/"
    return [item["Key"] for page in _s3(endpoint).get_paginator("list_objects_v2").paginate(
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


def _calls(backend: Any) -> list[str]:
    """The names of the S3 operations ``backend`` calls from now on."""
    calls: list[str] = []
    backend._s3.meta.events.register("before-call.s3", lambda model, **_: calls.append(
        model.name))
    return calls


class TestS3ResultBackendIndexed(ResultBackendContract):
    """The contract with ``query_index=1``, and the index's own guarantees."""

    @pytest.fixture
    def backend_url(self, s3_url: str) -> str:
        return s3_url + "&query_index=1"

    @pytest.fixture
    def indexed(self, backend_url: str) -> Iterator[Any]:
        made = backend_from_url(backend_url)
        yield made
        made.close()

    def test_one_entry_per_dimension_of_the_latest_write_and_none_after_forget(
            self, indexed: Any, s3_url: str, moto_endpoint: str) -> None:
        task_id = f"ix/{uuid.uuid4()}%"  # '/' and '%' inside an id stay one key segment
        for state, worker in (("PENDING", None), ("STARTED", "w1"), ("RETRY", "w2"),
                              ("SUCCESS", "w2")):
            assert indexed.store(StoredRecord(task_id, state, state.encode(), "shop.add",
                                              "high", worker), ttl=60)
        entries = [k for k in _keys(s3_url, moto_endpoint) if "/i/" in k]
        assert sorted(key.split("/")[2] for key in entries) == ["a", "n", "q", "s"], entries
        assert all("/SUCCESS/=shop.add/=high/=w2" in key for key in entries)
        page = indexed.query(RecordQuery(name="shop.add", state="SUCCESS", worker="w2"))
        assert [(r.task_id, r.state, r.data) for r in page.records] == [
            (task_id, "SUCCESS", b"SUCCESS")]
        # A refused write leaves no entry behind.
        assert not indexed.store(StoredRecord(task_id, "STARTED", b"late", "shop.add", "low"),
                                 ttl=60)
        assert sorted(k for k in _keys(s3_url, moto_endpoint) if "/i/" in k) == sorted(entries)
        indexed.forget(task_id)
        assert _keys(s3_url, moto_endpoint) == []
        assert indexed.query(RecordQuery(name="shop.add")).records == []

    def test_a_query_reads_only_the_records_it_returns(self, indexed: Any) -> None:
        rare = [f"r-{uuid.uuid4()}" for _ in range(3)]
        indexed.store_many([StoredRecord(f"c-{uuid.uuid4()}", "SUCCESS", b"", "common", "q1")
                            for _ in range(40)], ttl=60)
        for task_id in rare:
            indexed.store(StoredRecord(task_id, "FAILURE", b"", "common", "q2", "w9"), ttl=60)
        calls = _calls(indexed)
        page = indexed.query(RecordQuery(queue="q2", worker="w9", limit=10))
        assert {r.task_id for r in page.records} == set(rare) and page.cursor is None
        assert calls.count("ListObjectsV2") == 1
        assert calls.count("GetObject") == 3  # terminal records: one read each
        calls.clear()
        page = indexed.query(RecordQuery(name="common", limit=5))
        assert len(page.records) == 5 and page.cursor is not None
        assert calls.count("GetObject") == 5

    def test_an_entry_whose_record_is_gone_is_skipped_then_removed(
            self, indexed: Any, s3_url: str, moto_endpoint: str,
            monkeypatch: pytest.MonkeyPatch) -> None:
        # A bucket lifecycle rule deletes records (and entries) by age, in any order: an
        # entry may outlive its record. It is never shown; once a minute old (the grace
        # left to a write in flight, whose entries go first) a query removes it, and so does
        # purge_expired, which keeps the entries of live records however old.
        kept, gone = f"k-{uuid.uuid4()}", f"g-{uuid.uuid4()}"
        running = f"r-{uuid.uuid4()}"
        indexed.store(StoredRecord(running, "STARTED", b"r", "busy"), ttl=None)
        indexed.store(StoredRecord(kept, "SUCCESS", b"k", "life"), ttl=None)
        indexed.store(StoredRecord(gone, "SUCCESS", b"g", "life"), ttl=None)
        bucket, prefix = urlsplit(s3_url).netloc, urlsplit(s3_url).path.strip("/")
        _s3(moto_endpoint).delete_object(Bucket=bucket, Key=f"{prefix}/t/{gone}")

        def entries(task_id: str) -> list[str]:
            return [k.split("/")[2] for k in _keys(s3_url, moto_endpoint)
                    if "/i/" in k and task_id in k]

        assert [r.task_id for r in indexed.query(RecordQuery(name="life")).records] == [kept]
        assert entries(gone) == ["a", "n", "s"], "a young entry (a write in flight?) went"
        monkeypatch.setattr("conveyor.backends.s3._GRACE", 0.0)
        assert [r.task_id for r in indexed.query(RecordQuery(name="life")).records] == [kept]
        assert [r.task_id for r in indexed.query(RecordQuery()).records] == [kept, running]
        assert entries(gone) == ["s"]  # the walks of i/n/life/ and i/a/ met theirs
        assert indexed.purge_expired() == 0
        assert entries(gone) == []
        assert entries(kept) == ["a", "n", "s"]
        assert entries(running) == ["a", "n", "s"]  # a live progress record's too

    def test_purge_expired_removes_the_entries_of_expired_and_rewritten_records(
            self, indexed: Any, s3_url: str, moto_endpoint: str) -> None:
        short, lasting = f"s-{uuid.uuid4()}", f"l-{uuid.uuid4()}"
        moved = f"m-{uuid.uuid4()}"
        indexed.store(StoredRecord(short, "FAILURE", b"", "exp", "q"), ttl=0.3)
        indexed.store(StoredRecord(lasting, "STARTED", b"", "exp", "q"), ttl=60)
        indexed.store(StoredRecord(moved, "STARTED", b"", "exp", "q"), ttl=60)
        bucket, prefix = urlsplit(s3_url).netloc, urlsplit(s3_url).path.strip("/")
        before = [k for k in _keys(s3_url, moto_endpoint) if "/i/" in k and moved in k]
        indexed.store(StoredRecord(moved, "RETRY", b"", "exp", "q"), ttl=60)
        for key in before:  # as a racing writer would leave them
            _s3(moto_endpoint).put_object(Bucket=bucket, Key=key, Body=b"")
        # A query that meets a superseded entry removes it at once (no grace: the record
        # says a later write happened); the others wait for their walks or the purge.
        assert [r.task_id for r in indexed.query(RecordQuery(queue="q", state="RETRY"))
                .records] == [moved]
        assert [r.task_id for r in indexed.query(RecordQuery(name="exp", state="STARTED"))
                .records] == [lasting]
        assert sorted(k.split("/")[2] for k in _keys(s3_url, moto_endpoint)
                      if "/STARTED/" in k and moved in k) == ["a", "q", "s"]
        time.sleep(0.5)
        assert indexed.purge_expired() == 1
        left = [k for k in _keys(s3_url, moto_endpoint) if "/i/" in k]
        assert [k for k in left if short in k] == []
        assert sorted(k.split("/")[2] for k in left if lasting in k) == ["a", "n", "q", "s"]
        assert sorted(k.split("/")[2] for k in left if moved in k) == ["a", "n", "q", "s"]
        assert all("/RETRY/" in k for k in left if moved in k)
        del prefix

    def test_pages_across_listings_and_a_rare_filter_ends_a_page_short(
            self, indexed: Any) -> None:
        indexed._list_keys = 3
        ids = []
        for n in range(8):
            ids.append(f"p-{n}-{uuid.uuid4()}")
            indexed.store(StoredRecord(ids[-1], "SUCCESS", b"", "paged", "q",
                                       "rare" if n in (0, 7) else "w"), ttl=60)
            time.sleep(0.002)
        assert collect(indexed, RecordQuery(name="paged", limit=3)) == ids[::-1]
        # 8 entries, 3 a listing, at most 10 listings a page: whole pages here.
        assert collect(indexed, RecordQuery(worker="rare", name="paged")) == [ids[7], ids[0]]
        for n in range(8, 40):
            indexed.store(StoredRecord(f"p-{n}-{uuid.uuid4()}", "SUCCESS", b"", "paged", "q",
                                       "w"), ttl=60)
        first = indexed.query(RecordQuery(worker="rare", name="paged"))
        assert first.records == [] and first.cursor is not None
        assert collect(indexed, RecordQuery(worker="rare", name="paged")) == [ids[7], ids[0]]

    def test_every_writer_sets_the_option(self, indexed: Any, s3_url: str) -> None:
        plain = backend_from_url(s3_url)
        assert indexed.info()["query_index"] == "on" and plain.info()["query_index"] == "off"
        plain.store(StoredRecord(f"u-{uuid.uuid4()}", "SUCCESS", b"", "unindexed"), ttl=60)
        assert len(plain.query(RecordQuery(name="unindexed")).records) == 1
        assert indexed.query(RecordQuery(name="unindexed")).records == []  # documented
        with pytest.raises(ConfigurationError, match="query_index"):
            backend_from_url(s3_url + "&query_index=maybe")
        plain.close()
