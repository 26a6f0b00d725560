"""The guarantees, end to end: an app sending tasks and real worker processes running them."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from conveyor.exceptions import TaskRevokedError

from .conftest import Pair, Workers, wait_until

pytestmark = pytest.mark.timeout(90)


def test_delay_and_get(app: Any, workers: Workers) -> None:
    import e2e_tasks

    workers.start("-c", "2")
    result = e2e_tasks.add.delay(2, 3)
    assert result.get(timeout=20) == 5
    assert result.state == "SUCCESS"
    assert result.successful() and result.ready() and not result.failed()
    assert result.retries == 0
    [attempt] = result.attempts
    assert attempt["outcome"] == "success" and attempt["worker"]


def test_five_one_second_tasks_on_two_single_slot_workers_run_two_at_a_time(
        app: Any, workers: Workers) -> None:
    import e2e_tasks

    workers.start("-c", "1")
    workers.start("-c", "1")
    results = [e2e_tasks.nap.delay(1.0) for _ in range(5)]
    runs = [r.get(timeout=40) for r in results]
    assert len({run["pid"] for run in runs}) == 2, "both workers took tasks"
    # At no moment did more than two tasks run at once, and at some moment two did.
    events = sorted([(run["started"], 1) for run in runs] + [(run["finished"], -1) for run in runs])
    running, peak = 0, 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == 2
    span = max(r["finished"] for r in runs) - min(r["started"] for r in runs)
    assert span >= 2.9, "five one-second tasks on two slots need three rounds"


def test_task_that_retries_three_times_then_fails_is_dead_lettered(
        app: Any, workers: Workers, queue: str) -> None:
    import e2e_tasks

    workers.start("-c", "1")
    result = e2e_tasks.always_fails.delay(0.2)
    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=30)
    assert result.state == "FAILURE"
    assert result.retries == 3
    assert [a["outcome"] for a in result.attempts] == ["retry", "retry", "retry", "failure"]
    assert all(a["error_type"] == "builtins.ValueError" for a in result.attempts)
    assert "ValueError" in (result.traceback or "")
    wait_until(lambda: len(app.broker.dead_letters(queue)) == 1, timeout=10,
               what="the exhausted message in the dead-letter queue")
    [letter] = app.broker.dead_letters(queue)
    assert "max retries exceeded" in letter.reason


def test_autoretry_with_backoff_succeeds_after_failures(
        app: Any, workers: Workers, tmp_path: Path) -> None:
    import e2e_tasks

    workers.start("-c", "1")
    result = e2e_tasks.flaky_until.delay(str(tmp_path / "count"), 2)
    assert result.get(timeout=30) == 3
    assert result.retries == 2
    assert [a["outcome"] for a in result.attempts] == ["retry", "retry", "success"]


def test_chain_passes_results_along(app: Any, workers: Workers) -> None:
    import e2e_tasks

    from conveyor import chain

    workers.start("-c", "2")
    result = chain(e2e_tasks.add.s(1, 2), e2e_tasks.mul.s(10), e2e_tasks.add.s(5))()
    assert result.get(timeout=30) == 35
    assert result.parent is not None and result.parent.get(timeout=5) == 30
    assert (e2e_tasks.add.s(2, 2) | e2e_tasks.mul.s(3))().get(timeout=30) == 12


def test_group_collects_results_in_order(app: Any, workers: Workers) -> None:
    import e2e_tasks

    from conveyor import group

    workers.start("-c", "4")
    result = group(e2e_tasks.add.s(i, i) for i in range(10))()
    assert result.get(timeout=30) == [2 * i for i in range(10)]
    assert result.successful()
    assert e2e_tasks.mul.map([(i, 3) for i in range(4)]).get(timeout=30) == [0, 3, 6, 9]


def test_countdown_is_kept_by_the_broker(app: Any, workers: Workers) -> None:
    import e2e_tasks

    workers.start("-c", "1")
    sent = time.time()
    result = e2e_tasks.nap.apply_async((0,), countdown=1.5)
    run = result.get(timeout=30)
    assert run["started"] - sent >= 1.4


def test_expired_task_is_not_run_and_recorded_as_revoked(app: Any, workers: Workers) -> None:
    import e2e_tasks

    result = e2e_tasks.add.apply_async((1, 1), expires=0.5)
    time.sleep(1.0)
    workers.start("-c", "1")
    with pytest.raises(TaskRevokedError, match="expired"):
        result.get(timeout=20)
    assert result.state == "REVOKED"


def test_result_expires_hides_old_results(app: Any, workers: Workers) -> None:
    import e2e_tasks

    app.conf.result_expires = 1.0
    workers.start("-c", "1", env={"CONVEYOR_RESULT_EXPIRES": "1.0"})
    result = e2e_tasks.add.delay(1, 2)
    assert result.get(timeout=20) == 3
    fresh = app.AsyncResult(result.id)
    time.sleep(1.5)
    assert not fresh.exists()
    assert fresh.state == "PENDING"


def test_unknown_id_is_distinguishable_from_a_queued_task(app: Any) -> None:
    import e2e_tasks

    queued = e2e_tasks.add.delay(1, 1)  # no worker runs
    assert queued.exists() and queued.state == "PENDING"
    unknown = app.AsyncResult("never-sent")
    assert not unknown.exists() and unknown.state == "PENDING"


def test_undecodable_message_and_unknown_task_go_to_the_dead_letter_queue(
        app: Any, workers: Workers, queue: str) -> None:
    app.broker.enqueue(queue, b"\xff\x00 not a message")
    unknown = app.send_task("e2e_tasks.no_such_task", (1,))
    workers.start("-c", "1")
    with pytest.raises(Exception, match="unknown task"):
        unknown.get(timeout=20)
    wait_until(lambda: len(app.broker.dead_letters(queue)) == 2, timeout=10,
               what="two dead letters")
    reasons = sorted(d.reason for d in app.broker.dead_letters(queue))
    assert reasons[0].startswith("undecodable message")
    assert reasons[1].startswith("unknown task 'e2e_tasks.no_such_task'")


def test_killed_worker_task_is_redelivered_and_succeeds(
        app: Any, workers: Workers, tmp_path: Path) -> None:
    import e2e_tasks

    marker = tmp_path / "started"
    first = workers.start("-c", "1", lease=1.5)
    result = e2e_tasks.nap.delay(2.0, str(marker))
    wait_until(marker.exists, timeout=20, what="the task to start")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    marker.unlink()
    workers.start("-c", "1", lease=1.5)
    run = result.get(timeout=30)
    assert run["pid"] != str(first.pid)
    outcomes = [a["outcome"] for a in result.attempts]
    assert outcomes == ["lost", "success"]


def test_sigterm_finishes_the_running_task_and_loses_nothing(
        app: Any, workers: Workers, tmp_path: Path, queue: str) -> None:
    import e2e_tasks

    marker = tmp_path / "started"
    proc = workers.start("-c", "1")
    running = e2e_tasks.nap.delay(1.5, str(marker))
    wait_until(marker.exists, timeout=20, what="the task to start")
    waiting = [e2e_tasks.add.delay(i, i) for i in range(3)]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert running.state == "SUCCESS"
    # The queued tasks are still there for the next worker.
    workers.start("-c", "2")
    assert [r.get(timeout=30) for r in waiting] == [0, 2, 4]


def test_processes_pool_restarts_a_dead_child(app: Any, workers: Workers) -> None:
    import e2e_tasks

    proc = workers.start("--pool", "processes", "-c", "2")
    first = [e2e_tasks.nap.delay(0.2) for _ in range(4)]
    pids = {r.get(timeout=40)["pid"] for r in first}
    assert pids and str(proc.pid) not in pids
    import os

    os.kill(int(next(iter(pids))), signal.SIGKILL)
    time.sleep(1.0)
    again = [e2e_tasks.add.delay(i, 1) for i in range(4)]
    assert [r.get(timeout=40) for r in again] == [1, 2, 3, 4]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_dlq_replay_runs_the_task_again_keeping_its_history(
        app: Any, workers: Workers, queue: str) -> None:
    import e2e_tasks

    from conveyor.dlq import replay

    workers.start("-c", "1")
    result = e2e_tasks.always_fails.delay(0.05)
    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=30)
    wait_until(lambda: len(app.broker.dead_letters(queue)) == 1, timeout=10, what="dead letter")
    assert replay(app, app.broker.dead_letters(queue)).replayed == 1
    wait_until(lambda: len(app.AsyncResult(result.id).attempts) == 8, timeout=30,
               what="four more attempts after the replay")
    again = app.AsyncResult(result.id)
    wait_until(lambda: again.state == "FAILURE", timeout=10, what="FAILURE again")
    assert again.retries == 3


@pytest.mark.parametrize("pair", ["sqlite"], indirect=True)
def test_worker_waits_for_a_locked_database_and_recovers(
        app: Any, workers: Workers, pair: Pair) -> None:
    import sqlite3

    import e2e_tasks

    path = pair.broker.split("sqlite:///", 1)[1]
    e2e_tasks.add.delay(0, 0)  # creates the schema
    lock = sqlite3.connect(path, timeout=0)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        workers.start("-c", "1", env={"CONVEYOR_WORKER_POLL_WAIT": "0.2"})
        time.sleep(2.0)
    finally:
        lock.rollback()
        lock.close()
    assert e2e_tasks.add.delay(20, 22).get(timeout=30) == 42


@pytest.mark.parametrize("pair", ["sqlite"], indirect=True)
def test_worker_started_before_the_database_file_exists(
        app: Any, workers: Workers, pair: Pair) -> None:
    import e2e_tasks

    path = Path(pair.broker.split("sqlite:///", 1)[1])
    assert not path.exists()
    workers.start("-c", "1")
    wait_until(path.exists, timeout=20, what="the worker to create the database")
    assert e2e_tasks.add.delay(1, 1).get(timeout=20) == 2
