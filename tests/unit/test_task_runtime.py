"""The task runtime on the memory drivers: task classes and hooks, signals, progress states,
revoke, routing, priorities, time limits, rate limits, the registry and control channel."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Conveyor, signals
from conveyor.control.channel import control_queue
from conveyor.exceptions import (
    ConfigurationError,
    SoftTimeLimitExceeded,
    TaskOptionError,
)
from conveyor.ratelimit import RateLimiter, parse_rate
from conveyor.task import Task
from conveyor.worker import Consumer


def _wait(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def recorded() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Every task/worker signal sent during the test, in order, with its arguments."""
    seen: list[tuple[str, dict[str, Any]]] = []
    lock = threading.Lock()
    sigs = [signals.before_task_publish, signals.after_task_publish, signals.task_prerun,
            signals.task_postrun, signals.task_success, signals.task_failure,
            signals.task_retry, signals.task_revoked, signals.worker_ready,
            signals.worker_shutdown, signals.worker_process_init]

    def receiver(signal: signals.Signal, sender: Any, **kw: Any) -> None:
        with lock:
            seen.append((signal.name, {"sender": sender, **kw}))

    for s in sigs:
        s.connect(receiver, dispatch_uid="test-recorder")
    yield seen
    for s in sigs:
        s.disconnect(dispatch_uid="test-recorder")


# -- task classes, hooks and signals ----------------------------------------------------------
def test_base_class_hooks_and_class_attribute_options(app: Conveyor, worker: Consumer) -> None:
    calls: list[tuple[Any, ...]] = []

    class Audited(app.Task):  # type: ignore[name-defined,misc]
        max_retries = 1
        acks_late = False

        def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
            calls.append(("success", retval, task_id, tuple(args)))

        def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any,
                       einfo: Any) -> None:
            calls.append(("failure", type(exc).__name__, "ZeroDivisionError" in einfo.traceback))

        def after_return(self, status: str, retval: Any, task_id: str, args: Any,  # noqa: PLR0917
                         kwargs: Any, einfo: Any) -> None:
            calls.append(("after", status))

    @app.task(base=Audited)
    def div(a: int, b: int) -> float:
        return a / b

    assert isinstance(div, Audited) and div.max_retries == 1 and div.acks_late is False
    ok = div.delay(4, 2)
    assert ok.get(timeout=5) == 2
    bad = div.delay(1, 0)
    with pytest.raises(ZeroDivisionError):
        bad.get(timeout=5)
    _wait(lambda: len(calls) >= 4)
    assert calls == [("success", 2.0, ok.id, (4, 2)), ("after", "SUCCESS"),
                     ("failure", "ZeroDivisionError", True), ("after", "FAILURE")]


def test_class_based_task_registered_by_class(app: Conveyor, worker: Consumer) -> None:
    class Multiply(Task[Any, Any]):
        name = "custom.multiply"

        def run(self, a: int, b: int) -> int:
            return a * b

    task = app.register_task(Multiply)
    assert task.name == "custom.multiply" and app.tasks["custom.multiply"] is task
    assert task.delay(6, 7).get(timeout=5) == 42
    assert app.send_task("custom.multiply", (2, 3)).get(timeout=5) == 6


def test_task_class_without_run_is_refused(app: Conveyor) -> None:
    class Empty(Task[Any, Any]):
        pass

    with pytest.raises(TypeError, match="no run"):
        app.register_task(Empty)
    with pytest.raises(TypeError, match="not a subclass"):
        app.task(base=dict)  # type: ignore[arg-type]


def test_autoretry_uses_retry_kwargs_and_fires_on_retry(app: Conveyor, worker: Consumer,
                                                         recorded: list[Any]) -> None:
    seen: list[str] = []

    class Hooked(Task[Any, Any]):
        def on_retry(self, exc: BaseException | None, task_id: str, args: Any, kwargs: Any,
                     einfo: Any) -> None:
            seen.append(f"retry:{exc}")

    @app.task(base=Hooked, autoretry_for=(LookupError,), retry_kwargs={"max_retries": 2,
                                                                      "countdown": 0.05})
    def flaky() -> None:
        raise LookupError("nope")

    r = flaky.delay()
    with pytest.raises(LookupError):
        r.get(timeout=10)
    assert r.retries == 2
    assert seen == ["retry:nope", "retry:nope"]
    retries = [kw for name, kw in recorded if name == "task_retry"]
    assert len(retries) == 2 and retries[0]["request"].id == r.id
    assert isinstance(retries[0]["reason"], LookupError)


def test_signals_fire_in_order_with_celery_arguments(app: Conveyor, worker: Consumer,
                                                      recorded: list[Any]) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    r = add.apply_async((2, 3), queue="default")
    assert r.get(timeout=5) == 5
    _wait(lambda: any(n == "task_postrun" for n, _ in recorded))
    names = [n for n, _ in recorded if n not in {"worker_ready", "worker_process_init"}]
    assert names == ["before_task_publish", "after_task_publish", "task_prerun",
                     "task_success", "task_postrun"]
    kw = dict(recorded)
    assert kw["before_task_publish"]["sender"] == add.name
    assert kw["before_task_publish"]["headers"]["id"] == r.id
    assert kw["before_task_publish"]["routing_key"] == "default"
    assert kw["task_prerun"]["task_id"] == r.id and kw["task_prerun"]["args"] == [2, 3]
    assert kw["task_prerun"]["sender"] is add
    assert kw["task_success"]["result"] == 5
    assert kw["task_postrun"]["retval"] == 5 and kw["task_postrun"]["state"] == "SUCCESS"


def test_task_failure_signal_and_a_raising_receiver_changes_nothing(
        app: Conveyor, worker: Consumer, recorded: list[Any]) -> None:
    @app.task
    def boom() -> None:
        raise ValueError("bad")

    def broken(**_: Any) -> None:
        raise RuntimeError("receiver bug")

    signals.task_prerun.connect(broken)
    try:
        r = boom.delay()
        with pytest.raises(ValueError, match="bad"):
            r.get(timeout=5)
    finally:
        signals.task_prerun.disconnect(broken)
    _wait(lambda: any(n == "task_failure" for n, _ in recorded))
    failure = dict(recorded)["task_failure"]
    assert failure["task_id"] == r.id and isinstance(failure["exception"], ValueError)
    assert "ValueError" in failure["traceback"] and failure["einfo"].type is ValueError


def test_signal_sender_filter_and_decorator_form() -> None:
    sig = signals.Signal("demo")
    heard: list[Any] = []

    @sig.connect(sender="a")
    def only_a(sender: Any, **kw: Any) -> None:
        heard.append((sender, kw["x"]))

    sig.send(sender="b", x=1)
    sig.send(sender="a", x=2)
    assert heard == [("a", 2)]
    assert sig.disconnect(only_a, sender="a") and not sig.receivers


def test_ignore_result_stores_no_value(app: Conveyor, worker: Consumer) -> None:
    @app.task(ignore_result=True)
    def value() -> int:
        return 7

    r = value.delay()
    _wait(lambda: r.state == "SUCCESS")
    assert r.result is None


# -- progress ---------------------------------------------------------------------------------
def test_progress_state_is_readable_while_running_and_the_final_state_wins(
        app: Conveyor, worker: Consumer) -> None:
    gate = threading.Event()

    @app.task(bind=True)
    def long(self: Task[Any, Any]) -> str:
        self.update_state(state="PROGRESS", meta={"done": 1, "total": 2})
        gate.wait(5)
        return "finished"

    r = long.delay()
    _wait(lambda: r.state == "PROGRESS")
    assert r.info == {"done": 1, "total": 2}
    gate.set()
    assert r.get(timeout=5) == "finished"
    # A late progress write cannot replace the outcome.
    long.update_state(task_id=r.id, state="PROGRESS", meta={"late": True})
    fresh = app.AsyncResult(r.id)
    assert fresh.state == "SUCCESS" and fresh.result == "finished"


def test_update_state_refuses_terminal_and_overlong_states(app: Conveyor) -> None:
    @app.task
    def t() -> None:
        pass

    with pytest.raises(TaskOptionError, match="set by the worker"):
        t.update_state(task_id="x", state="SUCCESS")
    with pytest.raises(TaskOptionError, match="16"):
        t.update_state(task_id="x", state="P" * 17)
    with pytest.raises(TaskOptionError, match="task_id"):
        t.update_state(state="PROGRESS")


# -- revoke -----------------------------------------------------------------------------------
def test_revoked_task_is_never_run_and_reads_revoked(app: Conveyor, recorded: list[Any]) -> None:
    ran: list[int] = []

    @app.task
    def work(n: int) -> int:
        ran.append(n)
        return n

    r = work.apply_async((1,), countdown=0.5)
    r.revoke()
    keep = work.delay(2)
    consumer = Consumer(app, concurrency=1)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        assert keep.get(timeout=5) == 2
        time.sleep(1.0)
        assert r.state == "REVOKED" and ran == [2]
        assert app.broker.stats("default").ready + app.broker.stats("default").delayed == 0
        revoked = [kw for n, kw in recorded if n == "task_revoked"]
        assert revoked and revoked[0]["request"].id == r.id
        assert revoked[0]["terminated"] is False
    finally:
        consumer.stop()
        thread.join(10)


def test_a_task_revoked_after_the_workers_last_cache_refresh_still_never_runs(
        app: Conveyor, worker: Consumer, recorded: list[Any]) -> None:
    ran: list[int] = []

    @app.task
    def work(n: int) -> int:
        ran.append(n)
        return n

    worker.agent.revoked.refresh = lambda: None  # type: ignore[method-assign]  # never again
    r = work.delay(1)
    assert r.get(timeout=5) == 1
    app.control.revoke("revoked-before-send")
    before = work.apply_async((3,), task_id="revoked-before-send")
    assert work.delay(4).get(timeout=5) == 4
    _wait(lambda: app.broker.stats("default").ready + app.broker.stats("default").reserved == 0)
    assert "revoked-before-send" not in worker.runner.revoked  # type: ignore[operator]
    assert 3 not in ran and before.state == "REVOKED"
    assert [kw["request"].id for n, kw in recorded if n == "task_revoked"] == [before.id]


def test_revoke_terminate_ends_a_running_thread_task(app: Conveyor, worker: Consumer) -> None:
    state = {"cleaned": False}

    @app.task
    def spin() -> None:
        try:
            for _ in range(500):
                time.sleep(0.01)
        finally:
            state["cleaned"] = True

    r = spin.delay()
    _wait(lambda: r.state == "STARTED" or r.id in worker.runner.active)
    app.control.revoke(r.id, terminate=True)
    _wait(lambda: state["cleaned"], timeout=4)
    assert r.state == "REVOKED"


def test_expired_task_sends_task_revoked_with_expired(app: Conveyor, worker: Consumer,
                                                      recorded: list[Any]) -> None:
    @app.task
    def late() -> None:
        pass

    r = late.apply_async(expires=0.2, countdown=0.5)
    _wait(lambda: r.state == "REVOKED")
    _wait(lambda: any(n == "task_revoked" for n, _ in recorded))
    revoked = dict(recorded)["task_revoked"]
    assert revoked["expired"] is True and revoked["request"].id == r.id


def test_group_result_revoke_revokes_every_member(app: Conveyor) -> None:
    @app.task
    def item(n: int) -> int:
        return n

    group = item.map([(1,), (2,)])
    group.revoke()
    assert [r.state for r in group] == ["REVOKED", "REVOKED"]


def test_revoking_a_finished_task_keeps_its_outcome(app: Conveyor, worker: Consumer) -> None:
    @app.task
    def one() -> int:
        return 1

    r = one.delay()
    assert r.get(timeout=5) == 1
    app.control.revoke(r.id)
    assert app.AsyncResult(r.id).state == "SUCCESS"


# -- routing and priorities -------------------------------------------------------------------
def test_routes_by_name_glob_regex_and_callable_with_precedence(app: Conveyor) -> None:
    def router(name: str, args: Any, kwargs: Any, options: Any, task: Any = None,
               **kw: Any) -> Any:
        return {"queue": "from-callable", "priority": 3} if name == "z.call" else None

    app.conf.task_routes = [{"a.exact": "q-exact", "b.*": {"queue": "q-glob"},
                             re.compile(r"^c\.\d+$"): {"queue": "q-regex"}}, router]
    app.send_task("a.exact")
    assert app.broker.stats("q-exact").ready == 1  # send_task honours routes
    assert app.build_message("a.exact").queue == "q-exact"
    assert app.build_message("b.anything").queue == "q-glob"
    assert app.build_message("c.42").queue == "q-regex"
    called = app.build_message("z.call")
    assert called.queue == "from-callable" and called.priority == 3
    assert app.build_message("other").queue == "default"
    assert app.build_message("a.exact", queue="explicit").queue == "explicit"

    @app.task(name="b.own", queue="own-queue")
    def own() -> None:
        pass

    assert app.broker.stats("own-queue").ready == 0
    own.delay()
    assert app.broker.stats("own-queue").ready == 1  # the task's queue beats the route


def test_priority_is_validated(app: Conveyor) -> None:
    with pytest.raises(TaskOptionError, match="0"):
        app.build_message("x", priority=10)
    with pytest.raises(TaskOptionError):
        app.task(priority=-1)(lambda: None)


def test_memory_broker_serves_higher_priorities_first(app: Conveyor) -> None:
    @app.task
    def mark(tag: str) -> str:
        return tag

    for i in range(3):
        mark.apply_async((f"low{i}",))
    mark.apply_async(("high",), priority=9)
    mark.apply_async(("mid",), priority=5)
    got = app.broker.reserve(["default"], lease=5, limit=5)
    from conveyor.message import Message

    tags = [Message.decode(r.body, app.signer).args[0] for r in got]
    assert tags == ["high", "mid", "low0", "low1", "low2"]


def test_a_broker_without_priorities_is_never_passed_one(app: Conveyor,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from conveyor.broker import BrokerCapabilities
    from conveyor.brokers.memory import MemoryBroker

    monkeypatch.setattr(MemoryBroker, "capabilities", BrokerCapabilities(priorities=False))
    seen: list[dict[str, Any]] = []
    original = MemoryBroker.enqueue

    def enqueue(self: MemoryBroker, queue: str, message: bytes, **kw: Any) -> str:
        seen.append(kw)
        return original(self, queue, message, **kw)

    monkeypatch.setattr(MemoryBroker, "enqueue", enqueue)
    app.send_task("x", priority=9)
    assert seen == [{"delay": 0.0}]


def test_revoked_chain_parent_fails_the_rest_instead_of_leaving_it_pending(
        app: Conveyor) -> None:
    @app.task
    def step(x: int) -> int:
        return x + 1

    from conveyor import chain

    sent = chain(step.s(1), step.s()).apply_async(countdown=0.3)
    first = sent.parent
    assert first is not None
    first.revoke()
    consumer = Consumer(app, concurrency=1)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        _wait(lambda: sent.state == "FAILURE", timeout=5)
        assert first.state == "REVOKED"
        assert "revoked" in str(sent.result)
    finally:
        consumer.stop()
        thread.join(10)


# -- time limits ------------------------------------------------------------------------------
def test_soft_time_limit_raises_inside_the_task(app: Conveyor, worker: Consumer) -> None:
    @app.task(soft_time_limit=0.3)
    def slow() -> str:
        try:
            for _ in range(300):
                time.sleep(0.01)
        except SoftTimeLimitExceeded:
            return "cleaned up"
        return "not limited"

    assert slow.delay().get(timeout=5) == "cleaned up"


def test_hard_time_limit_records_failure_and_asks_to_recycle(app: Conveyor,
                                                             recorded: list[Any]) -> None:
    release = threading.Event()

    @app.task(time_limit=0.3)
    def stuck() -> str:
        release.wait(10)
        return "too late"

    consumer = Consumer(app, concurrency=2)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        r = stuck.delay()
        _wait(lambda: r.state == "FAILURE", timeout=5)
        record = r.record
        assert record is not None
        assert record.error_type == "conveyor.exceptions.TimeLimitExceeded"
        assert [a["outcome"] for a in record.attempts] == ["failure"]
        thread.join(5)
        assert not thread.is_alive() and consumer.exit_code == 75
        failure = dict(recorded)["task_failure"]
        assert failure["task_id"] == r.id and type(failure["exception"]).__name__ == (
            "TimeLimitExceeded")
    finally:
        release.set()
        consumer.stop()
    time.sleep(0.2)
    assert app.AsyncResult(r.id).state == "FAILURE"  # the late return changed nothing


# -- rate limits ------------------------------------------------------------------------------
def test_parse_rate_forms() -> None:
    assert parse_rate("10/s") == (10, 1.0)
    assert parse_rate("100/m") == (2, 1.2)
    assert parse_rate("1/h") == (1, 3600.0)
    assert parse_rate(5) == (5, 1.0)
    assert parse_rate(None) is None and parse_rate("0") is None
    with pytest.raises(ConfigurationError, match="rate_limit"):
        parse_rate("fast")


def test_rate_limiter_admits_per_window_and_queues_the_rest(app: Conveyor) -> None:
    @app.task(rate_limit="2/s")
    def limited() -> None:
        pass

    limiter = RateLimiter(app)
    now = 1000.0
    waits = [limiter.delay_for(limited, f"id{i}", now=now) for i in range(5)]
    assert waits[:2] == [0.0, 0.0]
    assert 1.0 <= waits[2] < 1.1 and 1.0 <= waits[3] < 1.1 and 2.0 <= waits[4] < 2.1
    # An id asking again (a redelivery) is not counted twice: id5 is sixth in line, not seventh.
    limiter.delay_for(limited, "id0", now=now)
    assert 2.0 <= limiter.delay_for(limited, "id5", now=now) < 2.1


def test_rate_limited_tasks_all_run_without_counted_attempts(app: Conveyor,
                                                             worker: Consumer) -> None:
    @app.task(rate_limit="5/s")
    def tick() -> float:
        return time.time()

    started = time.time()
    results = [tick.delay() for _ in range(12)]
    times = sorted(r.get(timeout=10) for r in results)
    # 12 runs at 5 per one-second window span at least two window boundaries.
    assert times[-1] - started >= 1.0
    assert all(len(r.attempts) == 1 for r in results)


# -- registry and control ---------------------------------------------------------------------
def test_registry_entry_inspect_and_control_commands(app: Conveyor, worker: Consumer) -> None:
    inspect = app.control.inspect()
    _wait(lambda: worker.hostname in inspect.workers())
    entry = inspect.workers()[worker.hostname]
    assert entry["concurrency"] == 2 and entry["queues"] == ["default"]
    assert entry["pid"] > 0 and entry["pool"] == "threads"
    gate = threading.Event()

    @app.task
    def hold() -> None:
        gate.wait(5)

    r = hold.delay()
    _wait(lambda: any(a["id"] == r.id for a in inspect.active()[worker.hostname]), timeout=5)
    gate.set()
    replies = app.control.pool_grow(2, reply=True, timeout=5)
    assert replies[worker.hostname] == {"ok": "pool size is now 4"}
    assert worker.concurrency == 4
    app.control.pool_shrink(1, reply=True, timeout=5)
    assert worker.concurrency == 3
    replies = app.control.rate_limit(hold.name, "10/m", reply=True, timeout=5)
    assert hold.rate == parse_rate("10/m")
    app.control.shutdown()
    _wait(worker._stop.is_set, timeout=5)
    assert control_queue(worker.hostname).startswith("conveyor-control-")


def test_inspect_reserved_scheduled_revoked_and_query_task(app: Conveyor,
                                                           worker: Consumer) -> None:
    inspect = app.control.inspect()
    _wait(lambda: worker.hostname in inspect.workers())
    gate = threading.Event()

    @app.task
    def hold() -> None:
        gate.wait(10)

    @app.task
    def quick() -> None:
        pass

    # A worker prefetches beyond one message per thread only once its tasks proved short.
    assert all(r.get(timeout=10) is None for r in [quick.delay() for _ in range(10)])
    try:
        running = [hold.delay() for _ in range(2)]  # both threads busy
        _wait(lambda: len(inspect.active()[worker.hostname]) == 2)
        waiting = [hold.delay() for _ in range(2)]  # prefetched, not started

        def reserved_ids() -> set[str]:
            return {t["id"] for t in inspect.reserved()[worker.hostname]}

        _wait(lambda: reserved_ids() == {r.id for r in waiting})
        held = inspect.reserved()[worker.hostname]
        assert all(t["task"] == hold.name and t["queue"] == "default" and t["delivery"] == 1
                   for t in held)
        found = inspect.query_task(running[0].id, [waiting[0].id], "no-such-id")
        assert set(found[worker.hostname]) == {running[0].id, waiting[0].id}
        assert found[worker.hostname][running[0].id][0] == "active"
        assert found[worker.hostname][waiting[0].id] == [
            "reserved", next(t for t in held if t["id"] == waiting[0].id)]
        assert inspect.scheduled() == {worker.hostname: []}
        assert "reserved" not in inspect.stats()[worker.hostname]
        waiting[1].revoke()
        assert waiting[1].id in inspect.revoked()[worker.hostname]
    finally:
        gate.set()
    assert all(r.get(timeout=10) is None for r in [*running, waiting[0]])
    _wait(lambda: inspect.reserved()[worker.hostname] == [], timeout=10)


def test_sql_broker_migrates_a_v1_table_to_priorities(tmp_path: Any) -> None:
    import sqlalchemy as sa

    from conveyor.registry import broker_from_url

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # the v1 schema, as an older conveyor created it
        conn.execute(sa.text(
            "CREATE TABLE conveyor_messages (id VARCHAR(40) PRIMARY KEY, queue VARCHAR(255) "
            "NOT NULL, body BLOB NOT NULL, available_at FLOAT NOT NULL, lease_token "
            "VARCHAR(32), attempts INTEGER NOT NULL, enqueued_at FLOAT NOT NULL)"))
        conn.execute(sa.text("CREATE INDEX conveyor_messages_claim ON conveyor_messages "
                             "(queue, available_at, id)"))
        conn.execute(sa.text("INSERT INTO conveyor_messages VALUES ('0', 'q', x'6f6c64', 0, "
                             "NULL, 0, 0)"))
        conn.execute(sa.text("CREATE TABLE conveyor_schema (component VARCHAR(32) PRIMARY KEY,"
                             " version INTEGER NOT NULL)"))
        conn.execute(sa.text("INSERT INTO conveyor_schema VALUES ('broker', 1)"))
    broker = broker_from_url(url)
    try:
        broker.enqueue("q", b"new", priority=9)  # type: ignore[call-arg]
        got = broker.reserve(["q"], lease=5, limit=2)
        assert [r.body for r in got] == [b"new", b"old"]
        assert broker.info()["schema"].endswith("(current)")
    finally:
        broker.close()
        engine.dispose()


def test_inspect_and_control_commands_reach_a_live_worker(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import json
    import sys
    import textwrap
    import uuid

    from click.testing import CliRunner

    from conveyor.cli import cli

    name = f"ctlapp_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
        from conveyor import Conveyor
        app = Conveyor("ctl", broker="memory://{name}", backend="memory://{name}",
                       broker_visibility_timeout=1.0, worker_poll_wait=0.2)

        @app.task
        def add(a, b):
            return a + b
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    consumer = Consumer(module.app, concurrency=1, hostname="w1\x1b[31m")
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()

    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(cli, ["-A", f"{name}:app", *args], catch_exceptions=False)
        return result.exit_code, result.output

    try:
        _wait(lambda: bool(module.app.control.inspect().workers()))
        code, output = run("inspect", "workers", "--json")
        assert code == 0 and list(json.loads(output)) == ["w1\x1b[31m"]
        code, output = run("inspect", "workers")
        assert code == 0 and "w1\\x1b[31m" in output and "\x1b[31m" not in output
        code, output = run("inspect", "registered", "--json")
        assert f"{name}.add" in json.loads(output)["w1\x1b[31m"]
        code, output = run("inspect", "reserved", "--json")
        assert code == 0 and json.loads(output) == {"w1\x1b[31m": []}
        code, output = run("inspect", "scheduled")
        assert code == 0 and "1 live workers hold no scheduled tasks" in output
        module.app.control.revoke("gone[/x]\x1b[2J")
        code, output = run("inspect", "revoked")
        assert code == 0 and "gone[/x]\\x1b[2J" in output and "\x1b[2J" not in output
        code, output = run("inspect", "query-task", "nothing", "--json")
        assert code == 0 and json.loads(output) == {"w1\x1b[31m": {}}
        code, output = run("control", "pool-grow", "2", "--json")
        assert json.loads(output) == {"w1\x1b[31m": {"ok": "pool size is now 3"}}
        code, output = run("control", "rate-limit", f"{name}.add", "5/s", "--json")
        assert module.add.rate == (5, 1.0)
        code, output = run("control", "shutdown")
        _wait(lambda: not thread.is_alive(), timeout=10)
        assert module.app.control.inspect().workers() == {}
    finally:
        consumer.stop()
        thread.join(10)
        sys.modules.pop(name, None)


def test_control_inspect_revoke_and_signals_take_celerys_call_shapes(
        app: Conveyor, worker: Consumer, tmp_path: Any) -> None:
    # The calls a Celery app makes, positional and keyword, exactly as Celery spells them.
    inspect = app.control.inspect(timeout=1.0)
    _wait(lambda: worker.hostname in inspect.workers())
    assert app.control.ping(timeout=0.5) == [{worker.hostname: {"ok": "pong"}}]
    # One name given as a string is that worker, not a set of its letters.
    assert list(app.control.inspect(worker.hostname).workers()) == [worker.hostname]
    assert app.control.inspect(["nobody@nowhere"]).active(safe=True) == {}
    assert worker.hostname in inspect.registered("rate_limit")
    assert inspect.registered_tasks() == inspect.registered()

    @app.task
    def limited() -> None: ...

    replies = app.control.rate_limit(limited.name, rate_limit="10/m",
                                     destination=[worker.hostname], reply=True, timeout=5)
    assert replies == {worker.hostname: {"ok": f"rate limit of {limited.name} set to 10/m"}}
    assert limited.rate == parse_rate("10/m")
    replies = app.control.pool_grow(1, [worker.hostname], reply=True, timeout=5)
    assert replies[worker.hostname] == {"ok": "pool size is now 3"}

    heard: list[str] = []

    def on_revoked(sender: Any = None, request: Any = None, **kw: Any) -> None:
        heard.append(request.id)

    signals.task_revoked.connect(on_revoked, weak=False)
    try:
        assert signals.task_revoked.has_listeners()
        gate = threading.Event()

        @app.task
        def later() -> None:
            gate.wait(5)

        r = later.apply_async(countdown=0.5)
        r.revoke(terminate=False, wait=True, timeout=1.0)
        app.control.revoke([r.id], None, False, "SIGKILL")
        assert r.state == "REVOKED"
        _wait(lambda: heard == [r.id])
    finally:
        assert signals.task_revoked.disconnect(on_revoked)
    app.control.shutdown([worker.hostname])
    _wait(worker._stop.is_set, timeout=5)

    # config_from_object(silent=True) loads nothing from a module that is not there.
    app.config_from_object("no_such_settings_module_x9", silent=True)
    with pytest.raises(ImportError):
        app.config_from_object("no_such_settings_module_x9")


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_retry_takes_celerys_arguments_new_args_queue_and_priority(
        store: str, tmp_path: Any, request: pytest.FixtureRequest) -> None:
    import uuid

    url = (f"sqlite:///{tmp_path / 'retry.db'}" if store == "sqlite"
           else request.getfixturevalue("redis_url"))
    queue = f"r-{uuid.uuid4().hex[:8]}"
    app = Conveyor("retryshape", broker=url, backend=url, task_default_queue=queue,
                   broker_visibility_timeout=2.0, worker_poll_wait=0.2)
    seen: list[tuple[Any, ...]] = []

    @app.task(bind=True, max_retries=2)
    def moving(self: Any, n: int, *, tag: str = "first") -> str:
        seen.append((n, tag, self.request.queue, self.request.retries))
        if self.request.retries == 0:
            # Positional, as Celery code writes it: args, kwargs, exc.
            raise self.retry([n + 1], {"tag": "second"}, KeyError("again"), countdown=0,
                             queue=queue + "-slow", priority=5)
        return f"{n}:{tag}"

    with pytest.raises(TaskOptionError, match="throw=False"):
        moving.retry(throw=False)
    consumer = Consumer(app, queues=[queue, queue + "-slow"], concurrency=1)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        assert moving.delay(1).get(timeout=20) == "2:second"
    finally:
        consumer.stop()
        thread.join(10)
    assert seen == [(1, "first", queue, 0), (2, "second", queue + "-slow", 1)]
    # The same in this process (eager): the next attempt gets the new arguments.
    seen.clear()
    assert moving.apply((1,)).get() == "2:second"
    app.close()
