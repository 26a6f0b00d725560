"""``conveyor conformance``: the contract against any URL, as a table or JSON."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(600)

#: A few areas, so each run takes seconds rather than minutes (the whole suite is the same code).
SUBSET = "stale_nack or ttl_is_in_seconds or collide or ping"

BROKEN = '''
from conveyor.brokers.memory import MemoryBroker
from conveyor.exceptions import ConnectionLostError


class BrokenBroker(MemoryBroker):
    """Hands a nacked message back even when the receipt is stale; ping always fails."""

    def nack(self, reservation, *, delay=0.0):
        with self._store.cond:
            q = self._store.queue(reservation.queue)
            entry = q.reserved.pop(reservation.message_id, None)
            if entry is not None:
                q.ready.appendleft(entry[1])

    def ping(self):
        raise ConnectionLostError("\\x1b[2Jdown [bold red]alarm[/bold red]")
'''


def conveyor(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "400"}  # no wrapping inside the strings asserted on
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "conveyor", *args], capture_output=True,
                          text=True, env=env, timeout=580, check=False)


def test_sqlite_passes_and_the_json_names_each_test_and_area(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    run = conveyor("conformance", "--broker", url, "--backend", url, "-k", SUBSET, "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert report["failed"] == 0 and report["passed"] >= 6
    by_test = {(t["part"], t["test"]): t for t in report["tests"]}
    stale = by_test[("broker", "test_stale_nack_leaves_the_new_holder_alone")]
    assert (stale["area"], stale["outcome"]) == ("stale receipt", "passed")
    assert by_test[("backend", "test_ttl_is_in_seconds_and_fractions_count")]["area"] == "ttl"


def test_redis_table_and_cleanup(redis_url: str) -> None:
    from conveyor.registry import broker_from_url

    def holding() -> set[str]:
        broker = broker_from_url(redis_url)
        try:
            return {q for q in broker.queues() if q.startswith("contract-")
                    and (s := broker.stats(q)).ready + s.delayed + s.dead}
        finally:
            broker.close()

    # The session's server is shared: other tests' queues may hold messages already.
    before = holding()
    run = conveyor("conformance", "--broker", redis_url, "--backend", redis_url, "-k", SUBSET,
                   "--force")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "stale receipt" in run.stdout and "0 failed" in run.stdout
    assert holding() - before == set()


def test_a_broken_driver_fails_with_its_tests_named_and_text_escaped(tmp_path: Path) -> None:
    (tmp_path / "brokenpkg.py").write_text(BROKEN)
    dist = tmp_path / "brokenpkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenpkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[conveyor.brokers]\nbroken = brokenpkg:BrokenBroker\n")
    run = conveyor("conformance", "--broker", "broken://x", "-k", "stale_nack or ping",
                   pythonpath=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "test_stale_nack_leaves_the_new_holder_alone" in run.stdout
    assert "test_ping_succeeds_on_a_live_server" in run.stdout
    assert "\x1b" not in run.stdout  # no raw escape reached the terminal
    assert "[bold red]alarm[/bold red]" in run.stdout


def test_a_broker_holding_messages_is_refused_unless_forced(tmp_path: Path) -> None:
    from conveyor.registry import broker_from_url

    url = f"sqlite:///{tmp_path / 'busy.db'}"
    broker = broker_from_url(url)
    broker.enqueue("orders", b"a customer's task")
    broker.close()
    run = conveyor("conformance", "--broker", url, "-k", "ping")
    assert run.returncode == 2
    assert "already holds messages" in run.stderr and "--force" in run.stderr
    forced = conveyor("conformance", "--broker", url, "-k", "ping", "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    broker = broker_from_url(url)
    try:
        assert broker.stats("orders").ready == 1  # the user's message was left alone
    finally:
        broker.close()


def test_no_url_is_a_usage_error() -> None:
    run = conveyor("conformance", "--json")
    assert run.returncode == 2
    assert "give --broker URL and/or --backend URL" in json.loads(run.stdout)["error"]


def test_e2e_runs_real_workers_on_the_urls(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'e2e.db'}"
    run = conveyor("conformance", "--broker", url, "--backend", url, "--e2e", "--json",
                   "-k", "delay_and_get or chain_and_group")
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    e2e = {t["test"]: t["outcome"] for t in report["tests"] if t["part"] == "end to end"}
    assert e2e == {"test_delay_and_get": "passed", "test_chain_and_group": "passed"}


def test_e2e_needs_both_urls(tmp_path: Path) -> None:
    run = conveyor("conformance", "--broker", f"sqlite:///{tmp_path / 'x.db'}", "--e2e")
    assert run.returncode == 2
    assert "give both --broker and --backend" in run.stderr


# -- every shipped driver's real server (a few areas each, so the runs stay short) ----------
def _passes_on(broker: str, backend: str) -> None:
    """Run the SUBSET through `conveyor conformance --json` on the URLs; it must pass with both
    parts run (not skipped) and leave none of its queues holding anything."""
    from conveyor.registry import broker_from_url

    run = conveyor("conformance", "--broker", broker, "--backend", backend, "-k", SUBSET,
                   "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert report["failed"] == 0 and report["skipped"] == 0, report
    parts = {t["part"] for t in report["tests"] if t["outcome"] == "passed"}
    assert parts == {"broker", "backend"}, report
    assert report["passed"] >= 6, report
    driver = broker_from_url(broker)
    try:
        left = {q: driver.stats(q) for q in driver.queues() if q.startswith("contract-")}
        assert not [q for q, s in left.items() if s.ready + s.delayed + s.reserved + s.dead]
    finally:
        driver.close()


@contextlib.contextmanager
def _fresh_mysql_database(url: str) -> Iterator[str]:
    import sqlalchemy as sa

    name = f"conveyor_conf_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield sa.make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
        admin.dispose()


def _tables(url: str) -> set[str]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_postgresql_passes_in_an_empty_database(postgres_url: str) -> None:
    from tests.servers.postgres import fresh_database

    with fresh_database(postgres_url) as url:
        assert url != postgres_url  # a database of this test's own: the namespace is empty
        _passes_on(url, url)
        # It ran there: the drivers' tables are in that database.
        assert {"conveyor_messages", "conveyor_results"} <= _tables(url)


def test_mariadb_passes_in_an_empty_database(mysql_url: str) -> None:
    with _fresh_mysql_database(mysql_url) as url:
        _passes_on(url, url)
        assert {"conveyor_messages", "conveyor_results"} <= _tables(url)


def test_mongodb_passes_under_a_prefix_of_its_own(mongo_url: str) -> None:
    import pymongo

    prefix = f"conf{uuid.uuid4().hex[:8]}_"
    url = f"{mongo_url}{'&' if '?' in mongo_url else '?'}prefix={prefix}"
    _passes_on(url, url)
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_url)
    try:
        names = client.get_default_database("conveyor").list_collection_names()
    finally:
        client.close()
    assert [n for n in names if n.startswith(prefix)], names


def test_sqs_and_s3_pass_under_prefixes_of_their_own(sqs_url: str, s3_url: str,
                                                     moto_endpoint: str) -> None:
    from tests.servers.moto import _client

    _passes_on(sqs_url, s3_url)
    prefix = sqs_url.split("&prefix=", 1)[1].split("&", 1)[0]
    created = _client("sqs", moto_endpoint).list_queues(QueueNamePrefix=prefix)
    assert created.get("QueueUrls"), "no SQS queue was made under the test's prefix"
