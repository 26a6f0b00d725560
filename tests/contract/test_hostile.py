"""Every driver against the hostile-input corpus (tests/hostile.py): each odd id, queue name
and value is either kept exactly or refused with :class:`ValueRefusedError`, never mangled,
never a crash of another kind, never an error taken for an outage."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.backend import ResultBackend, StoredRecord
from conveyor.broker import Broker
from conveyor.exceptions import ValueRefusedError
from conveyor.registry import backend_from_url, broker_from_url
from tests.hostile import IDS, OVERSIZED, VALUES

pytestmark = pytest.mark.timeout(300)

#: Driver id -> the fixture giving its URL (None: an SQLite file in tmp_path, or memory).
DRIVERS = ["memory", "sqlite", "postgres", "mysql", "redis"]
_FIXTURES = {"postgres": "postgres_url", "mysql": "mysql_url", "redis": "redis_url"}


def _url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    name = str(request.param)
    if name == "memory":
        return f"memory://{uuid.uuid4().hex}"
    if name == "sqlite":
        return f"sqlite:///{tmp_path / 'hostile.db'}"
    return str(request.getfixturevalue(_FIXTURES[name]))


@pytest.fixture(params=DRIVERS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultBackend]:
    driver = backend_from_url(_url(request, tmp_path))
    yield driver
    driver.close()


@pytest.fixture(params=DRIVERS)
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    driver = broker_from_url(_url(request, tmp_path))
    yield driver
    driver.close()


def _kept_or_refused(backend: ResultBackend, record: StoredRecord) -> None:
    try:
        backend.store(record, ttl=60)
    except ValueRefusedError:
        return
    assert backend.get(record.task_id) == record


@pytest.mark.parametrize("odd", IDS, ids=range(len(IDS)))
def test_backend_keeps_or_refuses_each_odd_task_id(backend: ResultBackend, odd: str) -> None:
    task_id = f"{uuid.uuid4().hex[:8]}{odd}"[:len(odd) + 8]
    _kept_or_refused(backend, StoredRecord(task_id, "SUCCESS", b'{"ok":1}'))


def test_backend_keeps_each_odd_value_byte_for_byte(backend: ResultBackend) -> None:
    for value in VALUES:
        record = StoredRecord(uuid.uuid4().hex, "SUCCESS", value)
        assert backend.store(record, ttl=60)
        assert backend.get(record.task_id) == record


def test_backend_keeps_or_refuses_an_oversized_value(backend: ResultBackend) -> None:
    _kept_or_refused(backend, StoredRecord(uuid.uuid4().hex, "SUCCESS", OVERSIZED))


def test_broker_delivers_each_odd_body_byte_for_byte(broker: Broker) -> None:
    queue = f"hostile-{uuid.uuid4().hex[:8]}"
    for body in [*VALUES, OVERSIZED]:
        try:
            broker.enqueue(queue, body)
        except ValueRefusedError:
            continue
        [res] = broker.reserve([queue], lease=30, wait=1.0)
        assert res.body == body
        broker.ack(res)


@pytest.mark.parametrize("odd", [i for i in IDS if len(i) < 200], ids=range(20))
def test_broker_keeps_or_refuses_each_odd_queue_name(broker: Broker, odd: str) -> None:
    queue = f"{uuid.uuid4().hex[:8]}{odd}"
    try:
        broker.enqueue(queue, b"body")
    except ValueRefusedError:
        return
    [res] = broker.reserve([queue], lease=30, wait=1.0)
    assert (res.queue, res.body) == (queue, b"body")
    broker.ack(res)


def test_queues_differing_only_by_trailing_spaces_are_different_queues(broker: Broker) -> None:
    # MySQL/MariaDB's PAD SPACE collations compare 'q' and 'q ' as equal.
    queue = f"pad-{uuid.uuid4().hex[:8]}"
    try:
        broker.enqueue(f"{queue} ", b"spaced")
    except ValueRefusedError:
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
