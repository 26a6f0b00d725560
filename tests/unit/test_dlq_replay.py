"""``conveyor dlq replay`` is not an attack path: it never deletes a terminal record it did
not write, leaves messages it cannot verify where they are, and says what it skipped. On the
memory drivers and on real SQLite, Redis and PostgreSQL servers."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.dlq import replay
from conveyor.exceptions import Reject
from conveyor.serialization import Signer


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(URL of broker and backend, queue name of this test)."""
    name = uuid.uuid4().hex
    if request.param == "memory":
        url = f"memory://{name}"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'dlq.db'}"
    else:
        url = request.getfixturevalue(f"{request.param}_url")
    return url, f"q-{name[:12]}"


def _app(key: str | None, store: tuple[str, str]) -> Conveyor:
    url, queue = store
    return Conveyor("dlq", broker=url, backend=url, task_signing_key=key,
                    task_default_queue=queue)


def _dead_letter(app: Conveyor, body: bytes, reason: str = "undecodable message") -> None:
    q = app.conf.task_default_queue
    app.broker.enqueue(q, body)
    [res] = app.broker.reserve([q], lease=5)
    app.broker.dead_letter(res, reason=reason)


def _victim(app: Conveyor) -> str:
    """A task that succeeded: its SUCCESS record is what a forgery would try to erase."""
    @app.task
    def pay() -> str:
        return "paid"

    result = pay.delay()
    from conveyor.worker import TaskRunner

    [res] = app.broker.reserve([app.conf.task_default_queue], lease=5)
    TaskRunner(app, hostname="test").handle(res)
    assert result.get(timeout=1) == "paid"
    return str(result.id)


@pytest.mark.parametrize(("replayer_key", "forger_key"), [
    ("right", "wrong"),  # forged with another key
    (None, "wrong"),  # replayed without the key: the signature cannot be checked
    (None, None),  # no signing at all: the record it would erase is the guard
], ids=["wrong-key", "no-key-here", "unsigned"])
def test_replaying_a_forged_message_never_erases_the_victims_result(
        replayer_key: str | None, forger_key: str | None, store: tuple[str, str]) -> None:
    app = _app(replayer_key, store)
    q = app.conf.task_default_queue
    victim = _victim(app)
    forged = _app(forger_key, store).build_message("tests.pay", [], {}, task_id=victim,
                                                   queue=q).message
    _dead_letter(app, forged.encode(Signer(forger_key)))
    report = replay(app, app.broker.dead_letters(q))
    assert report.replayed == 0
    [skipped] = report.skipped
    assert "signature" in skipped.reason or "not produce" in skipped.reason
    assert app.record(victim) is not None and app.record(victim).state == "SUCCESS"
    assert len(app.broker.dead_letters(q)) == 1  # kept for an operator to look at
    assert app.broker.stats(q).ready == 0
    app.close()


def test_replay_reopens_a_task_it_dead_lettered_and_reports_nothing_skipped(
        store: tuple[str, str]) -> None:
    app = _app("k", store)
    q = app.conf.task_default_queue
    runs: list[int] = []

    @app.task
    def picky() -> str:
        runs.append(1)
        if len(runs) == 1:
            raise Reject("not yet")
        return "ok"

    result = picky.delay()
    from conveyor.worker import TaskRunner

    runner = TaskRunner(app, hostname="test")
    [res] = app.broker.reserve([q], lease=5)
    runner.handle(res)
    assert app.record(result.id).state == "FAILURE"
    report = replay(app, app.broker.dead_letters(q))
    assert (report.replayed, report.skipped) == (1, [])
    [res] = app.broker.reserve([q], lease=5)
    runner.handle(res)
    assert result.get(timeout=1) == "ok"
    app.close()
