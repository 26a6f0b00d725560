"""Dashboard views over records written directly (memory drivers, in-process)."""

from __future__ import annotations

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
        ("wf-third", "child", "PENDING"), ("wf-sibling", "sibling", "FAILURE")]
    page = client.get("/tasks/wf-second").text
    assert 'href="/tasks/wf-third"' in page and 'href="/tasks/wf-first"' in page
    assert client.get("/api/tasks/wf-third").json()["workflow"][0]["id"] == "wf-first"
