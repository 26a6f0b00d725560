"""Every driver against the hostile-input corpus (tests/hostile.py): each odd id, queue name
and value is either kept exactly or refused with :class:`ValueRefusedError`, never mangled,
never a crash of another kind, never an error taken for an outage."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.backend import ResultBackend, StoredRecord
from conveyor.broker import Broker
from conveyor.exceptions import ConfigurationError, DriverError, ValueRefusedError
from conveyor.registry import backend_from_url, broker_from_url
from tests.hostile import IDS, OVERSIZED, VALUES

pytestmark = pytest.mark.timeout(300)

#: Driver id -> the fixture giving its URL (None: an SQLite file in tmp_path, or memory).
DRIVERS = ["memory", "sqlite", "postgres", "mysql", "redis", "mongodb", "aws"]
#: Driver id -> (broker URL fixture, backend URL fixture).
_FIXTURES = {"postgres": ("postgres_url",) * 2, "mysql": ("mysql_url",) * 2,
             "redis": ("redis_url",) * 2, "mongodb": ("mongo_url",) * 2,
             "aws": ("sqs_url", "s3_url")}


def _url(request: pytest.FixtureRequest, tmp_path: Path, kind: int) -> str:
    name = str(request.param)
    if name == "memory":
        return f"memory://{uuid.uuid4().hex}"
    if name == "sqlite":
        return f"sqlite:///{tmp_path / 'hostile.db'}"
    return str(request.getfixturevalue(_FIXTURES[name][kind]))


@pytest.fixture(params=DRIVERS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultBackend]:
    driver = backend_from_url(_url(request, tmp_path, 1))
    yield driver
    driver.close()


@pytest.fixture(params=DRIVERS)
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    driver = broker_from_url(_url(request, tmp_path, 0))
    yield driver
    driver.close()


#: Gaps found by this corpus in drivers still being written, reported to their authors:
#: (driver module, what) -> the finding. Such a case is an xfail while the driver raises
#: something else than a clear refusal, and a pass once it is fixed.
KNOWN_GAPS = {
}


def _check_all(driver: object, what: str, cases: list[Any], check: Any) -> None:
    """Run ``check(case)`` for every case; a known gap of this driver is an xfail at the
    end (after every other case was checked), anything else fails at once."""
    gaps: list[str] = []
    for case in cases:
        try:
            check(case)
        except ValueRefusedError:
            continue
        except DriverError as exc:
            if (type(driver).__module__, what) not in KNOWN_GAPS:
                raise
            gaps.append(f"{case!r:.40}: {exc}")
    if gaps:
        pytest.xfail(f"{type(driver).__module__}: "
                     f"{KNOWN_GAPS[type(driver).__module__, what]} ({len(gaps)} cases)")


def test_backend_keeps_or_refuses_each_odd_task_id(backend: ResultBackend) -> None:
    def check(odd: str) -> None:
        record = StoredRecord(f"{uuid.uuid4().hex[:8]}{odd}", "SUCCESS", b'{"ok":1}')
        backend.store(record, ttl=60)
        assert backend.get(record.task_id) == record

    _check_all(backend, "odd task id", IDS, check)


def test_backend_keeps_each_odd_value_byte_for_byte(backend: ResultBackend) -> None:
    for value in VALUES:
        record = StoredRecord(uuid.uuid4().hex, "SUCCESS", value)
        assert backend.store(record, ttl=60)
        assert backend.get(record.task_id) == record


def test_backend_keeps_or_refuses_an_oversized_value(backend: ResultBackend) -> None:
    def check(value: bytes) -> None:
        record = StoredRecord(uuid.uuid4().hex, "SUCCESS", value)
        backend.store(record, ttl=60)
        assert backend.get(record.task_id) == record

    _check_all(backend, "oversized value", [OVERSIZED], check)


def test_broker_delivers_each_odd_body_byte_for_byte(broker: Broker) -> None:
    queue = f"hostile-{uuid.uuid4().hex[:8]}"

    def check(body: bytes) -> None:
        broker.enqueue(queue, body)
        [res] = broker.reserve([queue], lease=30, wait=1.0)
        assert res.body == body
        broker.ack(res)

    _check_all(broker, "odd body", VALUES, check)
    _check_all(broker, "oversized body", [OVERSIZED], check)


def test_broker_keeps_or_refuses_each_odd_queue_name(broker: Broker) -> None:
    def check(odd: str) -> None:
        queue = f"{uuid.uuid4().hex[:8]}{odd}"
        try:
            broker.enqueue(queue, b"body")
        except ConfigurationError:
            return  # refused with a clear error (SQS allows letters, digits, '-' and '_')
        [res] = broker.reserve([queue], lease=30, wait=1.0)
        assert (res.queue, res.body) == (queue, b"body")
        broker.ack(res)

    _check_all(broker, "odd queue name", [i for i in IDS if len(i) < 200], check)


def test_queues_differing_only_by_trailing_spaces_are_different_queues(broker: Broker) -> None:
    # MySQL/MariaDB's PAD SPACE collations compare 'q' and 'q ' as equal.
    queue = f"pad-{uuid.uuid4().hex[:8]}"
    try:
        broker.enqueue(f"{queue} ", b"spaced")
    except (ValueRefusedError, ConfigurationError):
        return  # refused with a clear error is fine too
    broker.enqueue(queue, b"plain")
    got = broker.reserve([queue], lease=30, wait=1.0, limit=10)
    assert [r.body for r in got] == [b"plain"]
    for res in got:
        broker.ack(res)


def test_task_ids_differing_only_by_trailing_spaces_are_different_records(
        backend: ResultBackend) -> None:
    task_id = uuid.uuid4().hex
    try:
        backend.store(StoredRecord(f"{task_id} ", "SUCCESS", b"spaced"), ttl=60)
    except ValueRefusedError:
        return
    assert backend.get(task_id) is None
