"""The dashboard's JSON API against real workers on the SQLite default, Redis and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from conveyor.contrib.dashboard import Dashboard
from tests.e2e.conftest import Workers, wait_until

#: Without credentials the dashboard answers loopback host names only.
LOCAL = "http://127.0.0.1"


@pytest.fixture
def dash(app: Any, monkeypatch: pytest.MonkeyPatch) -> Dashboard:
    monkeypatch.setattr("conveyor.contrib.dashboard.data.STATE_COUNT_EVERY", 0.0)
    return Dashboard(app, sample=False)


@pytest.fixture
def client(dash: Dashboard) -> Iterator[TestClient]:
    with TestClient(dash.asgi(), base_url=LOCAL) as c:
        yield c


def _tasks(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    reply = client.get("/api/tasks", params=params)
    assert reply.status_code == 200, reply.text
    return list(reply.json()["tasks"])


def test_api_follows_real_workers(app: Any, queue: str, workers: Workers, *,
                                  client: TestClient, dash: Dashboard, tmp_path: Path) -> None:
    import e2e_tasks

    adds = [e2e_tasks.add.delay(i, i).id for i in range(6)]
    flaky = e2e_tasks.flaky_until.delay(str(tmp_path / "flaky"), 3).id
    again = e2e_tasks.flaky_until.delay(str(tmp_path / "again"), 3).id
    app.flush_pending()
    assert client.get("/api/queues").json()[queue]["ready"] == 8
    pending = _tasks(client, queue=queue, state="PENDING")
    assert {t["id"] for t in pending} == {*adds, flaky, again}
    dash.reader.sample()

    workers.start("-c", "2")
    wait_until(lambda: len(_tasks(client, queue=queue, state="SUCCESS")) == 6,
               timeout=60, what="six successes listed")
    wait_until(lambda: client.get("/api/queues").json()[queue]["dead"] == 2,
               timeout=60, what="the flaky tasks dead-lettered")
    dash.reader.sample()
    flow = client.get("/api/flow").json()
    assert flow["queues"][queue]["ready"] == 0
    # The registry and the backend are shared with the session's other tests (in CI with
    # parallel sessions too): this test's worker is the one serving its queue.
    assert flow["workers"]["alive"] >= 1 and flow["states"]["SUCCESS"] >= 6

    # Filters, id prefix and cursor paging.
    assert {t["id"] for t in _tasks(client, queue=queue, name="e2e_tasks.add")} == set(adds)
    assert [t["id"] for t in _tasks(client, id=flaky[:13], queue=queue)] == [flaky]
    assert {t["id"] for t in _tasks(client, queue=queue, state="FAILURE")} == {flaky, again}
    seen, cursor = [], None
    while True:
        reply = client.get("/api/tasks", params={"queue": queue, "limit": 2,
                                                 **({"cursor": cursor} if cursor else {})})
        seen += [t["id"] for t in reply.json()["tasks"]]
        cursor = reply.json()["cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted([*adds, flaky, again])

    # The task view: attempts of the retries, the dead letter holding its arguments.
    task = client.get(f"/api/tasks/{flaky}").json()
    assert task["state"] == "FAILURE" and task["error_type"].endswith("KeyError")
    assert [a["outcome"] for a in task["attempts"]] == ["retry", "retry", "failure"]
    assert task["args"] == [str(tmp_path / "flaky"), 3]
    assert client.get(f"/api/tasks/{adds[0]}").json()["result"] == 0
    assert client.get("/api/tasks/no-such-task").status_code == 404

    # The registry entry is rewritten every heartbeat.
    def mine() -> list[dict[str, Any]]:
        return [w for w in client.get("/api/workers").json() if queue in w["queues"]]

    wait_until(lambda: (mine() or [{}])[0].get("processed", 0) >= 8,
               timeout=30, what="the worker's processed count in the registry")
    worker = mine()
    assert len(worker) == 1 and worker[0]["alive"]
    # The worker and time-range filters (epoch seconds or ISO 8601, naive meaning UTC).
    hostname = worker[0]["hostname"]
    assert set(adds) <= {t["id"] for t in _tasks(client, queue=queue, worker=hostname)}
    assert _tasks(client, queue=queue, worker=hostname + "-nobody") == []
    from datetime import datetime, timezone

    def iso(at: float) -> str:
        return datetime.fromtimestamp(at, tz=timezone.utc).replace(tzinfo=None).isoformat()

    now = time.time()
    assert len(_tasks(client, queue=queue, since=iso(now - 600))) == 8
    assert len(_tasks(client, queue=queue, since=str(now - 600), until=str(now + 60))) == 8
    assert _tasks(client, queue=queue, since=iso(now + 60)) == []
    assert _tasks(client, queue=queue, until=str(now - 600)) == []
    bad = client.get("/api/tasks", params={"since": "yesterday"})
    assert bad.status_code == 400 and "ISO 8601" in bad.json()["error"]
    # What it runs now, linked from the workers page.
    napping = e2e_tasks.nap.delay(5).id
    app.flush_pending()
    wait_until(lambda: napping in [a["id"] for w in mine() for a in w["active"]],
               timeout=30, what="the running task in the worker's registry entry")
    assert f'href="/tasks/{napping}"' in client.get("/workers").text

    letters = [d for d in client.get(f"/api/dead/{queue}").json() if d["task_id"] == flaky]
    assert len(letters) == 1 and "max retries" in letters[0]["reason"]
    metrics = client.get("/metrics").text
    assert f'conveyor_queue_messages{{queue="{queue}",state="dead"}} 2.0' in metrics
    assert f'conveyor_worker_processed{{worker="{worker[0]["hostname"]}"}}' in metrics
    assert "conveyor_workers_alive 0.0" not in metrics

    # Actions need the CSRF token; a replay runs the task again (it succeeds the 4th time).
    refused = client.post(f"/api/dead/{queue}/replay", data={"all": "1"})
    assert refused.status_code == 403
    done = client.post(f"/api/dead/{queue}/replay",
                       data={"id": letters[0]["message_id"], "csrf": dash.guard.csrf()})
    assert done.status_code == 200 and done.json()["replayed"] == 1
    wait_until(lambda: client.get(f"/api/tasks/{flaky}").json()["state"] == "SUCCESS",
               timeout=60, what="the replayed task to succeed")
    assert client.get(f"/api/tasks/{flaky}").json()["result"] == 4
    # Retry: a failed task whose message is in the dead-letter queue runs again.
    retried = client.post(f"/api/retry/{again}", headers={"X-CSRF-Token": dash.guard.csrf()})
    assert retried.status_code == 200 and retried.json()["replayed"] == 1
    wait_until(lambda: client.get(f"/api/tasks/{again}").json()["state"] == "SUCCESS",
               timeout=60, what="the retried task to succeed")
    assert client.post(f"/api/retry/{adds[0]}", headers={"X-CSRF-Token": dash.guard.csrf()}
                       ).status_code == 409  # nothing to re-send

    # Revoke a queued task (nothing consumes this queue).
    later = e2e_tasks.add.apply_async((1, 1), queue=queue + "-idle").id
    app.flush_pending()
    assert client.post(f"/api/revoke/{later}", headers={"X-CSRF-Token": dash.guard.csrf()}
                       ).status_code == 200
    assert client.get(f"/api/tasks/{later}").json()["state"] == "REVOKED"

    # A worker that leaves stays listed, greyed out (alive False).
    workers.stop_all()
    wait_until(lambda: [w["alive"] for w in mine()] == [False],
               timeout=30, what="the stopped worker listed as gone")
    assert 'class="gone"' in client.get("/workers").text


def test_without_the_redis_index_the_pages_say_how_to_get_it(redis_url: str) -> None:
    from conveyor import Conveyor

    app = Conveyor("plain", broker="memory://plain-redis", backend=redis_url)
    try:
        assert app.backend.capabilities.query is False
        client = TestClient(Dashboard(app, sample=False).asgi(), base_url=LOCAL)
        assert "query_index=1" in client.get("/tasks").text
        assert client.get("/api/tasks").status_code == 501
        assert client.get("/").status_code == 200
    finally:
        app.close()


def test_a_restarted_dashboard_rebuilds_the_hour_and_retries_from_stored_arguments(
        app: Any, queue: str, workers: Workers, *, client: TestClient, dash: Dashboard,
        tmp_path: Path) -> None:
    import e2e_tasks

    # The backend is shared with the session's other tests (and, in CI, with parallel
    # sessions): what is asserted exactly is this test's queues' hour.
    other = queue + "-other"
    adds = [e2e_tasks.add.delay(i, i).id for i in range(5)]
    hidden = e2e_tasks.add.apply_async((40, 2), argsrepr="('<card>', '<script>x</script>')",
                                       kwargsrepr="{}").id
    flaky = e2e_tasks.flaky_until.delay(str(tmp_path / "flaky"), 3).id
    elsewhere = e2e_tasks.add.apply_async((20, 22), queue=other).id
    app.flush_pending()
    dash.reader.sample()  # keeps this minute's queue depth in the backend
    workers.start("-c", "2", "-Q", f"{queue},{other}",
                  env={"CONVEYOR_RESULT_EXTENDED": "true"})
    wait_until(lambda: client.get("/api/queues").json()[queue]["dead"] == 1,
               timeout=60, what="the flaky task dead-lettered")
    wait_until(lambda: len(_tasks(client, queue=queue, state="SUCCESS")) == 6
               and len(_tasks(client, queue=queue, state="FAILURE")) == 1
               and client.get(f"/api/tasks/{elsewhere}").json()["state"] == "SUCCESS",
               timeout=60, what="six successes and the failure listed")

    # A dashboard started now (a restart: nothing sampled, nothing in memory) charts what
    # the backend holds: every outcome and retry, with wait and run times, of one queue.
    again = Dashboard(app, sample=False)
    with TestClient(again.asgi(), base_url=LOCAL) as fresh:
        history = fresh.get("/api/history", params={"queue": queue}).json()
        beside = fresh.get("/api/history", params={"queue": other}).json()
        everything = fresh.get("/api/history").json()
        page = fresh.get("/", params={"queue": queue}).text
    assert history["rebuilt"] is True and len(history["series"]) == 60
    assert history["queue"] == queue
    assert sum(m["succeeded"] for m in history["series"]) == 6
    assert sum(m["failed"] for m in history["series"]) == 1
    assert sum(m["retried"] for m in history["series"]) == 2
    assert not any(m["estimated"] for m in history["series"])
    assert history["wait"]["p50"] is not None and history["runtime"]["p50"] is not None
    assert [p for p in history["depth"] if p["depth"] == {queue: 7}]
    assert again.reader.queue_histories[queue].reads <= 60 + 1  # one read a minute, bounded
    assert sum(m["succeeded"] for m in beside["series"]) == 1
    assert sum(m["failed"] + m["retried"] for m in beside["series"]) == 0
    assert [p for p in beside["depth"] if p["depth"] == {other: 1}]
    # Every queue's hour holds both queues' tasks (and whatever else the backend holds).
    assert sum(m["succeeded"] for m in everything["series"]) >= 7
    assert f'<option value="{queue}" selected>' in page
    assert f'data-history-queue="{queue}"' in page
    metrics = client.get("/metrics").text
    assert (f'conveyor_task_wait_seconds_count{{queue="{queue}",task="e2e_tasks.add"}} 6.0'
            in metrics)
    assert (f'conveyor_task_runtime_seconds_count{{queue="{queue}",task="e2e_tasks.add"}} '
            '6.0' in metrics)
    assert (f'conveyor_tasks_last_hour{{queue="{other}",state="SUCCESS",'
            'task="e2e_tasks.add"} 1.0' in metrics)

    # result_extended: the arguments are in the record; argsrepr replaces what is shown.
    view = client.get(f"/api/tasks/{adds[3]}").json()
    assert view["args"] == [3, 3] and view["kwargs"] == {} and view["args_from"] == "record"
    assert view["wait"] is not None and view["sent_at"] is not None
    shown = client.get(f"/api/tasks/{hidden}").json()
    assert shown["args"] == "('<card>', '<script>x</script>')" and shown["kwargs"] == "{}"
    assert "40" not in str(shown["args"])
    page = client.get(f"/tasks/{hidden}").text
    assert "<script>x</script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    stored = app.record(hidden)
    assert stored.args == [40, 2] and stored.argsrepr.startswith("('<card>'")

    # Retry works without a dead letter: delete it, then re-send from the record's arguments.
    [letter] = client.get(f"/api/dead/{queue}").json()
    deleted = client.post(f"/api/dead/{queue}/delete",
                          data={"id": letter["message_id"], "csrf": dash.guard.csrf()})
    assert deleted.status_code == 200 and deleted.json()["deleted"] == 1
    failed = client.get(f"/api/tasks/{flaky}").json()
    assert failed["can_resend"] and "dead_letter" not in failed
    assert 'id="retry"' in client.get(f"/tasks/{flaky}").text
    retried = client.post(f"/api/retry/{flaky}", headers={"X-CSRF-Token": dash.guard.csrf()})
    assert retried.status_code == 200 and retried.json()["from"] == "record"
    wait_until(lambda: client.get(f"/api/tasks/{flaky}").json()["state"] == "SUCCESS",
               timeout=60, what="the re-sent task to succeed")
    done = client.get(f"/api/tasks/{flaky}").json()
    assert done["result"] == 4 and [a["outcome"] for a in done["attempts"]] == [
        "retry", "retry", "failure", "success"]
    refused = client.post(f"/api/retry/{adds[0]}", headers={"X-CSRF-Token": dash.guard.csrf()})
    assert refused.status_code == 409 and "FAILURE" in refused.json()["error"]


def test_the_task_page_draws_a_chord_and_a_saved_group_with_their_members(
        app: Any, queue: str, workers: Workers, *, client: TestClient) -> None:
    import canvas_tasks as c
    import e2e_tasks as t

    from conveyor import chain, chord, group

    workers.start("-c", "2")
    body = chain(t.add.s(1, 1), chord([t.add.s(1), t.mul.s(2), t.add.s(3)], c.total.s()))()
    assert body.get(timeout=60) == 12  # 2 -> 3, 4, 5
    header = body.parent
    members = [r.id for r in header.results]
    first = header.parent.id

    # A header member: its siblings exactly (from the chord's entry), then the chord's body.
    nodes = client.get(f"/api/tasks/{members[1]}").json()["workflow"]
    assert [(n["id"], n["role"]) for n in nodes] == [
        (first, "parent"), (members[1], "self"), (members[0], "sibling"),
        (members[2], "sibling"), (body.id, "body")]
    assert nodes[-1]["state"] == "SUCCESS"
    # The body: its parent is the header, one node, which follows the chain's first task.
    up = client.get(f"/api/tasks/{body.id}").json()["workflow"]
    assert [(n["id"], n["role"], n["state"]) for n in up] == [
        (first, "parent", "SUCCESS"), (header.id, "parent", "3 of 3 done"),
        (body.id, "self", "SUCCESS")]
    assert up[1]["task"] == "chord header of 3" and up[1]["group"] is True
    # The first task started the header: one node for the group.
    down = client.get(f"/api/tasks/{first}").json()["workflow"]
    assert [(n["id"], n["role"]) for n in down] == [(first, "self"), (header.id, "child")]

    # The header's own page (a member's "group" link, the body's parent link).
    view = client.get(f"/api/groups/{header.id}").json()
    assert (view["kind"], view["size"], view["done"], view["parent"]) == ("chord", 3, 3, first)
    assert [m["id"] for m in view["members"]] == members
    assert {m["state"] for m in view["members"]} == {"SUCCESS"}
    assert view["body"] == {"id": body.id, "task": "canvas_tasks.total", "state": "SUCCESS"}
    page = client.get(f"/tasks/{header.id}")
    assert page.status_code == 200 and "Chord header" in page.text
    assert all(f'href="/tasks/{m}"' in page.text for m in [*members, body.id, first])
    assert f'href="/tasks/{header.id}"' in client.get(f"/tasks/{body.id}").text

    # A plain group keeps no list of its members unless saved; saved, it has a page too.
    saved = group(t.add.s(5, 5), t.mul.s(6, 6))()
    assert saved.get(timeout=60) == [10, 36]
    saved.save()
    view = client.get(f"/api/groups/{saved.id}").json()
    assert (view["kind"], view["size"], view["done"], view["body"]) == ("group", 2, 2, None)
    nodes = client.get(f"/api/tasks/{saved.results[0].id}").json()["workflow"]
    assert [(n["id"], n["role"]) for n in nodes] == [
        (saved.results[0].id, "self"), (saved.results[1].id, "sibling")]
    assert client.get("/api/groups/no-such-group").status_code == 404
    assert client.get("/tasks/no-such-group").status_code == 404
