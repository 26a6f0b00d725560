"""End-to-end fixtures: real ``conveyor worker`` processes against each broker/backend pair.

``pair`` is parametrized by driver; driver issues add their pairs to ``PAIRS``. Each test gets
its own queue, so pairs on shared servers do not interfere.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

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


class Workers:
    """Starts ``conveyor worker`` processes and stops them all at teardown."""

    def __init__(self, pair: Pair, queue: str, log_dir: Path) -> None:
        self.pair, self.queue, self.log_dir = pair, queue, log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, lease: float = 2.0, env: dict[str, str] | None = None,
              broker: str | None = None) -> subprocess.Popen[bytes]:
        environ = {**os.environ, "CONVEYOR_BROKER_URL": broker or self.pair.broker,
                   "CONVEYOR_BACKEND_URL": self.pair.backend,
                   "CONVEYOR_BROKER_VISIBILITY_TIMEOUT": str(lease),
                   "CONVEYOR_WORKER_POLL_WAIT": "0.5",
                   "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                   **(env or {})}
        log = open(self.log_dir / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "worker", "-A", "e2e_tasks:app",
             "-Q", self.queue, "-l", "INFO", *args],
            cwd=HERE, env=environ, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")
                         for p in sorted(self.log_dir.glob("worker-*.log")))

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers(pair: Pair, queue: str, tmp_path: Path) -> Iterator[Workers]:
    logs = tmp_path / "logs"
    logs.mkdir()
    w = Workers(pair, queue, logs)
    yield w
    w.stop_all()


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")
