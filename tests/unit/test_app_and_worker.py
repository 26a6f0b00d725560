"""The app and the worker on the memory drivers, in one process."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from typing import Any

import pytest

from conveyor import Conveyor, chain, group
from conveyor.exceptions import (
    MaxRetriesExceededError,
    NotRegisteredError,
    Reject,
    RemoteTaskError,
    TaskOptionError,
    TaskRevokedError,
    TimeoutError,
)
from conveyor.worker import Consumer, TaskRunner


def test_negative_countdown_and_past_eta_are_refused_before_sending(app: Conveyor) -> None:
    @app.task
    def noop() -> None: ...

    with pytest.raises(TaskOptionError, match="negative"):
        noop.apply_async(countdown=-1)
    with pytest.raises(TaskOptionError, match="past"):
        noop.apply_async(eta=datetime.now() - timedelta(minutes=5))
    with pytest.raises(TaskOptionError, match="past"):
        noop.apply_async(expires=datetime.now() - timedelta(minutes=5))
    assert app.broker.stats("default").ready == 0


def test_task_called_directly_runs_here(app: Conveyor) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    assert add(2, 3) == 5
    assert add.name.endswith("add")


def test_retry_count_history_and_max_retries_exceeded(app: Conveyor, worker: Consumer) -> None:
    @app.task(bind=True, max_retries=2)
    def needs_retry(self: Any) -> None:
        raise self.retry(countdown=0.05)

    result = needs_retry.delay()
    with pytest.raises(MaxRetriesExceededError):
        result.get(timeout=10)
    assert result.retries == 2
    assert [a["number"] for a in result.attempts] == [1, 2, 3]
    [dead] = app.broker.dead_letters("default")
    assert "max retries exceeded (2)" in dead.reason


def test_retry_may_raise_max_retries_per_call(app: Conveyor, worker: Consumer) -> None:
    @app.task(bind=True, max_retries=0)
    def extra(self: Any) -> str:
        if self.request.retries < 2:
            raise self.retry(countdown=0.01, max_retries=5)
        return f"done after {self.request.retries}"

    assert extra.delay().get(timeout=10) == "done after 2"


def test_plain_failure_is_recorded_but_not_dead_lettered_by_default(
        app: Conveyor, worker: Consumer) -> None:
    @app.task
    def bad() -> None:
        raise LookupError("nope")

    result = bad.delay()
    with pytest.raises(LookupError, match="nope"):
        result.get(timeout=10)
    assert result.failed()
    assert isinstance(result.result, LookupError)
    assert app.broker.dead_letters("default") == []
    assert result.get(timeout=1, propagate=False).args == ("nope",)


def test_unrebuildable_exception_comes_back_as_remote_task_error(
        app: Conveyor, worker: Consumer) -> None:
    class LocalOnlyError(Exception):
        def __init__(self, a: int, b: int) -> None:
            super().__init__(f"{a}/{b}")

    @app.task
    def odd() -> None:
        raise LocalOnlyError(1, 2)

    with pytest.raises(RemoteTaskError, match="LocalOnlyError"):
        odd.delay().get(timeout=10)


def test_reject_sends_the_message_to_the_dead_letter_queue(
        app: Conveyor, worker: Consumer) -> None:
    @app.task
    def refuse() -> None:
        raise Reject("poison input")

    result = refuse.delay()
    with pytest.raises(Exception, match="poison input"):
        result.get(timeout=10)
    [dead] = app.broker.dead_letters("default")
    assert "poison input" in dead.reason


def test_unknown_task_is_failed_and_dead_lettered(app: Conveyor, worker: Consumer) -> None:
    result = app.send_task("nowhere.task")
    with pytest.raises(NotRegisteredError, match=r"unknown task 'nowhere\.task'"):
        result.get(timeout=10)
    assert app.broker.dead_letters("default")[0].reason.startswith("unknown task")


def test_get_times_out_with_a_clear_error(app: Conveyor) -> None:
    @app.task
    def never() -> None: ...

    with pytest.raises(TimeoutError, match="not finished"):
        never.delay().get(timeout=0.2)


@pytest.mark.parametrize("track_started", [True, False], ids=["tracked", "untracked"])
def test_first_terminal_write_wins_so_a_duplicate_delivery_is_not_rerun(
        app: Conveyor, track_started: bool) -> None:
    app.conf.task_track_started = track_started  # untracked, the worker reads the record
    runs: list[int] = []

    @app.task
    def once() -> int:
        runs.append(1)
        return len(runs)

    result = once.delay()
    [res] = app.broker.reserve(["default"], lease=0.2)
    runner = TaskRunner(app, hostname="test")
    runner._ack = lambda _res: None  # type: ignore[method-assign]  # the ack is lost
    runner.handle(res)  # runs and records SUCCESS
    del runner._ack
    time.sleep(0.3)  # the lease lapses...
    [again] = app.broker.reserve(["default"], lease=1)
    assert again.attempts == 2
    runner.handle(again)  # ...and the redelivery finds SUCCESS already written
    assert runs == [1]
    assert result.get(timeout=1) == 1
    assert app.broker.stats("default").ready == 0


def test_expired_task_is_revoked_not_run(app: Conveyor, worker: Consumer) -> None:
    ran: list[int] = []

    @app.task
    def late() -> None:
        ran.append(1)

    worker.stop()
    time.sleep(0.5)
    result = late.apply_async(expires=0.1)
    time.sleep(0.3)
    [res] = app.broker.reserve(["default"], lease=1)
    TaskRunner(app, hostname="test").handle(res)
    with pytest.raises(TaskRevokedError, match="expired"):
        result.get(timeout=1)
    assert ran == []


def test_chain_failure_marks_the_rest_failed_instead_of_hanging(
        app: Conveyor, worker: Consumer) -> None:
    @app.task
    def explode(_: object = None) -> None:
        raise RuntimeError("first link broke")

    @app.task
    def after(x: object) -> object:
        return x

    result = chain(explode.s(), after.s())()
    with pytest.raises(Exception, match="first link broke"):
        result.get(timeout=10)


def test_group_and_map_send_in_one_batch(app: Conveyor, worker: Consumer) -> None:
    @app.task
    def square(x: int) -> int:
        return x * x

    assert group(square.s(i) for i in range(5))().get(timeout=10) == [0, 1, 4, 9, 16]
    assert square.map([(i,) for i in range(3)]).get(timeout=10) == [0, 1, 4]


def test_long_task_keeps_its_lease_through_the_heartbeat(app: Conveyor) -> None:
    app.conf.broker_visibility_timeout = 0.6  # heartbeat every 0.2 s

    @app.task
    def slow() -> str:
        time.sleep(1.5)
        return "ok"

    consumer = Consumer(app, concurrency=1)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        result = slow.delay()
        time.sleep(0.9)  # past the lease: without the heartbeat it would be ready again
        assert app.broker.stats("default").reserved == 1
        assert app.broker.stats("default").ready == 0
        assert result.get(timeout=10) == "ok"
        assert len(result.attempts) == 1
    finally:
        consumer.stop()
        thread.join(10)


def test_graceful_stop_releases_prefetched_messages(app: Conveyor) -> None:
    started = threading.Event()

    @app.task
    def quick() -> None: ...

    @app.task
    def hold() -> str:
        started.set()
        time.sleep(0.5)
        return "done"

    consumer = Consumer(app, concurrency=1, prefetch_multiplier=3)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    # Short tasks first: the worker learns they are short and starts to prefetch.
    assert [quick.delay() for _ in range(5)][-1].get(timeout=10) is None
    assert consumer.max_held == 3
    results = [hold.delay() for _ in range(3)]
    assert started.wait(5)
    time.sleep(0.2)
    # One running, one or two prefetched (the worker tops up by half its prefetch while
    # it has messages queued).
    assert app.broker.stats("default").reserved in (2, 3)
    consumer.stop()
    thread.join(10)
    assert results[0].get(timeout=1) == "done"
    stats = app.broker.stats("default")
    assert stats.ready == 2  # given back, or never taken
    assert stats.reserved == 0


def test_long_tasks_are_not_prefetched(app: Conveyor) -> None:
    @app.task
    def slow() -> None:
        time.sleep(0.3)

    consumer = Consumer(app, concurrency=1, prefetch_multiplier=4)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        results = [slow.delay() for _ in range(4)]
        results[0].get(timeout=10)
        time.sleep(0.1)
        assert consumer.max_held == 1
        assert app.broker.stats("default").reserved <= 1  # the rest wait for any worker
    finally:
        consumer.stop()
        thread.join(10)


def test_tasks_of_a_script_are_named_after_the_app_as_in_celery() -> None:
    app = Conveyor("shop", broker="memory://names", backend="memory://names")

    def charge() -> None: ...

    charge.__module__ = "__main__"  # as in a module run with ``python shop.py``
    charge.__qualname__ = "charge"
    assert app.task(charge).name == "shop.charge"
