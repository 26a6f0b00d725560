"""Poison messages, duplicates that are not redeliveries, and results held hostage by a dead
broker: each test reproduces a way a message looped, ran twice or was lost, on real servers."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.app import Outgoing
from conveyor.backend import StoredRecord
from conveyor.exceptions import TaskOptionError, ValueRefusedError
from conveyor.worker import Consumer, TaskRunner
from conveyor.worker.completer import Completer, Completion
from tests.servers.redis import redis_server

pytestmark = pytest.mark.timeout(120)


def eventually(check: Callable[[], Any], *, timeout: float = 20.0) -> Any:
    """Poll ``check`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s: {check}")
        time.sleep(0.05)


def make_app(broker: str | None = None, backend: str = "", **settings: Any) -> Conveyor:
    name = uuid.uuid4().hex
    settings.setdefault("broker_visibility_timeout", 1.0)
    return Conveyor("hardening", broker=broker or f"memory://{name}",
                    backend=backend or f"memory://{name}",
                    task_default_queue=f"q-{name[:10]}", worker_poll_wait=0.2, **settings)


def running(app: Conveyor, **options: Any) -> Iterator[Consumer]:
    consumer = Consumer(app, concurrency=options.pop("concurrency", 2), **options)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        yield consumer
    finally:
        consumer.stop()
        thread.join(20)
        app.close()


def idle(app: Conveyor) -> bool:
    stats = app.broker.stats(app.conf.task_default_queue)
    return stats.ready + stats.reserved + stats.delayed == 0


def dead(app: Conveyor) -> list[Any]:
    return app.broker.dead_letters(app.conf.task_default_queue)


# -- messages that loop for ever ------------------------------------------------------------

def test_a_result_over_mysql_max_allowed_packet_fails_once_and_is_dead_lettered(
        mysql_url: str) -> None:
    app = make_app(backend=mysql_url)
    runs: list[int] = []

    @app.task
    def huge() -> str:
        runs.append(1)
        return "x" * (20 << 20)

    result = huge.delay()
    for _ in running(app):
        with pytest.raises(Exception, match="max_allowed_packet"):
            result.get(timeout=30)
        [letter] = eventually(lambda: dead(app))
        time.sleep(2.5)  # two leases: a looping message would have been delivered again
        assert runs == [1]
        assert "outcome refused" in letter.reason
        record = app.record(result.id)
        assert record is not None and record.state == "FAILURE" and record.result is None
        stats = app.broker.stats(app.conf.task_default_queue)
        assert (stats.ready, stats.reserved, stats.delayed) == (0, 0, 0)


@pytest.mark.parametrize("task_id", ["P" * 300, "nul\x00inside", "line\nbreak"])
def test_task_ids_no_backend_can_key_are_refused_at_send_time(task_id: str) -> None:
    app = make_app()

    @app.task
    def noop() -> None: ...

    with pytest.raises(TaskOptionError, match=r"255|control character"):
        noop.apply_async(task_id=task_id)
    assert noop.apply_async(task_id="x" * 255).id == "x" * 255


# MariaDB stores a NUL in a VARCHAR: only PostgreSQL refuses that one.
# A long id can still be looked up (the body runs, its outcome is refused); one with a NUL
# cannot even be read, so it is dead-lettered at pick-up without running.
@pytest.mark.parametrize(("server", "task_id", "ran"), [
    ("postgres", "P" * 5000, [1]), ("mysql", "P" * 5000, [1]),
    ("postgres", "nul\x00inside", [])],
    ids=["postgres-long", "mysql-long", "postgres-nul"])
def test_a_message_whose_id_the_backend_refuses_is_dead_lettered_not_redelivered(
        request: pytest.FixtureRequest, server: str, task_id: str, ran: list[int]) -> None:
    app = make_app(backend=request.getfixturevalue(f"{server}_url"))
    runs: list[int] = []

    @app.task
    def work() -> int:
        runs.append(1)
        return 1

    # Sent by something that skips the send-time check (another client, an old version).
    out = app.build_message(work.name, [], {})
    app.enqueue([Outgoing(replace(out.message, id=task_id), out.queue, 0.0)])
    for _ in running(app):
        [letter] = eventually(lambda: dead(app))
        time.sleep(2.5)
        assert runs == ran
        assert "refused" in letter.reason
        stats = app.broker.stats(app.conf.task_default_queue)
        assert (stats.ready, stats.reserved, stats.delayed) == (0, 0, 0)


def test_a_message_delivered_more_than_broker_max_deliveries_is_dead_lettered() -> None:
    app = make_app(broker_max_deliveries=3)
    ran: list[int] = []

    @app.task
    def work() -> None:
        ran.append(1)

    result = work.delay()
    queue = app.conf.task_default_queue
    for _ in range(3):  # three deliveries whose worker died before finishing
        [res] = app.broker.reserve([queue], lease=0.05)
        time.sleep(0.1)
    [res] = app.broker.reserve([queue], lease=5)
    assert res.attempts == 4
    TaskRunner(app, hostname="test").handle(res)
    assert ran == []
    [letter] = dead(app)
    assert "delivered 4 times" in letter.reason and "broker_max_deliveries=3" in letter.reason
    record = app.record(result.id)
    assert record is not None and record.state == "FAILURE"
    assert [a["outcome"] for a in record.attempts] == ["lost", "lost", "lost"]
    assert app.broker.stats(queue).reserved == 0


def test_a_refused_record_does_not_sink_the_completer_batch(mysql_url: str) -> None:
    app = make_app(backend=mysql_url)
    queue = app.conf.task_default_queue
    for _ in range(3):
        app.broker.enqueue(queue, b"{}")
    held = app.broker.reserve([queue], lease=30, limit=3)
    ids = [uuid.uuid4().hex for _ in held]
    sizes = [10, 20 << 20, 10]
    refused: list[tuple[str, ValueRefusedError]] = []
    released: list[str] = []
    completer = Completer(app, release=lambda r: released.append(r.message_id),
                          reliably=lambda op: op(), capacity=10,
                          refused=lambda r, exc: refused.append((r.message_id, exc)))
    for res, task_id, size in zip(held, ids, sizes, strict=True):
        completer.submit(Completion(res, [], StoredRecord(task_id, "SUCCESS", b"x" * size)))
    completer.start()
    completer.stop(timeout=60)
    assert [m for m, _ in refused] == [held[1].message_id]
    assert "max_allowed_packet" in str(refused[0][1])
    assert app.backend.get(ids[0]) is not None and app.backend.get(ids[2]) is not None
    assert sorted(released) == sorted(r.message_id for r in held)
    assert app.broker.stats(queue).reserved == 1  # the refused one is left to its handler


def test_one_refused_pending_record_does_not_sink_the_batch(postgres_url: str) -> None:
    app = make_app(backend=postgres_url)
    good = uuid.uuid4().hex
    app.pending.add([StoredRecord("nul\x00inside", "PENDING", b"{}"),
                     StoredRecord(good, "PENDING", b'{"task_id":"%s"}' % good.encode())])
    app.flush_pending()
    assert app.backend.get(good) is not None
    app.close()


# -- duplicates that are not redeliveries ---------------------------------------------------

def test_a_duplicate_send_of_a_finished_task_never_runs_again() -> None:
    app = make_app()
    runs: list[int] = []

    @app.task(bind=True, max_retries=5)
    def flaky(self: Any) -> str:
        runs.append(1)
        time.sleep(0.1)  # longer than the STARTED writer's linger: its STARTED is written
        if len(runs) > 1:
            raise self.retry(countdown=0)
        return "first"

    task_id = uuid.uuid4().hex
    for _ in running(app):
        assert flaky.apply_async(task_id=task_id).get(timeout=10) == "first"
        flaky.apply_async(task_id=task_id)  # e.g. a publish retry after a lost reply
        eventually(lambda: idle(app))
        time.sleep(1.0)
        assert len(runs) == 1  # the copy was acked at pick-up, its body never ran
        record = app.record(task_id)
        assert record is not None and record.state == "SUCCESS"
        assert not dead(app)


@pytest.mark.parametrize("store", ["redis", "postgres"])
def test_a_backlog_is_stored_and_acked_in_batches_besides_the_pickup_check(
        store: str, request: pytest.FixtureRequest) -> None:
    # The pick-up read makes a reserved batch arrive a round trip later; its finished tasks
    # must still be stored and acked together, not one by one from the executors (which
    # cost more than the check itself: bench/README.md, the pick-up check).
    url = request.getfixturevalue(f"{store}_url")
    app = make_app(broker=url, backend=url, broker_visibility_timeout=10.0)
    calls = {"store": 0, "store_many": 0, "ack": 0, "ack_many": 0}

    def counted(obj: Any, name: str) -> None:
        real = getattr(obj, name)

        def call(*args: Any, **kw: Any) -> Any:
            calls[name] += 1
            return real(*args, **kw)

        setattr(obj, name, call)

    @app.task
    def noop(i: int) -> int:
        return i

    n = 200
    results = noop.map([(i,) for i in range(n)])
    app.flush_pending()
    for obj, names in ((app.backend, ("store", "store_many")), (app.broker, ("ack", "ack_many"))):
        for name in names:
            counted(obj, name)
    for _ in running(app, concurrency=2):
        eventually(lambda: all(r.state == "SUCCESS" for r in results), timeout=60)
    # Only a task finishing with nothing else held stores its own record (the latency path).
    assert calls["store"] <= 5, calls
    assert calls["store_many"] + calls["store"] <= n / 3, calls
    assert calls["ack_many"] + calls["ack"] <= n / 3, calls


def test_a_delivery_with_history_is_checked_before_it_runs() -> None:
    app = make_app()
    runs: list[int] = []

    @app.task
    def once() -> None:
        runs.append(1)

    for _ in running(app):
        result = once.delay()
        result.get(timeout=10)
        out = app.build_message(once.name, [], {}, task_id=result.id)
        replayed = replace(out.message, history=[{"number": 1, "outcome": "success"}])
        app.enqueue([Outgoing(replayed, out.queue, 0.0)])
        eventually(lambda: idle(app))
        assert runs == [1]


# -- results held hostage by a dead broker --------------------------------------------------

def test_results_are_stored_while_the_broker_is_down(tmp_path: Any) -> None:
    with redis_server() as server:
        app = make_app(broker=server.url, backend=f"sqlite:///{tmp_path / 'r.db'}",
                       broker_visibility_timeout=2.0)

        @app.task
        def nap(seconds: float) -> float:
            time.sleep(seconds)
            return seconds

        naps = [0.8, 1.1, 1.4, 1.7]
        results = [nap.delay(s) for s in naps]
        for _ in running(app, concurrency=4):
            eventually(lambda: all(r.state == "STARTED" for r in results), timeout=10)
            server.stop()
            # The backend stayed up: every result lands as its task finishes.
            eventually(lambda: all(r.state == "SUCCESS" for r in results), timeout=6)
            server.start()
            assert [r.get(timeout=30) for r in results] == naps


def test_a_send_rides_out_a_broker_restart_of_two_seconds() -> None:
    with redis_server() as server:
        app = make_app(broker=server.url)

        @app.task
        def noop() -> None: ...

        noop.delay()
        server.stop()
        threading.Timer(2.0, server.start).start()
        began = time.monotonic()
        noop.delay()  # retried within broker_publish_retry_timeout
        assert time.monotonic() - began > 1.5
        time.sleep(0.5)
        app.close()


def test_a_producer_exiting_right_after_delay_leaves_its_pending_record(redis_url: str) -> None:
    import subprocess
    import sys

    from conveyor.registry import backend_from_url

    script = (
        "import sys\n"
        "from conveyor import Conveyor\n"
        "app = Conveyor('p', broker='memory://exit', backend=sys.argv[1])\n"
        "@app.task\n"
        "def t(): pass\n"
        "print(t.delay().id)\n")
    done = subprocess.run([sys.executable, "-c", script, redis_url], capture_output=True,
                          text=True, timeout=60, check=True)
    assert "could not flush" not in done.stderr
    backend = backend_from_url(redis_url)
    try:
        record = backend.get(done.stdout.strip())
        assert record is not None and record.state == "PENDING"
    finally:
        backend.close()


def test_no_lease_lost_warning_for_messages_just_acked(
        caplog: pytest.LogCaptureFixture, redis_url: str) -> None:
    # A heartbeat every 5 ms meets many messages acked between its snapshot and its extend.
    app = make_app(broker=redis_url, worker_heartbeat_interval=0.005)

    @app.task
    def quick(i: int) -> int:
        time.sleep(0.002)
        return i

    results = [quick.delay(i) for i in range(2000)]
    with caplog.at_level("WARNING", logger="conveyor.worker"):
        for _ in running(app, concurrency=4):
            assert [r.get(timeout=60) for r in results] == list(range(2000))
    assert not [r for r in caplog.records if "lease of" in r.getMessage()]


def test_a_lease_really_lost_is_still_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(worker_heartbeat_interval=0.1)

    @app.task
    def slow() -> None:
        time.sleep(2.5)

    result = slow.delay()
    with caplog.at_level("WARNING", logger="conveyor.worker"):
        for worker in running(app, concurrency=1):
            eventually(lambda: result.state == "STARTED", timeout=10)
            [held] = list(worker._held.values())
            app.broker.ack(held)  # as if its lease had lapsed and another worker took it
            eventually(lambda: [r for r in caplog.records if "lease of" in r.getMessage()],
                       timeout=5)


def test_a_50_mb_argument_on_mariadb_is_refused_once_as_too_large(mysql_url: str) -> None:
    app = make_app(broker=mysql_url)

    @app.task
    def takes(blob: str) -> None: ...

    began = time.monotonic()
    with pytest.raises(ValueRefusedError, match="max_allowed_packet"):
        takes.delay("x" * (50 << 20))
    assert time.monotonic() - began < 5  # not retried as an outage
    app.close()


def test_redis_out_of_memory_is_a_refusal_not_an_outage() -> None:
    from conveyor.registry import backend_from_url, broker_from_url

    with redis_server("--maxmemory", "3mb", "--maxmemory-policy", "noeviction") as server:
        backend = backend_from_url(server.url)
        broker = broker_from_url(server.url)
        try:
            big = [StoredRecord(f"big-{i}", "SUCCESS", b"x" * (1 << 20)) for i in range(8)]
            with pytest.raises(ValueRefusedError, match="OOM"):
                backend.store_many(big, ttl=60)
            with pytest.raises(ValueRefusedError, match="OOM"):
                broker.enqueue_many("q", [b"x" * (1 << 20)] * 2)
        finally:
            backend.close()
            broker.close()
