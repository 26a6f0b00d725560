"""STARTED written behind the task: visible for long tasks, skipped for short ones, and never
landing after the outcome."""

from __future__ import annotations

import threading
import time
from typing import Any

from conveyor import Conveyor
from conveyor.backend import StoredRecord
from conveyor.worker import Consumer
from conveyor.worker.started import StartedWriter


def _states_written(app: Conveyor) -> list[tuple[str, str]]:
    """Wrap the app's backend so that every state written is logged in order."""
    written: list[tuple[str, str]] = []
    backend = app.backend
    store, store_many = backend.store, backend.store_many

    batching = threading.local()

    def logged_store(record: StoredRecord, *, ttl: float | None) -> bool:
        if not getattr(batching, "on", False):  # the memory driver's store_many calls store
            written.append((record.task_id, record.state))
        return store(record, ttl=ttl)

    def logged_store_many(records: list[StoredRecord], *, ttl: float | None) -> list[bool]:
        written.extend((r.task_id, r.state) for r in records)
        batching.on = True
        try:
            return store_many(records, ttl=ttl)
        finally:
            batching.on = False

    backend.store = logged_store  # type: ignore[method-assign]
    backend.store_many = logged_store_many  # type: ignore[method-assign]
    return written


def test_a_long_task_shows_started_while_it_runs(app: Conveyor, worker: Consumer) -> None:
    release = threading.Event()

    @app.task
    def slow() -> str:
        release.wait(10)
        return "done"

    result = slow.delay()
    deadline = time.monotonic() + 5
    while result.state != "STARTED" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert result.state == "STARTED"
    release.set()
    assert result.get(timeout=5) == "done"


def test_a_short_task_costs_no_started_write(app: Conveyor, worker: Consumer) -> None:
    @app.task
    def quick(x: int) -> int:
        return x

    written = _states_written(app)
    results = [quick.delay(i) for i in range(20)]
    assert [r.get(timeout=5) for r in results] == list(range(20))
    ids = {r.id for r in results}
    outcomes = [state for task_id, state in written if task_id in ids]
    assert outcomes.count("SUCCESS") == 20
    assert outcomes.count("STARTED") < 20  # most were dropped, each a saved round trip
    assert worker.started.dropped > 0


def test_started_never_lands_after_the_retry_that_follows_it(app: Conveyor,
                                                             worker: Consumer) -> None:
    @app.task(bind=True, max_retries=1)
    def flaky(self: Any) -> str:
        if self.request.retries == 0:
            raise self.retry(countdown=1.0)  # at once: its STARTED is still queued
        return "second time"

    result = flaky.delay()
    deadline = time.monotonic() + 5
    while result.state != "RETRY" and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.2)  # well past the writer's linger, well before the retry is due
    assert result.state == "RETRY"
    assert result.get(timeout=10) == "second time"


def test_settle_waits_for_a_write_in_flight() -> None:
    writing, finish = threading.Event(), threading.Event()
    landed: list[str] = []

    def slow_store_many(records: list[StoredRecord]) -> None:
        writing.set()
        finish.wait(5)
        landed.extend(r.task_id for r in records)

    writer = StartedWriter(slow_store_many, linger=0.0)
    writer.start()
    writer.add(StoredRecord("t1", "STARTED", b""))
    assert writing.wait(5)
    settled = threading.Event()
    threading.Thread(target=lambda: (writer.settle("t1"), settled.set()), daemon=True).start()
    assert not settled.wait(0.2)  # still being written: the caller must not store yet
    finish.set()
    assert settled.wait(5)
    assert landed == ["t1"]
    writer.stop(timeout=5)


def test_settle_drops_a_queued_started() -> None:
    landed: list[str] = []
    writer = StartedWriter(lambda records: landed.extend(r.task_id for r in records),
                           linger=0.3)
    writer.start()
    writer.add(StoredRecord("gone", "STARTED", b""))
    writer.add(StoredRecord("kept", "STARTED", b""))
    writer.settle("gone")
    writer.stop(timeout=5)
    assert landed == ["kept"]
    assert writer.dropped == 1
