"""Dashboard security: credentials off loopback, CSRF and origin checks, read-only mode,
masked URLs, and untrusted strings never rendered as HTML (memory drivers, in-process)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from conveyor import Conveyor
from conveyor.cli import cli
from conveyor.contrib.dashboard import Dashboard, Guard, check_bind
from conveyor.exceptions import ConfigurationError
from conveyor.record import Attempt, TaskRecord
from tests.hostile import IDS, TEXTS

#: Without credentials the dashboard answers loopback host names only.
LOCAL = "http://127.0.0.1"

HTML = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "\"><svg onload=alert(1)>",
        "</script><script>alert(2)</script>", "{{ 7*7 }}"]


@pytest.fixture
def memory_app() -> Iterator[Conveyor]:
    name = uuid.uuid4().hex
    app = Conveyor("sec", broker=f"memory://{name}", backend=f"memory://{name}")
    yield app
    app.close()


def _client(app: Conveyor, **options: Any) -> TestClient:
    guard = options.pop("guard", None) or Guard()
    return TestClient(Dashboard(app, guard=guard, sample=False, **options).asgi(),
                      base_url=LOCAL)


def test_binding_off_loopback_needs_credentials() -> None:
    with pytest.raises(ConfigurationError, match="without authentication"):
        check_bind("0.0.0.0", Guard())
    check_bind("127.0.0.1", Guard())
    check_bind("::1", Guard())
    check_bind("0.0.0.0", Guard.from_options(token="t" * 16, basic_auth=None))
    check_bind("10.1.2.3", Guard.from_options(token=None, basic_auth="ops:secret"))
    with pytest.raises(ConfigurationError, match="16"):
        Guard.from_options(token="short", basic_auth=None)
    with pytest.raises(ConfigurationError, match="USER:PASSWORD"):
        Guard.from_options(token=None, basic_auth="nopassword")


def test_the_command_refuses_to_start_without_credentials_off_loopback() -> None:
    result = CliRunner().invoke(cli, ["dashboard", "--host", "0.0.0.0"])
    assert result.exit_code != 0
    assert "without authentication" in result.output


def test_without_credentials_only_loopback_host_names_are_served(memory_app: Conveyor) -> None:
    dash = Dashboard(memory_app, sample=False)
    rebound = TestClient(dash.asgi(), base_url="http://evil.example:5555")
    assert rebound.get("/api/flow").status_code == 403
    assert rebound.get("/").status_code == 403
    for host in ("http://localhost:5555", "http://127.0.0.1:5555", "http://[::1]:5555"):
        assert TestClient(dash.asgi(), base_url=host).get("/api/flow").status_code == 200
    token = Guard.from_options(token="t" * 16, basic_auth=None)
    named = TestClient(Dashboard(memory_app, guard=token, sample=False).asgi(),
                       base_url="http://dash.example")
    assert named.get("/api/flow", headers={"Authorization": "Bearer " + "t" * 16}
                     ).status_code == 200


def test_token_and_basic_auth_are_enforced(memory_app: Conveyor) -> None:
    token = "s3cret-token-0123456789"
    client = _client(memory_app, guard=Guard.from_options(token=token, basic_auth=None))
    assert client.get("/api/flow").status_code == 401
    page = client.get("/", headers={"accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login"
    assert client.get("/api/flow", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/api/flow",
                      headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert client.post("/login", data={"token": "wrong"}).status_code == 401
    login = client.post("/login", data={"token": token}, follow_redirects=False)
    assert login.status_code == 303 and "httponly" in login.headers["set-cookie"].lower()
    assert client.get("/api/flow").status_code == 200  # the session cookie

    basic = _client(memory_app, guard=Guard.from_options(token=None, basic_auth="ops:pw"))
    assert basic.get("/").status_code == 401
    assert "Basic" in basic.get("/").headers["www-authenticate"]
    good = base64.b64encode(b"ops:pw").decode()
    bad = base64.b64encode(b"ops:nope").decode()
    assert basic.get("/", headers={"Authorization": f"Basic {good}"}).status_code == 200
    assert basic.get("/", headers={"Authorization": f"Basic {bad}"}).status_code == 401


def test_actions_need_the_csrf_token_and_the_same_origin(memory_app: Conveyor) -> None:
    dash = Dashboard(memory_app, sample=False)
    client = TestClient(dash.asgi(), base_url=LOCAL)
    task_id = "queued-" + uuid.uuid4().hex
    memory_app.backend.store(TaskRecord(task_id, "PENDING", task="t").to_stored(), ttl=60)
    assert client.post(f"/api/revoke/{task_id}").status_code == 403
    assert client.post(f"/api/revoke/{task_id}", data={"csrf": "forged"}).status_code == 403
    cross = client.post(f"/api/revoke/{task_id}", data={"csrf": dash.guard.csrf()},
                        headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403
    site = client.post(f"/api/revoke/{task_id}", data={"csrf": dash.guard.csrf()},
                       headers={"Sec-Fetch-Site": "cross-site"})
    assert site.status_code == 403
    assert memory_app.backend.get(task_id).state == "PENDING"  # type: ignore[union-attr]
    assert client.get(f"/api/revoke/{task_id}").status_code == 405  # actions are POSTs
    ok = client.post(f"/api/revoke/{task_id}", data={"csrf": dash.guard.csrf()})
    assert ok.status_code == 200
    assert memory_app.backend.get(task_id).state == "REVOKED"  # type: ignore[union-attr]


def test_every_action_refuses_a_missing_or_forged_token_and_another_origin(
        memory_app: Conveyor) -> None:
    dash = Dashboard(memory_app, sample=False)
    client = TestClient(dash.asgi(), base_url=LOCAL)
    broker, backend = memory_app.broker, memory_app.backend
    failed = "failed-" + uuid.uuid4().hex
    backend.store(TaskRecord(failed, "FAILURE", task="t", queue="default", args=[1],
                             kwargs={}, args_type="json").to_stored(), ttl=60)
    queued = "queued-" + uuid.uuid4().hex
    backend.store(TaskRecord(queued, "PENDING", task="t").to_stored(), ttl=60)
    broker.enqueue("default", b"not a conveyor message")
    [res] = broker.reserve(["default"], lease=5, limit=1)
    broker.dead_letter(res, reason="undecodable")
    [letter] = client.get("/api/dead/default").json()
    token = dash.guard.csrf()
    actions = [(f"/api/revoke/{queued}", {}), (f"/api/retry/{failed}", {}),
               ("/api/dead/default/replay", {"id": letter["message_id"]}),
               ("/api/dead/default/delete", {"id": letter["message_id"]}),
               ("/api/dead/default/delete", {"all": "1"})]
    for path, form in actions:
        attempts = [({}, form), ({}, {**form, "csrf": "forged"}),
                    ({"X-CSRF-Token": "forged"}, form),
                    ({"Origin": "http://evil.example"}, {**form, "csrf": token}),
                    ({"Origin": "null"}, {**form, "csrf": token}),
                    ({"Sec-Fetch-Site": "cross-site"}, {**form, "csrf": token}),
                    ({"Sec-Fetch-Site": "same-site"}, {**form, "csrf": token})]
        for headers, data in attempts:
            reply = client.post(path, data=data, headers=headers)
            assert reply.status_code == 403, (path, headers, data)
        assert client.get(path).status_code == 405  # actions are POSTs, never links
    # Nothing happened.
    assert backend.get(queued).state == "PENDING"  # type: ignore[union-attr]
    assert backend.get(failed).state == "FAILURE"  # type: ignore[union-attr]
    assert broker.stats("default").dead == 1 and broker.stats("default").ready == 0
    # The same requests with the token, from the page's origin, act.
    ok = client.post("/api/dead/default/delete", data={"id": letter["message_id"]},
                     headers={"X-CSRF-Token": token, "Origin": LOCAL,
                              "Sec-Fetch-Site": "same-origin"})
    assert ok.status_code == 200 and ok.json()["deleted"] == 1


def test_notices_show_only_the_dashboards_own_messages(memory_app: Conveyor) -> None:
    client = _client(memory_app)
    memory_app.backend.store(TaskRecord("n1", "SUCCESS", task="t").to_stored(), ttl=60)
    lure = "Session expired: sign in again at http://evil.example"
    for path in ("/dead?queue=default", "/tasks/n1"):
        assert "evil.example" not in client.get(path, params={"done": lure}).text
        assert "deleted 2" in client.get(path, params={"done": "deleted 2"}).text


def test_read_only_hides_and_refuses_actions(memory_app: Conveyor) -> None:
    dash = Dashboard(memory_app, sample=False, read_only=True)
    client = TestClient(dash.asgi(), base_url=LOCAL)
    task_id = "ro-" + uuid.uuid4().hex
    memory_app.backend.store(TaskRecord(task_id, "PENDING", task="t").to_stored(), ttl=60)
    memory_app.broker.enqueue("default", b"not a conveyor message")
    [res] = memory_app.broker.reserve(["default"], lease=5, limit=1)
    memory_app.broker.dead_letter(res, reason="undecodable")
    page = client.get(f"/tasks/{task_id}").text
    assert "Revoke" not in page and "read-only" in page
    dead = client.get("/dead?queue=default").text
    assert "undecodable" in dead and "Replay" not in dead and "Delete" not in dead
    refused = client.post("/api/dead/default/delete",
                          data={"all": "1", "csrf": dash.guard.csrf()})
    assert refused.status_code == 403
    assert memory_app.broker.stats("default").dead == 1


def test_urls_are_shown_masked(memory_app: Conveyor) -> None:
    app = Conveyor("masked", broker=f"memory://{uuid.uuid4().hex}",
                   backend="redis://:hunter2-secret@127.0.0.1:1/0")
    try:
        guard = Guard.from_options(token="t" * 16, basic_auth=None)
        login = _client(app, guard=guard).get("/login").text
        assert "hunter2-secret" not in login and "***" in login
    finally:
        app.close()


def test_untrusted_strings_are_never_markup(memory_app: Conveyor) -> None:
    dash = Dashboard(memory_app, sample=False)
    client = TestClient(dash.asgi(), base_url=LOCAL)
    backend = memory_app.backend
    hostile = HTML + TEXTS[:6]
    ids = []
    for i, text in enumerate(hostile):
        task_id = f"{HTML[i % len(HTML)]}-{i}"
        ids.append(task_id)
        backend.store(TaskRecord(
            task_id, "FAILURE", task=text, queue=text[:50], worker=text[:60],
            error_type=text, error_message=text, traceback=text, parent=HTML[0],
            attempts=[Attempt(1, text, 1.0, 2.0, "failure", text, text).to_dict()],
        ).to_stored(), ttl=60)
    for task_id in IDS[:8]:
        backend.store(TaskRecord(task_id, "SUCCESS", task=HTML[1], result=HTML[2]).to_stored(),
                      ttl=60)
        ids.append(task_id)
    # Arguments kept by result_extended, and argsrepr/kwargsrepr shown in their place.
    for i, text in enumerate(HTML):
        backend.store(TaskRecord(
            f"args-{i}", "FAILURE", task="t", args=[text, {"k": text}], kwargs={text: text},
            args_type="json", argsrepr=text if i % 2 else None,
            kwargsrepr=text if i % 2 else None).to_stored(), ttl=60)
    args_pages = [client.get(f"/tasks/args-{i}").text for i in range(len(HTML))]
    assert all('id="args"' in page for page in args_pages)
    assert client.get("/api/tasks/args-1").json()["args"] == HTML[1]
    assert client.get("/api/tasks/args-0").json()["args"] == [HTML[0], {"k": HTML[0]}]
    pages = [client.get("/tasks").text, client.get("/tasks", params={"limit": 200}).text]
    pages += [client.get("/tasks/" + task_id).text for task_id in ids[:len(HTML) + 3]]
    pages += args_pages
    api = client.get("/api/tasks")
    # JSON is data, never HTML: the browser is told so and must not sniff.
    assert api.headers["content-type"] == "application/json"
    assert api.headers["x-content-type-options"] == "nosniff"
    for page in pages:
        for bad in ("<script>alert", "<img src=x", "<svg onload"):
            assert bad not in page
        assert "{{ 7*7 }}" not in page or "49" not in page.split("{{ 7*7 }}")[0][-5:]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[0]
    assert client.get("/tasks/" + ids[0]).status_code == 200
    assert "Content-Security-Policy" in client.get("/").headers


def test_untrusted_queues_workers_dead_letters_and_groups_are_never_markup(
        memory_app: Conveyor) -> None:
    import json

    from conveyor.control.agent import REGISTRY_PREFIX
    from conveyor.result import AsyncResult, GroupResult

    dash = Dashboard(memory_app, sample=False)
    client = TestClient(dash.asgi(), base_url=LOCAL)
    backend, broker = memory_app.backend, memory_app.broker
    for i, text in enumerate(HTML):
        queue = f"{text}-q{i}"
        broker.enqueue(queue, text.encode())  # undecodable: shown as its body
        [res] = broker.reserve([queue], lease=5, limit=1)
        broker.dead_letter(res, reason=text)
        backend.put_entry(REGISTRY_PREFIX + f"{text}@host{i}", json.dumps({
            "host": text, "pid": text, "queues": [queue], "pool": text, "concurrency": text,
            "active": [text, {"id": text, "task": text}], "processed": text, "failed": text,
            "heartbeat": 1.0, "version": text}).encode(), ttl=60)
    members = [f"{text}-member" for text in HTML]
    for member in members:
        backend.store(TaskRecord(member, "SUCCESS", task=HTML[0], group=HTML[2]).to_stored(),
                      ttl=60)
    GroupResult([AsyncResult(m, app=memory_app) for m in members], id=HTML[2],
                app=memory_app).save()
    queues = [f"{text}-q{i}" for i, text in enumerate(HTML)]
    pages = [client.get("/").text, client.get("/", params={"queue": queues[0]}).text,
             client.get("/workers").text, client.get("/dead").text,
             client.get(f"/tasks/{members[0]}").text,
             client.get("/tasks/" + HTML[2]).text]
    pages += [client.get("/dead", params={"queue": q, "done": q}).text for q in queues]
    assert "Group" in pages[5] and "&lt;script&gt;alert(1)&lt;/script&gt;-member" in pages[5]
    assert client.get("/metrics").status_code == 200  # garbled registry counts count as 0
    assert client.get("/api/groups/" + HTML[2]).json()["size"] == len(HTML)
    for page in pages:
        for bad in ("<script>alert", "<img src=x", "<svg onload"):
            assert bad not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[2]  # the workers page
    assert "&lt;img src=x onerror=alert(1)&gt;" in pages[3]  # the dead-letter queues


def test_the_redaction_hook_applies_to_task_views(memory_app: Conveyor) -> None:
    def hide(view: dict[str, Any]) -> dict[str, Any]:
        return {**view, "args": "<hidden>", "kwargs": "<hidden>", "result": "<hidden>"}

    dash = Dashboard(memory_app, sample=False, redact=hide)
    client = TestClient(dash.asgi(), base_url=LOCAL)
    memory_app.backend.store(TaskRecord("r1", "SUCCESS", task="t",
                                        result={"card": "4111"}).to_stored(), ttl=60)
    view = client.get("/api/tasks/r1").json()
    assert view["result"] == "<hidden>" and "4111" not in client.get("/tasks/r1").text

