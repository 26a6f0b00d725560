"""Workflows end to end with real worker processes: chords joining through the backend,
nesting, callbacks, replace, the error paths, and a worker killed during a chord's header.

Run on the SQLite default, Redis, PostgreSQL and one mixed pair (not on every pair: the
canvas logic is the core's; what differs per backend is its join primitive)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from conveyor import chain, chord, group
from conveyor.exceptions import ChordError

from .conftest import PAIRS, Pair, Workers, wait_until

pytestmark = pytest.mark.timeout(120)

#: Other pairs for a one-off check: CONVEYOR_TEST_CANVAS_PAIRS=mysql,redis-broker+s3-backend
CANVAS_PAIRS = os.environ.get("CONVEYOR_TEST_CANVAS_PAIRS",
                              "sqlite,redis,postgres,redis-broker+postgres-backend").split(",")


@pytest.fixture(params=CANVAS_PAIRS, ids=CANVAS_PAIRS)
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Pair:
    broker_fx, backend_fx = PAIRS[request.param]
    sqlite = f"sqlite:///{tmp_path / 'e2e.db'}"
    broker = request.getfixturevalue(broker_fx) if broker_fx else sqlite
    backend = request.getfixturevalue(backend_fx) if backend_fx else sqlite
    return Pair(request.param, broker, backend)


def test_chords_groups_of_chains_and_nesting(app: Any, workers: Workers) -> None:
    import canvas_tasks as c
    import e2e_tasks as t

    workers.start("-c", "4")
    # group | task is a chord; a group holding a chain runs the chain
    assert (group(t.add.s(1, 1), chain(t.add.s(2, 2), t.mul.s(10))) | c.total.s())().get(
        timeout=30) == 42
    # chain -> group (the rest of the chain gets the list) -> chord inside the chain
    flow = chain(t.add.s(1, 1), group(t.add.s(1), t.mul.s(3)), c.total.s(),
                 chord([t.add.s(1), chain(t.mul.s(2), t.add.s(1))], c.total.s()))
    assert flow().get(timeout=30) == 29
    # chord whose header holds a group and a chord, and whose body is a chain
    inner = chord([t.add.s(1, 1), t.add.s(2, 2)], c.total.s())
    outer = chord([group(t.add.s(1, 1), t.add.s(1, 2)), inner], chain(c.total.s(),
                                                                     t.mul.s(2)))
    assert outer().get(timeout=30) == 22
    # an empty header calls the body with []
    assert chord([], c.total.s())().get(timeout=30) == 0
    # a wide header, one small message each
    wide = chord([t.add.s(i, 0) for i in range(200)], c.total.s())()
    assert wide.get(timeout=60) == sum(range(200))
    assert wide.parent.completed_count() == 200


def test_failures_reach_get_and_errbacks(app: Any, workers: Workers, tmp_path: Path) -> None:
    import canvas_tasks as c
    import e2e_tasks as t

    workers.start("-c", "4")
    errors = tmp_path / "errors"
    # the middle of a chain fails: get() raises the task's own exception
    broken = chain(t.add.s(1, 1), c.explode.s(), t.add.s(1))()
    with pytest.raises(c.CanvasTestError, match="exploded on purpose"):
        broken.get(timeout=30)
    # a header task fails: no body, ChordError naming it, the body's errback called
    body = c.note.s(path=str(tmp_path / "body"))
    body.link_error(c.errback.s(path=str(errors)))
    failed = chord([t.add.s(1, 1), c.explode.s()], body)()
    with pytest.raises(ChordError, match=r"explode\[.*exploded on purpose"):
        failed.get(timeout=30)
    # A line, not only the file: exists() turns true at open(), before the write.
    wait_until(lambda: errors.exists() and errors.read_text().endswith("\n"), timeout=30,
               what="the chord body's errback")
    assert errors.read_text().split()[:2] == [failed.id, "ChordError"]
    assert not (tmp_path / "body").exists()
    # a failing body
    with pytest.raises(c.CanvasTestError):
        chord([t.add.s(1, 1)], c.explode.s())().get(timeout=30)
    # a failing callback is recorded like any task
    link = c.explode.s()
    link.freeze()
    parent = t.add.apply_async((1, 2), link=link)
    assert parent.get(timeout=30) == 3
    from conveyor.canvas.engine import derived_id

    assert link.id is not None
    with pytest.raises(c.CanvasTestError):
        app.AsyncResult(derived_id(link.id, parent.id)).get(timeout=30)


def test_links_and_replace(app: Any, workers: Workers, tmp_path: Path) -> None:
    import canvas_tasks as c
    import e2e_tasks as t

    workers.start("-c", "2")
    notes = tmp_path / "notes"
    ok = t.add.apply_async((1, 2), link=[c.note.s("a", path=str(notes)),
                                         c.note.s("b", path=str(notes))])
    assert ok.get(timeout=30) == 3
    wait_until(lambda: notes.exists() and len(notes.read_text().splitlines()) == 2,
               timeout=30, what="both callbacks")
    assert sorted(line.split(" ", 1)[1] for line in notes.read_text().splitlines()) == [
        "(3, 'a')", "(3, 'b')"]
    replaced = chain(c.replaced_by_chain.s(4), t.add.s(1))()
    assert replaced.get(timeout=30) == 51
    assert replaced.parent.get(timeout=30) == 50


def test_worker_killed_during_chord_header_runs_the_body_once(
        app: Any, workers: Workers, tmp_path: Path) -> None:
    import canvas_tasks as c

    first = workers.start("-c", "4", lease=1.5)
    runs = tmp_path / "runs"
    marker = tmp_path / "started"
    header = [c.slow_add.s(i, i, 1.5, str(marker)) for i in range(6)]
    result = chord(header, c.note.s(path=str(runs)))()
    wait_until(marker.exists, timeout=30, what="the header tasks to start")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    workers.start("-c", "4", lease=1.5)
    assert result.get(timeout=60) == [[0, 2, 4, 6, 8, 10]]
    # Redeliveries re-issue follow-ups of finished members (leases of 1.5 s): give any
    # duplicate body the time to show up; the body still ran once.
    time.sleep(4)
    assert len(runs.read_text().splitlines()) == 1
