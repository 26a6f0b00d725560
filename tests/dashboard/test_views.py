"""Dashboard views over records written directly (memory drivers, in-process)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from conveyor import Conveyor
from conveyor.contrib.dashboard import Dashboard
from conveyor.record import TaskRecord

#: Without credentials the dashboard answers loopback host names only.
LOCAL = "http://127.0.0.1"


@pytest.fixture
def memory_app() -> Iterator[Conveyor]:
    name = uuid.uuid4().hex
    app = Conveyor("views", broker=f"memory://{name}", backend=f"memory://{name}")
    yield app
    app.close()


def test_the_task_view_shows_its_workflow(memory_app: Conveyor) -> None:
    backend = memory_app.backend
    store = [TaskRecord("wf-first", "SUCCESS", task="shop.fetch", children=["wf-second"]),
             TaskRecord("wf-second", "SUCCESS", task="shop.parse", parent="wf-first",
                        group="wf-group", children=["wf-third"]),
             TaskRecord("wf-sibling", "FAILURE", task="shop.parse", parent="wf-first",
                        group="wf-group"),
             TaskRecord("wf-third", "PENDING", task="shop.store", parent="wf-second")]
    for record in store:
        backend.store(record.to_stored(), ttl=60)
    client = TestClient(Dashboard(memory_app, sample=False).asgi(), base_url=LOCAL)
    nodes = client.get("/api/tasks/wf-second").json()["workflow"]
    assert [(n["id"], n["role"], n["state"]) for n in nodes] == [
        ("wf-first", "parent", "SUCCESS"), ("wf-second", "self", "SUCCESS"),
        ("wf-sibling", "sibling", "FAILURE"), ("wf-third", "child", "PENDING")]
    page = client.get("/tasks/wf-second").text
    assert 'href="/tasks/wf-third"' in page and 'href="/tasks/wf-first"' in page
    assert client.get("/api/tasks/wf-third").json()["workflow"][0]["id"] == "wf-first"


def test_the_hour_is_read_in_bounded_steps_and_estimated_past_the_bound(
        memory_app: Conveyor) -> None:
    from conveyor.contrib.dashboard.history import ESTIMATE_PROBES, BackendHistory

    backend = memory_app.backend
    backend.store_many([TaskRecord(f"many-{i}", "SUCCESS", task="t", updated_at=time.time())
                        .to_stored() for i in range(50)], ttl=60)
    exact = BackendHistory(backend, per_minute=100).series()
    assert sum(m["succeeded"] for m in exact["minutes"]) == 50 and not exact["estimated"]
    bounded = BackendHistory(backend, per_minute=10)
    rows = bounded.series()["minutes"]
    # 59 empty minutes cost one read each; the full one stops after 10 records, then finds
    # where its records begin in ESTIMATE_PROBES one-record reads.
    assert bounded.reads == 60 + ESTIMATE_PROBES
    assert rows[-1]["estimated"] and rows[-1]["succeeded"] >= 10
    again = bounded.reads
    bounded.series()  # within the refresh: nothing is read again
    assert bounded.reads == again


def test_wait_time_counts_only_tries_that_waited_in_the_queue() -> None:
    from conveyor.contrib.dashboard.history import wait_time
    from conveyor.record import Attempt

    first = TaskRecord("w1", "SUCCESS", sent_at=100.0,
                       attempts=[Attempt(1, "w", 100.25, 101.0, "success").to_dict()])
    assert wait_time(first) == 0.25
    delayed = TaskRecord("w2", "SUCCESS", sent_at=100.0, eta=110.0, attempts=[
        Attempt(1, "w", 100.5, 100.6, "retry").to_dict(),
        Attempt(2, "w", 110.5, 111.0, "success").to_dict()])
    assert wait_time(delayed) == 0.5  # from the retry's due time, not the first send
    lost = TaskRecord("w3", "SUCCESS", sent_at=100.0, attempts=[
        Attempt(1, None, None, outcome="lost").to_dict(),
        Attempt(2, "w", 140.0, 141.0, "success").to_dict()])
    assert wait_time(lost) is None  # a redelivery waited for a lease, not in the queue
    assert wait_time(TaskRecord("w4", "PENDING", sent_at=100.0)) is None


def test_two_dashboards_on_one_backend_keep_each_others_queue_depths(
        memory_app: Conveyor) -> None:
    from conveyor.contrib.dashboard.history import load_depth, save_depth

    backend = memory_app.backend
    now = int(time.time() // 60) * 60.0 + 10  # both saves in one minute
    # Two apps with their own queues, one backend, the same minute.
    save_depth(backend, now, {"shop": 4, "default": 1})
    save_depth(backend, now + 1, {"mail": 9, "default": 2})
    save_depth(backend, now, {"x" * 600: 5})  # too long for a key: left out, not an error
    [point] = load_depth(backend, now - 60)
    assert point == {"at": now + 1, "depth": {"shop": 4, "mail": 9, "default": 2}}
    assert load_depth(backend, now + 60) == []


def test_one_queues_hour_counts_only_that_queue(memory_app: Conveyor) -> None:
    from conveyor.contrib.dashboard.history import BackendHistory

    backend = memory_app.backend
    backend.store_many([TaskRecord(f"q-{i}", "SUCCESS" if i % 3 else "FAILURE", task="t",
                                   queue="high" if i < 6 else "low", updated_at=time.time())
                        .to_stored() for i in range(10)], ttl=60)
    client = TestClient(Dashboard(memory_app, sample=False).asgi(), base_url=LOCAL)
    high = client.get("/api/history", params={"queue": "high"}).json()
    low = client.get("/api/history", params={"queue": "low"}).json()
    every = client.get("/api/history").json()
    assert (high["queue"], low["queue"], every["queue"]) == ("high", "low", None)
    assert [sum(m[k] for m in high["series"]) for k in ("succeeded", "failed")] == [4, 2]
    assert [sum(m[k] for m in low["series"]) for k in ("succeeded", "failed")] == [2, 2]
    assert [sum(m[k] for m in every["series"]) for k in ("succeeded", "failed")] == [6, 4]
    assert sum(m["succeeded"] for m in BackendHistory(backend, queue="none").series()[
        "minutes"]) == 0


def test_the_timeline_marks_a_redelivery_after_a_lost_lease(memory_app: Conveyor) -> None:
    from conveyor.record import Attempt

    memory_app.backend.store(TaskRecord("relived", "SUCCESS", task="t", worker="w2", attempts=[
        Attempt(1, None, None, outcome="lost").to_dict(),
        Attempt(2, "w2", 140.0, 141.5, "success").to_dict()]).to_stored(), ttl=60)
    client = TestClient(Dashboard(memory_app, sample=False).asgi(), base_url=LOCAL)
    assert [a["outcome"] for a in client.get("/api/tasks/relived").json()["attempts"]] == [
        "lost", "success"]
    page = client.get("/tasks/relived").text
    timeline = page[page.index('id="timeline"'):page.index("</ol>")]
    first, second = timeline.split("<li")[1:]
    assert first.startswith(' class="lost"') and '<span class="state">lost</span>' in first
    assert second.startswith(' class="success"') and "1500.0 ms" in second
