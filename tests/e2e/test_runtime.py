"""The task runtime end to end, with real worker processes: time limits on both pools, a
cluster-wide rate limit held by two workers, priorities reordering a backlog, a revoke that
survives a worker restart, progress observed mid-task, signals in order, and registry entries
that appear and expire after SIGKILL. Each runs on a small explicit list of pairs."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conveyor.exceptions import TaskRevokedError

from .conftest import Workers, wait_until

pytestmark = pytest.mark.timeout(120)

THREE = ["sqlite", "redis", "postgres"]


@pytest.mark.parametrize("pair", THREE, indirect=True)
def test_soft_limit_is_caught_and_hard_limit_ends_a_stuck_task_threads_pool(
        app: Any, workers: Workers, tmp_path: Path) -> None:
    import e2e_tasks

    proc = workers.start("-c", "2")
    assert e2e_tasks.soft_limited.delay().get(timeout=20) == "cleaned up"
    marker = tmp_path / "stuck"
    r = e2e_tasks.stuck.delay(str(marker))
    with pytest.raises(Exception, match="time_limit"):
        r.get(timeout=30)
    record = r.record
    assert record is not None and record.error_type == "conveyor.exceptions.TimeLimitExceeded"
    assert [a["outcome"] for a in record.attempts] == ["failure"]
    # The process re-executed itself (same pid) and serves again.
    assert proc.poll() is None and int(marker.read_text()) == proc.pid
    assert e2e_tasks.add.delay(1, 2).get(timeout=30) == 3
    assert "recycling this worker process" in workers.logs()


@pytest.mark.parametrize("pair", THREE, indirect=True)
def test_hard_limit_replaces_the_child_on_the_processes_pool(
        app: Any, workers: Workers, tmp_path: Path) -> None:
    import e2e_tasks

    workers.start("--pool", "processes", "-c", "2")
    marker = tmp_path / "stuck"
    r = e2e_tasks.stuck.delay(str(marker))
    with pytest.raises(Exception, match="time_limit"):
        r.get(timeout=30)
    assert e2e_tasks.soft_limited.delay().get(timeout=30) == "cleaned up"
    assert [e2e_tasks.add.delay(i, i) for i in range(4)][-1].get(timeout=30) == 6


@pytest.mark.parametrize("pair", THREE, indirect=True)
def test_rate_limit_is_held_by_two_workers_together(app: Any, workers: Workers) -> None:
    import e2e_tasks

    workers.start("-c", "2")
    workers.start("-c", "2")
    assert e2e_tasks.add.delay(0, 0).get(timeout=60) == 0  # both are up (roughly)
    time.sleep(1.0)
    results = [e2e_tasks.limited.delay() for _ in range(100)]  # 20 s at the limit
    times = sorted(r.get(timeout=90) for r in results)
    # A 5/s limit is five runs per one-second window (windows start on whole epoch seconds).
    per_window = Counter(math.floor(t) for t in times)
    # Admission is what the limit counts; a run starts a little later (the backend round
    # trip, a busy machine), so runs admitted in window x may start in window x+1. Any three
    # adjacent windows then hold at most their own three windows' worth plus the one before.
    spans = [sum(per_window[w + i] for i in range(3)) for w in per_window]
    assert max(spans) <= 4 * 5, per_window
    full = sorted(per_window)[1:-1]  # the first and last windows are partly used
    assert len(full) >= 18, per_window
    rate = sum(per_window[w] for w in full) / len(full)
    assert 4.5 <= rate <= 5.5, f"{rate:.2f} runs/s over {len(full)} windows, limit 5/s"
    assert all(len(r.attempts) == 1 for r in results), "no attempt was counted for a wait"


@pytest.mark.parametrize("pair", THREE, indirect=True)
def test_priorities_reorder_a_backlog(app: Any, workers: Workers) -> None:
    import e2e_tasks

    low = [e2e_tasks.ranked.delay(f"low{i}") for i in range(6)]
    high = [e2e_tasks.ranked.apply_async((f"high{i}",), priority=9) for i in range(3)]
    app.flush_pending()
    workers.start("-c", "1", "--prefetch-multiplier", "1")
    last_high = max(r.get(timeout=30) for r in high)
    first_low = min(r.get(timeout=30) for r in low)
    assert last_high < first_low


@pytest.mark.parametrize("pair", THREE, indirect=True)
def test_revoke_survives_a_worker_restart(app: Any, workers: Workers, tmp_path: Path) -> None:
    import e2e_tasks

    marker = tmp_path / "ran"
    proc = workers.start("-c", "2")
    r = e2e_tasks.nap.apply_async((0.1, str(marker)), countdown=3)
    r.revoke()
    assert r.state == "REVOKED"
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    workers.start("-c", "2")
    time.sleep(4.5)  # past the countdown
    assert e2e_tasks.add.delay(1, 1).get(timeout=30) == 2
    assert not marker.exists(), "the revoked task ran"
    with pytest.raises(TaskRevokedError):
        app.AsyncResult(r.id).get(timeout=5)


@pytest.mark.parametrize("pool", ["threads", "processes"])
@pytest.mark.parametrize("pair", THREE, indirect=True)
def test_revoke_terminate_ends_a_running_task_and_the_worker_serves_on(
        app: Any, workers: Workers, tmp_path: Path, pool: str) -> None:
    import e2e_tasks

    proc = workers.start("--pool", pool, "-c", "2")
    marker = tmp_path / "running"
    r = e2e_tasks.runs_until_ended.delay(str(marker))
    wait_until(marker.exists, timeout=30, what="the task to start")
    app.control.revoke(r.id, terminate=True)
    with pytest.raises(TaskRevokedError):
        r.get(timeout=10)  # its REVOKED record is there at once
    # Ended inside the worker within a few seconds, not run to its end (60 s).
    wait_until(lambda: "terminated revoked task" in workers.logs(), timeout=15,
               what="the worker to end the task")
    assert e2e_tasks.add.delay(2, 3).get(timeout=30) == 5
    assert proc.poll() is None
    assert marker.read_text().splitlines() == ["started"]
    record = app.AsyncResult(r.id).record
    assert record is not None and record.state == "REVOKED"
    assert app.broker.dead_letters(app.conf.task_default_queue) == []


@pytest.mark.parametrize("pair", THREE, indirect=True)
def test_a_second_send_of_a_finished_or_just_revoked_id_never_runs(
        app: Any, workers: Workers, tmp_path: Path) -> None:
    import e2e_tasks

    marker = tmp_path / "runs"
    workers.start("-c", "1", "--prefetch-multiplier", "1")
    first = e2e_tasks.counted.delay(str(marker))
    assert first.get(timeout=30) == 1
    # A publish retry after a lost reply, or a replay: a first delivery of a finished id.
    e2e_tasks.counted.apply_async((str(marker),), task_id=first.id)
    # Revoked a moment before it is sent: well inside the workers' revoke-cache refresh.
    late = str(uuid.uuid4())
    app.control.revoke(late)
    e2e_tasks.counted.apply_async((str(marker),), task_id=late)
    # One thread, no prefetch: both were handled once a task sent after them has finished.
    assert e2e_tasks.add.delay(1, 1).get(timeout=30) == 2
    assert marker.read_text().splitlines() == ["ran"]
    assert app.AsyncResult(first.id).get(timeout=5) == 1
    assert app.AsyncResult(late).state == "REVOKED"
    stats = app.broker.stats(app.conf.task_default_queue)
    assert (stats.ready, stats.reserved, stats.delayed) == (0, 0, 0)


@pytest.mark.parametrize("pair", THREE, indirect=True)
def test_progress_is_observed_mid_task_and_the_final_state_wins(
        app: Any, workers: Workers, tmp_path: Path) -> None:
    import e2e_tasks

    workers.start("-c", "1")
    marker = tmp_path / "go"
    r = e2e_tasks.reports_progress.delay(str(marker))
    wait_until(lambda: r.state == "PROGRESS", timeout=20, what="PROGRESS")
    assert r.info == {"step": 1}
    marker.write_text("go")
    assert r.get(timeout=20) == "done"
    assert app.AsyncResult(r.id).state == "SUCCESS"


@pytest.mark.parametrize("pair", THREE, indirect=True)
def test_signals_fire_in_order(app: Any, workers: Workers, tmp_path: Path) -> None:
    import e2e_tasks

    log = tmp_path / "signals.log"
    proc = workers.start("-c", "1", env={"CONVEYOR_E2E_SIGNAL_LOG": str(log)})
    assert e2e_tasks.add.delay(2, 2).get(timeout=30) == 4
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    assert log.read_text().split() == ["worker_process_init", "worker_ready", "task_prerun",
                                       "task_success", "task_postrun", "worker_shutdown"]


@pytest.mark.parametrize("pair", THREE, indirect=True)
def test_registry_entries_appear_and_expire_after_sigkill(app: Any, workers: Workers) -> None:
    import e2e_tasks

    first = workers.start("-c", "2", "-n", "alpha@e2e")
    workers.start("-c", "3", "-n", "beta@e2e")
    inspect = app.control.inspect(["alpha@e2e", "beta@e2e"])
    wait_until(lambda: len(inspect.workers()) == 2, timeout=30, what="two registrations")
    entry = inspect.workers()["alpha@e2e"]
    assert entry["pid"] == first.pid and entry["concurrency"] == 2
    assert e2e_tasks.add.name in inspect.registered()["beta@e2e"]
    shown = subprocess.run(
        [sys.executable, "-m", "conveyor", "-A", "e2e_tasks:app", "inspect", "workers",
         "--json"], cwd=Path(__file__).parent, capture_output=True, timeout=60, check=True,
        env={**os.environ, "CONVEYOR_BROKER_URL": app.conf.broker_url,
             "CONVEYOR_BACKEND_URL": app.conf.result_backend})
    assert {"alpha@e2e", "beta@e2e"} <= set(json.loads(shown.stdout))
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    # The lease is 2 s here, so the heartbeat is 2/3 s and an entry lives 2 s.
    wait_until(lambda: list(inspect.workers()) == ["beta@e2e"], timeout=10,
               what="the killed worker's entry to expire")
    replies = app.control.pool_grow(1, destination=["beta@e2e"], reply=True, timeout=10)
    assert replies == {"beta@e2e": {"ok": "pool size is now 4"}}
    app.control.shutdown(destination=["beta@e2e"])
    wait_until(lambda: not inspect.workers(), timeout=20, what="the stopped worker to leave")
