"""End-to-end fixtures: real ``conveyor worker`` processes against each broker/backend pair.

``pair`` is parametrized by driver; driver issues add their pairs to ``PAIRS``. Each test gets
its own queue, so pairs on shared servers do not interfere.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conveyor.testing import e2e as conformance

HERE = Path(__file__).parent
REPO = HERE.parent.parent

#: id -> (broker fixture or None, backend fixture or None). None means SQLite in tmp_path.
PAIRS: dict[str, tuple[str | None, str | None]] = {
    "sqlite": (None, None),
    "redis": ("redis_url", "redis_url"),
    "redis-two-servers": ("redis_url", "redis_url_2"),
    "postgres": ("postgres_url", "postgres_url"),
    "mysql": ("mysql_url", "mysql_url"),
    "redis-broker+postgres-backend": ("redis_url", "postgres_url"),
    "postgres-broker+redis-backend": ("postgres_url", "redis_url"),
    "postgres-broker+sqlite-backend": ("postgres_url", None),
    "sqs+s3": ("sqs_url", "s3_url"),
    "sqs-broker+postgres-backend": ("sqs_url", "postgres_url"),
    "redis-broker+s3-backend": ("redis_url", "s3_url"),
    "mongodb": ("mongo_url", "mongo_url"),
    "mongodb-broker+redis-backend": ("mongo_url", "redis_url"),
    "redis-broker+mongodb-backend": ("redis_url", "mongo_url"),
}


@dataclass
class Pair:
    """A broker URL and a backend URL for one end-to-end run."""

    name: str
    broker: str
    backend: str


@pytest.fixture(params=list(PAIRS), ids=list(PAIRS))
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Pair:
    broker_fx, backend_fx = PAIRS[request.param]
    sqlite = f"sqlite:///{tmp_path / 'e2e.db'}"
    broker = request.getfixturevalue(broker_fx) if broker_fx else sqlite
    backend = request.getfixturevalue(backend_fx) if backend_fx else sqlite
    return Pair(request.param, broker, backend)


@pytest.fixture
def queue() -> str:
    return f"e2e-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def app(pair: Pair, queue: str) -> Iterator[object]:
    """The producer side: ``e2e_tasks.app`` pointed at the pair, default queue per test."""
    sys.path.insert(0, str(HERE))
    import e2e_tasks

    conf = e2e_tasks.app.conf
    saved = (conf.broker_url, conf.result_backend, conf.task_default_queue, conf.result_expires)
    e2e_tasks.app.close()
    conf.update({"broker_url": pair.broker, "result_backend": pair.backend,
                 "task_default_queue": queue})
    yield e2e_tasks.app
    e2e_tasks.app.close()
    conf.broker_url, conf.result_backend, conf.task_default_queue, conf.result_expires = saved


class Workers(conformance.Workers):
    """The shipped end-to-end suite's workers (:class:`conveyor.testing.e2e.Workers`) running
    this directory's ``e2e_tasks:app`` on a :class:`Pair`."""

    def __init__(self, pair: Pair, queue: str, log_dir: Path) -> None:
        super().__init__(pair.broker, pair.backend, queue, log_dir, app="e2e_tasks:app",
                         cwd=HERE, env={"PYTHONPATH": os.pathsep.join(
                             [str(REPO), os.environ.get("PYTHONPATH", "")])})
        self.pair = pair


@pytest.fixture
def workers(pair: Pair, queue: str, tmp_path: Path) -> Iterator[Workers]:
    logs = tmp_path / "logs"
    logs.mkdir()
    w = Workers(pair, queue, logs)
    yield w
    w.stop_all()


wait_until = conformance.wait_until
