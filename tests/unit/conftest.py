"""Fixtures shared by the unit tests: an app on the memory drivers and a worker thread."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest

from conveyor import Conveyor
from conveyor.worker import Consumer


@pytest.fixture
def app() -> Conveyor:
    """An app on a fresh pair of memory drivers, with a short lease and poll."""
    name = uuid.uuid4().hex
    return Conveyor("unit", broker=f"memory://{name}", backend=f"memory://{name}",
                    broker_visibility_timeout=1.0, worker_poll_wait=0.2)


@pytest.fixture
def worker(app: Conveyor) -> Iterator[Consumer]:
    """A two-thread worker on ``app``, running in this process; stopped after the test."""
    consumer = Consumer(app, concurrency=2)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    yield consumer
    consumer.stop()
    thread.join(10)
    assert not thread.is_alive()
