"""MongoDB outages: the server killed by PID mid-run and restarted on the same port,
unreachable at start, refusing credentials.

Each test runs its own SecantusDB (tests/servers/mongo.py). The restart test keeps data on
disk with every commit fsynced, as a production mongod with ``journal=true`` would; the URL
asks for the journal too, which a real mongod honours.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.testing.e2e import wait_until
from tests.servers import free_port
from tests.servers.mongo import MongoServer, mongo_server

from .test_faults import _point, _run_through_restart, _workers, fault_app

pytestmark = pytest.mark.timeout(180)
__all__ = ["fault_app"]  # the fixture, shared with test_faults.py


def _check(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", "--broker", url, "--backend", url,
                           "check"], capture_output=True, text=True, timeout=90, check=False)


@pytest.fixture
def durable_mongo() -> Iterator[MongoServer]:
    with mongo_server(durable=True) as server:
        yield server


def test_mongodb_killed_mid_run_workers_reconnect_and_every_task_completes_once(
        fault_app: Any, durable_mongo: MongoServer, tmp_path: Path) -> None:
    # Server selection shorter than the outage, so calls fail (and the worker's backoff
    # runs) instead of pymongo quietly waiting the server out.
    url = durable_mongo.url + "&journal=true&serverSelectionTimeoutMS=800"
    workers = _workers(url, tmp_path)
    _point(fault_app, url, workers.queue)
    try:
        def restart() -> None:
            pid = durable_mongo.pid
            durable_mongo.kill()
            time.sleep(2.0)
            durable_mongo.start()
            assert durable_mongo.pid != pid

        _run_through_restart(fault_app, workers, restart)
        logs = workers.logs()
        assert "unavailable" in logs
        assert "reachable again" in logs
    finally:
        workers.stop_all()


def test_mongodb_unreachable_at_start_check_says_so_and_the_worker_waits(
        fault_app: Any, tmp_path: Path) -> None:
    port = free_port()
    url = (f"mongodb://app:hunter2@127.0.0.1:{port}/conveyor_test"
           "?directConnection=true&serverSelectionTimeoutMS=1500")
    check = _check(url)
    assert check.returncode == 1
    lines = [line for line in check.stderr.splitlines() if line.strip()]
    assert any(line.startswith("FAIL broker") and f"127.0.0.1:{port}" in line
               for line in lines), check.stderr
    assert "hunter2" not in check.stdout + check.stderr
    assert "Traceback" not in check.stderr

    # A short server selection, so the worker gives up on each try (and says so) inside
    # the two seconds the server is away; the default would wait five seconds for it.
    plain = (f"mongodb://127.0.0.1:{port}/conveyor_test"
             "?directConnection=true&serverSelectionTimeoutMS=500")
    workers = _workers(plain, tmp_path)
    _point(fault_app, plain, workers.queue)
    server = MongoServer(port=port)
    try:
        proc = workers.start("-c", "1")
        # Waits for the worker to say so (a loaded machine may take seconds to start it).
        wait_until(lambda: "unavailable" in workers.logs() or proc.poll() is not None,
                   timeout=60, what="the worker reporting the server unavailable")
        assert proc.poll() is None, "the worker must keep retrying, not crash"
        server.start()
        import e2e_tasks

        assert e2e_tasks.add.delay(2, 2).get(timeout=60) == 4
        assert proc.poll() is None
    finally:
        workers.stop_all()
        server.close()


@pytest.fixture
def auth_mongo() -> Iterator[MongoServer]:
    """A server requiring SCRAM authentication, with the user ``app`` / ``right``."""
    import pymongo

    with mongo_server(durable=True) as server:
        client = pymongo.MongoClient(server.url)
        client.conveyor_test.command("createUser", "app", pwd="right", roles=["readWrite"])
        client.close()
        server.stop()
        server.require_auth = True
        server.start()
        yield server


@pytest.mark.parametrize("problem", ["wrong password", "no credentials"])
def test_refused_credentials_are_one_clear_line(
        auth_mongo: MongoServer, problem: str, tmp_path: Path) -> None:
    user = "app:secret@" if problem == "wrong password" else ""
    url = f"mongodb://{user}127.0.0.1:{auth_mongo.port}/conveyor_test?directConnection=true"
    check = _check(url)
    assert check.returncode == 1
    fails = [line for line in check.stderr.splitlines() if line.startswith("FAIL broker")]
    assert len(fails) == 1, check.stderr
    assert "auth" in fails[0].lower()
    assert "secret" not in check.stdout + check.stderr
    assert "Traceback" not in check.stderr
    worker = subprocess.run(
        [sys.executable, "-m", "conveyor", "--broker", url, "--backend", url, "worker"],
        capture_output=True, text=True, timeout=90, check=False, cwd=tmp_path)
    assert worker.returncode == 1
    errors = [line for line in worker.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, worker.stderr
    assert "secret" not in worker.stderr
    assert "Traceback" not in worker.stderr
