"""Redis-specific guarantees of the Redis broker and result backend, on real servers."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from conveyor.backend import StoredRecord
from conveyor.backends.redis import RedisResultBackend
from conveyor.brokers.redis import RedisBroker
from conveyor.exceptions import AuthenticationError, ConnectionLostError, DriverError
from conveyor.registry import backend_from_url, broker_from_url
from conveyor.url import URL
from tests.servers import free_port
from tests.servers.redis import RedisServer, redis_server

redis = pytest.importorskip("redis")


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def broker(redis_url: str, prefix: str) -> Iterator[RedisBroker]:
    made = RedisBroker(URL(redis_url), prefix=prefix)
    yield made
    made.close()


@pytest.fixture
def backend(redis_url: str, prefix: str) -> Iterator[RedisResultBackend]:
    made = RedisResultBackend(URL(redis_url), prefix=prefix)
    yield made
    made.close()


@pytest.fixture(autouse=True)
def raw(redis_url: str, prefix: str) -> Iterator[redis.Redis]:
    """A plain client on the session server; deletes the test's keys afterwards."""
    client = redis.Redis.from_url(redis_url)
    yield client
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def private_server() -> Iterator[RedisServer]:
    """A server of this test's own, for counting commands and for restarts."""
    with redis_server() as server:
        yield server


def command_calls(client: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): stats["calls"]
            for name, stats in client.info("commandstats").items()
            if name not in ("cmdstat_config", "cmdstat_info")}


# -- broker ---------------------------------------------------------------------------------
def test_a_queues_keys_follow_the_documented_layout_in_one_hash_slot(
        broker: RedisBroker, raw: redis.Redis, prefix: str) -> None:
    broker.enqueue("jobs", b"now")
    broker.enqueue("jobs", b"later", delay=60)
    [held] = broker.reserve(["jobs"], lease=60, limit=2)
    broker.enqueue("jobs", b"bad")
    [bad] = broker.reserve(["jobs"], lease=60)
    broker.dead_letter(bad, reason="broken")
    keys = {k.decode() for k in raw.scan_iter(match=f"{prefix}*")}
    tagged = {f"{prefix}{{jobs}}:{s}" for s in (
        "delayed", "reserved", "body", "attempts", "dead", "deadbody", "reason")}
    assert tagged <= keys
    assert keys - tagged <= {f"{prefix}{{jobs}}:ready", f"{prefix}{{jobs}}:wake",
                             f"{prefix}queues"}
    assert raw.hget(f"{prefix}{{jobs}}:body", held.message_id) == b"now"
    assert raw.hget(f"{prefix}{{jobs}}:attempts", held.message_id) == b"1"
    assert raw.zscore(f"{prefix}{{jobs}}:reserved", held.message_id) is not None
    assert raw.zcard(f"{prefix}{{jobs}}:delayed") == 1
    assert raw.hget(f"{prefix}{{jobs}}:reason", bad.message_id) == b"broken"
    assert raw.smembers(f"{prefix}queues") == {b"jobs"}
    assert broker.queues() == ["jobs"]


def test_an_expired_lease_is_recovered_by_reserve_itself_without_a_daemon(
        broker: RedisBroker, redis_url: str, prefix: str) -> None:
    message_id = broker.enqueue("jobs", b"orphan")
    broker.reserve(["jobs"], lease=0.2)  # its consumer "dies": no ack, no extend
    time.sleep(0.3)
    assert broker.stats("jobs").ready == 1  # counted as ready before anyone moved it
    other = RedisBroker(URL(redis_url), prefix=prefix)
    [again] = other.reserve(["jobs"], lease=60)
    assert (again.message_id, again.attempts) == (message_id, 2)
    stats = other.stats("jobs")
    assert (stats.ready, stats.reserved) == (0, 1)
    other.close()


def test_an_idle_reserve_blocks_instead_of_polling(private_server: RedisServer) -> None:
    broker = RedisBroker(URL(private_server.url))
    counter = redis.Redis.from_url(private_server.url)
    broker.reserve(["idle"], lease=1)  # loads the script
    counter.config_resetstat()
    started = time.monotonic()
    assert broker.reserve(["idle", "other"], lease=1, wait=1.0) == []
    assert 0.95 <= time.monotonic() - started < 1.5
    calls = command_calls(counter)
    assert calls.get("evalsha", 0) <= 2
    assert calls.get("blpop", 0) <= 2
    broker.close()
    counter.close()


def test_a_blocked_reserve_wakes_when_a_delayed_message_comes_due(
        private_server: RedisServer) -> None:
    broker = RedisBroker(URL(private_server.url))
    counter = redis.Redis.from_url(private_server.url)
    broker.enqueue("soon", b"due", delay=0.4)
    broker.stats("soon")  # the send's reply is read here, not counted below
    counter.config_resetstat()
    started = time.monotonic()
    [got] = broker.reserve(["soon"], lease=1, wait=5.0)
    waited = time.monotonic() - started
    assert got.body == b"due"
    assert 0.35 <= waited < 0.6
    calls = command_calls(counter)
    assert calls["evalsha"] <= 3  # reserve, block until due, reserve again
    assert calls["blpop"] <= 2
    broker.close()
    counter.close()


def test_a_delayed_message_enqueued_during_a_wait_shortens_it(
        broker: RedisBroker, redis_url: str, prefix: str) -> None:
    producer = RedisBroker(URL(redis_url), prefix=prefix)
    timer = threading.Timer(0.1, producer.enqueue, ("jobs", b"soon"), {"delay": 0.3})
    timer.start()
    started = time.monotonic()
    got = broker.reserve(["jobs"], lease=60, wait=3.0)
    timer.join()
    assert [r.body for r in got] == [b"soon"]
    assert time.monotonic() - started < 1.0
    producer.close()


def test_threads_racing_to_reserve_never_get_the_same_message(
        redis_url: str, prefix: str, raw: redis.Redis) -> None:
    producer = RedisBroker(URL(redis_url), prefix=prefix)
    sent = set(producer.enqueue_many("race", [b"m%d" % i for i in range(600)]))
    consumer = RedisBroker(URL(redis_url), prefix=prefix)  # one pool shared by the threads
    got: list[str] = []
    lock = threading.Lock()

    def drain() -> None:
        while True:
            batch = consumer.reserve(["race"], lease=60, wait=0.2, limit=7)
            if not batch:
                return
            with lock:
                got.extend(r.message_id for r in batch)

    threads = [threading.Thread(target=drain) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == len(set(got)) == 600
    assert set(got) == sent
    producer.close()
    consumer.close()


def test_enqueue_many_is_one_script_call_per_thousand_messages(
        private_server: RedisServer) -> None:
    broker = RedisBroker(URL(private_server.url))
    counter = redis.Redis.from_url(private_server.url)
    broker.enqueue_many("bulk", [b"first"])  # loads the script, remembers the queue
    counter.config_resetstat()
    broker.enqueue_many("bulk", [b"x"] * 2500)
    calls = command_calls(counter)
    assert calls["evalsha"] == 3  # the round trips; the rest runs inside the script
    assert "sadd" not in calls
    assert broker.stats("bulk").ready == 2501
    broker.close()
    counter.close()


def test_a_tls_url_is_accepted_by_the_parser() -> None:
    url = URL("rediss://:s3cret@127.0.0.1:6390/2?ssl_cert_reqs=none")
    broker = RedisBroker(url)  # no connection is made until first use
    backend = RedisResultBackend(url)
    for client in (broker._client, backend._client):
        pool = client.connection_pool
        assert pool.connection_class is redis.SSLConnection
        assert pool.connection_kwargs["db"] == 2
    assert "s3cret" not in repr(broker)
    assert "s3cret" not in repr(backend)


def test_an_unreachable_server_raises_connection_lost_naming_the_masked_url() -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    broker = broker_from_url(url)
    backend = backend_from_url(url)
    started = time.monotonic()
    for call in (broker.ping, lambda: broker.enqueue("q", b"x"),
                 lambda: broker.reserve(["q"], lease=1), backend.ping,
                 lambda: backend.get("id")):
        with pytest.raises(ConnectionLostError) as info:
            call()
        assert "hunter2" not in str(info.value)
        assert f"redis://:***@127.0.0.1:{url.rsplit(':', 1)[1]}" in str(info.value)
        assert isinstance(info.value.__cause__, redis.ConnectionError)
    assert time.monotonic() - started < 5.0


def test_bad_credentials_and_a_missing_database_raise_authentication_error() -> None:
    with redis_server("--requirepass", "right") as server:
        with pytest.raises(AuthenticationError) as info:
            broker_from_url(f"redis://:n0tTheP4ss@127.0.0.1:{server.port}/0").ping()
        assert "n0tTheP4ss" not in str(info.value)
        with pytest.raises(AuthenticationError):
            backend_from_url(f"redis://127.0.0.1:{server.port}/0").get("id")
        with pytest.raises(AuthenticationError):
            backend_from_url(f"redis://:right@127.0.0.1:{server.port}/9999").ping()
        broker_from_url(f"redis://:right@127.0.0.1:{server.port}/0").ping()


def test_the_broker_survives_a_server_restart(private_server: RedisServer) -> None:
    broker = RedisBroker(URL(private_server.url))
    broker.enqueue("q", b"before")
    private_server.stop()
    with pytest.raises(ConnectionLostError):
        broker.ping()
    private_server.start()  # same port; no persistence, so the queue is empty again
    broker.enqueue("q", b"after")  # the pool reconnects; the script is loaded again
    # "after" went to a fresh connection, not the one the restart closed: another client
    # sees it although this one never read the reply.
    other = RedisBroker(URL(private_server.url))
    got = other.reserve(["q"], lease=1, limit=10, wait=2.0)
    assert [r.body for r in got] == [b"after"]
    other.close()
    broker.close()


_SEND_AND_DIE = """
import os, signal, sys
from conveyor.brokers.redis import RedisBroker
from conveyor.url import URL
broker = RedisBroker(URL(sys.argv[1]), prefix=sys.argv[2])
broker.enqueue("q", b"warm")  # the connection is up and the first reply read below
broker.stats("q")
broker.enqueue("q", b"last words")  # returns before Redis answers...
os.kill(os.getpid(), signal.SIGKILL)  # ...and no exit handler runs
"""


def test_a_send_survives_the_producer_being_killed_right_after(redis_url: str,
                                                               prefix: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _SEND_AND_DIE, redis_url, prefix],
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    broker = RedisBroker(URL(redis_url), prefix=prefix)
    got = broker.reserve(["q"], lease=1, limit=10, wait=2.0)
    assert [r.body for r in got] == [b"warm", b"last words"]
    broker.close()


def test_a_send_refused_by_redis_is_raised_on_the_next_call_not_lost(
        private_server: RedisServer) -> None:
    broker = RedisBroker(URL(private_server.url))
    admin = redis.Redis.from_url(private_server.url)
    broker.enqueue("q", b"fits")
    broker.stats("q")
    admin.config_set("maxmemory", 1)  # from now on Redis refuses writes (OOM)
    broker.enqueue("q", b"refused")  # returns: the reply is not read yet
    with pytest.raises(DriverError, match=r"earlier message was refused.*OOM"):
        broker.stats("q")
    admin.config_set("maxmemory", 0)
    assert broker.stats("q").ready == 1  # the refusal was reported once, not repeated
    broker.close()
    admin.close()


# -- result backend ----------------------------------------------------------------------------
def test_results_expire_natively_by_redis_ttl(
        backend: RedisResultBackend, raw: redis.Redis, prefix: str) -> None:
    assert backend.store(StoredRecord("t1", "SUCCESS", b"42"), ttl=0.3)
    assert 0 < raw.pttl(f"{prefix}result:t1") <= 300
    assert 0 < raw.pttl(f"{prefix}done:t1") <= 300  # never outlives the record
    assert backend.store(StoredRecord("t2", "STARTED", b""), ttl=None)
    assert raw.pttl(f"{prefix}result:t2") == -1
    time.sleep(0.4)
    assert backend.get("t1") is None
    assert backend.purge_expired() == 0
    assert backend.capabilities.native_expiry
    assert backend.capabilities.push_wait


def test_wait_wakes_within_milliseconds_of_the_store(
        backend: RedisResultBackend, redis_url: str, prefix: str) -> None:
    writer = RedisResultBackend(URL(redis_url), prefix=prefix)
    lags = []
    for i in range(5):
        task_id = f"w{i}"
        stored_at: list[float] = []

        def store(task_id: str = task_id, stored_at: list[float] = stored_at) -> None:
            writer.store(StoredRecord(task_id, "SUCCESS", b"ok"), ttl=60)
            stored_at.append(time.perf_counter())

        timer = threading.Timer(0.05, store)
        timer.start()
        record = backend.wait(task_id, timeout=2)
        woke_at = time.perf_counter()
        timer.join()
        assert record is not None
        assert record.state == "SUCCESS"
        lags.append(woke_at - stored_at[0])
    assert sorted(lags)[2] < 0.01, lags  # the median; typically about a millisecond
    writer.close()


def test_one_store_wakes_every_waiter_of_the_id(
        backend: RedisResultBackend) -> None:
    results: list[StoredRecord | None] = []

    def wait() -> None:
        results.append(backend.wait("shared", timeout=2))

    threads = [threading.Thread(target=wait) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    started = time.monotonic()
    backend.store(StoredRecord("shared", "FAILURE", b"boom"), ttl=60)
    for thread in threads:
        thread.join()
    assert time.monotonic() - started < 0.5
    assert [r.state if r else None for r in results] == ["FAILURE"] * 4


def test_wait_ignores_progress_states_and_times_out(backend: RedisResultBackend) -> None:
    backend.store(StoredRecord("slow", "STARTED", b""), ttl=60)
    started = time.monotonic()
    assert backend.wait("slow", timeout=0.3) is None
    assert 0.28 <= time.monotonic() - started < 0.8


def test_get_many_is_one_round_trip(private_server: RedisServer) -> None:
    backend = RedisResultBackend(URL(private_server.url))
    for i in range(3):
        backend.store(StoredRecord(f"id{i}", "SUCCESS", b"%d" % i), ttl=60)
    counter = redis.Redis.from_url(private_server.url)
    counter.config_resetstat()
    found = backend.get_many(["id0", "id1", "id2", "missing"])
    assert {k: v.data for k, v in found.items()} == {"id0": b"0", "id1": b"1", "id2": b"2"}
    assert command_calls(counter) == {"hmget": 4}
    backend.close()
    counter.close()


def test_broker_and_backend_can_live_on_different_servers(
        redis_url: str, redis_url_2: str, prefix: str) -> None:
    broker = RedisBroker(URL(redis_url), prefix=prefix)
    backend = RedisResultBackend(URL(redis_url_2), prefix=prefix)
    one, two = redis.Redis.from_url(redis_url), redis.Redis.from_url(redis_url_2)
    message_id = broker.enqueue("split", b"job")
    backend.store(StoredRecord(message_id, "SUCCESS", b"done"), ttl=60)
    assert one.hexists(f"{prefix}{{split}}:body", message_id)
    assert not two.exists(f"{prefix}{{split}}:body")
    assert two.exists(f"{prefix}result:{message_id}")
    assert not one.exists(f"{prefix}result:{message_id}")
    for client in (one, two):
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()
    broker.close()
    backend.close()


def test_blocking_waits_longer_than_the_socket_timeout_do_not_fail(
        redis_url: str, prefix: str) -> None:
    url = URL(redis_url + ("&" if "?" in redis_url else "?") + "socket_timeout=0.5")
    broker = RedisBroker(url, prefix=prefix)
    backend = RedisResultBackend(url, prefix=prefix)
    started = time.monotonic()
    assert broker.reserve(["slow"], lease=1, wait=0.8) == []
    assert backend.wait("nothing", timeout=0.8) is None
    assert 1.55 <= time.monotonic() - started < 2.5
    broker.close()
    backend.close()


def test_block_timeouts_never_round_to_redis_forever() -> None:
    from conveyor.stores.redis import MIN_BLOCK, block_timeout

    client = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_timeout=5)
    assert block_timeout(client, 0.0) == MIN_BLOCK
    assert block_timeout(client, 0.0004) == MIN_BLOCK
    assert block_timeout(client, 60.0) == 4.5


def test_a_large_batch_is_reserved_in_one_call(broker: RedisBroker) -> None:
    sent = broker.enqueue_many("big", [b"m"] * 2500)
    got = broker.reserve(["big"], lease=60, limit=3000)
    assert sorted(r.message_id for r in got) == sorted(sent)
    assert broker.stats("big").reserved == 2500


def test_store_many_is_one_script_call_and_keeps_first_terminal_write_wins(
        private_server: RedisServer) -> None:
    backend = RedisResultBackend(URL(private_server.url))
    backend.store(StoredRecord("done", "SUCCESS", b"first"), ttl=60)
    counter = redis.Redis.from_url(private_server.url)
    counter.config_resetstat()
    written = backend.store_many([StoredRecord("a", "PENDING", b""),
                                  StoredRecord("done", "FAILURE", b"late"),
                                  StoredRecord("b", "SUCCESS", b"2")], ttl=60)
    assert written == [True, False, True]
    assert command_calls(counter)["evalsha"] == 1  # the whole batch in one script call
    assert "script" not in command_calls(counter)
    assert backend.get("done") == StoredRecord("done", "SUCCESS", b"first")
    counter.script_flush()  # as after a restart: the script must be loaded again
    assert backend.store_many([StoredRecord("c", "STARTED", b"")], ttl=60) == [True]
    backend.close()
    counter.close()


def test_info_names_the_server_and_prefix(broker: RedisBroker,
                                          backend: RedisResultBackend, prefix: str) -> None:
    for driver in (broker, backend):
        facts = driver.info()
        assert facts["server"].split()[0] in {"redis", "valkey"}
        assert facts["prefix"] == prefix


def test_sends_from_short_lived_threads_all_land_on_a_few_connections(
        private_server: RedisServer) -> None:
    broker = RedisBroker(URL(private_server.url))
    admin = redis.Redis.from_url(private_server.url)
    for i in range(30):  # one thread after another, each sending once and finishing
        thread = threading.Thread(target=broker.enqueue, args=("q", b"m%d" % i))
        thread.start()
        thread.join()
    broker.stats("q")  # a new thread of its own: sweeps the last one's connection
    clients = [c for c in admin.client_list() if c.get("cmd") != "client|list"]
    assert len(clients) <= 3, clients
    got = broker.reserve(["q"], lease=1, limit=100)
    assert sorted(r.body for r in got) == sorted(b"m%d" % i for i in range(30))
    broker.close()
    admin.close()
