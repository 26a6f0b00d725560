"""The canvas on the memory drivers with an in-process worker: signatures, chains, groups,
chords, callbacks, replace, results, eager runs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conveyor import AsyncResult, Conveyor, chain, chord, group, signature
from conveyor.canvas import Signature
from conveyor.exceptions import ChordError, TaskOptionError
from conveyor.result import GroupResult
from conveyor.worker import Consumer


class BoomError(Exception):
    pass


def tasks(app: Conveyor) -> Any:
    """Register the tasks the tests use; returns them as a namespace."""
    calls: list[Any] = []

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    @app.task
    def mul(a: int, b: int) -> int:
        return a * b

    @app.task
    def total(values: list[Any]) -> int:
        return sum(v if isinstance(v, int) else sum(v) for v in values)

    @app.task
    def ident(value: Any) -> Any:
        return value

    @app.task
    def fail(*args: Any) -> None:
        raise BoomError("middle failed")

    @app.task
    def record(*args: Any) -> list[Any]:
        calls.append(args)
        return list(args)

    @app.task
    def on_error(request: Any, exc: BaseException, traceback: str | None) -> str:
        calls.append(("errback", request.id, type(exc).__name__, str(exc)))
        return request.id

    @app.task
    def old_errback(task_id: str) -> str:
        calls.append(("old", task_id))
        return task_id

    @app.task(bind=True)
    def replacer(self: Any, x: int) -> None:
        raise self.replace(chain(add.s(x, 1), mul.s(10)))

    attempts: list[int] = []

    @app.task(autoretry_for=(KeyError,), max_retries=3)
    def flaky() -> int:
        attempts.append(1)
        if len(attempts) < 3:
            raise KeyError("not yet")
        return len(attempts)

    broken = {"on": True}

    @app.task(dead_letter_failures=True)
    def until_fixed(x: int) -> int:
        if broken["on"]:
            raise BoomError("a bug, fixed later")
        return x

    @app.task(bind=True)
    def fan_out(self: Any, x: int) -> None:
        raise self.replace(group(add.s(x, 1), add.s(x, 2)))

    @app.task(bind=True)
    def ids(self: Any, *args: Any) -> dict[str, Any]:
        r = self.request
        return {"id": r.id, "root": r.root_id, "parent": r.parent_id, "group": r.group_id,
                "chord": r.chord}

    class NS:
        pass

    ns = NS()
    for name, value in list(locals().items()):
        setattr(ns, name, value)
    return ns


@pytest.fixture
def t(app: Conveyor) -> Any:
    return tasks(app)


# -- signatures -------------------------------------------------------------------------------
def test_partial_signature_prepends_args_and_merges_kwargs(t: Any) -> None:
    sig = t.add.s(2)
    assert sig.clone((1,)).args == (1, 2)
    assert t.add.si(2, 2).clone((9,)).args == (2, 2)
    assert sig.clone(kwargs={"b": 3}).kwargs == {"b": 3}
    assert sig.set(countdown=5).options["countdown"] == 5
    assert sig(1) == 3
    assert sig.replace(args=(5, 5)).args == (5, 5) and sig.args == (2,)


def test_signature_json_form_round_trips_nested_workflows(app: Conveyor, t: Any) -> None:
    flow = chain(t.add.s(1, 1), group(t.add.s(1), chain(t.mul.s(2), t.add.s(1))),
                 chord([t.add.s(1)], t.total.s()))
    flow.link_error(t.old_errback.s())
    data = json.loads(json.dumps(flow.to_dict()))
    again = signature(data, app=app)
    assert again.to_dict() == flow.to_dict()
    assert isinstance(again, chain)
    assert signature("x.y", (1,), {"b": 2}, {"queue": "q"}).to_dict()["options"] == {
        "queue": "q"}


def test_freeze_assigns_ids_before_sending(app: Conveyor, t: Any, worker: Consumer) -> None:
    sig = t.add.s(1, 2)
    result = sig.freeze()
    assert result.id == sig.id
    sent = sig.delay()
    assert sent.id == result.id
    assert result.get(timeout=10) == 3


def test_task_id_given_to_a_workflow_names_its_result(app: Conveyor, t: Any,
                                                      worker: Consumer) -> None:
    result = chain(t.add.s(1, 1), t.add.s(1)).apply_async(task_id="my-chain-result")
    assert result.id == "my-chain-result" and result.get(timeout=10) == 3
    result = chord([t.add.s(1, 1)], t.total.s()).apply_async(task_id="my-chord-result")
    assert result.id == "my-chord-result" and result.get(timeout=10) == 2


def test_unknown_sending_option_is_refused(app: Conveyor, t: Any) -> None:
    with pytest.raises(TaskOptionError, match="unknown sending option"):
        t.add.s(1, 2).set(nonsense=1).delay()


def test_bad_workflow_input_is_refused_with_a_clear_error(app: Conveyor, t: Any) -> None:
    with pytest.raises(TaskOptionError, match="unknown subtask_type"):
        signature({"task": "x", "subtask_type": "loop"}, app=app)
    with pytest.raises(TaskOptionError, match="must be signatures"):
        group(t.add.s(1, 1), 42)  # type: ignore[arg-type]
    with pytest.raises(TaskOptionError, match="chord needs a body"):
        chord([t.add.s(1, 1)]).apply_async()
    with pytest.raises(TaskOptionError, match="at least one"):
        chain(app=app).apply_async()


def test_or_operators_build_chains_and_chords(t: Any) -> None:
    assert isinstance(t.add.s(1) | t.add.s(2), chain)
    assert isinstance(group(t.add.s(1)) | t.total.s(), chord)
    assert len((t.add.s(1) | t.add.s(2) | t.add.s(3)).tasks) == 3


# -- running ----------------------------------------------------------------------------------
def test_group_containing_a_chain_runs_the_chain(app: Conveyor, t: Any,
                                                 worker: Consumer) -> None:
    result = group(t.add.s(1, 1), t.add.s(2, 2), chain(t.add.s(3, 3), t.mul.s(10)))()
    assert len(result) == 3
    assert result.get(timeout=10) == [2, 4, 60]


def test_chain_middle_failure_raises_the_tasks_own_exception(app: Conveyor, t: Any,
                                                              worker: Consumer) -> None:
    result = chain(t.add.s(1, 1), t.fail.s(), t.add.s(1))()
    with pytest.raises(BoomError, match="middle failed"):
        result.get(timeout=10)
    with pytest.raises(BoomError):
        result.parent.get(timeout=10)


def test_chord_runs_the_body_once_with_header_results(app: Conveyor, t: Any,
                                                      worker: Consumer) -> None:
    result = chord([t.add.s(i, i) for i in range(10)], t.total.s())()
    assert result.get(timeout=10) == 90
    assert isinstance(result.parent, GroupResult)
    assert result.parent.completed_count() == 10


def test_group_piped_to_task_is_a_chord_and_empty_header_gets_empty_list(
        app: Conveyor, t: Any, worker: Consumer) -> None:
    assert (group(t.add.s(1, 2), t.add.s(3, 4)) | t.total.s())().get(timeout=10) == 10
    assert chord([], t.ident.s())().get(timeout=10) == []


def test_chord_header_failure_skips_the_body_and_calls_its_errback(
        app: Conveyor, t: Any, worker: Consumer) -> None:
    body = t.total.s()
    body.link_error(t.on_error.s())
    result = chord([t.add.s(1, 1), t.fail.s()], body)()
    with pytest.raises(ChordError, match=r"fail\[.*middle failed"):
        result.get(timeout=10)
    worker_calls = t.calls
    _wait(lambda: any(c[0] == "errback" for c in worker_calls))
    errback = next(c for c in worker_calls if c[0] == "errback")
    assert errback[1] == result.id and errback[2] == "ChordError"
    assert not any(c and c[0] == [2] for c in worker_calls)


def test_nested_workflows_pass_results_as_celery(app: Conveyor, t: Any,
                                                 worker: Consumer) -> None:
    # chain -> group (becomes a chord with the rest as body) -> chord in a chain
    flow = chain(t.add.s(1, 1), group(t.add.s(1), t.mul.s(3)), t.total.s(),
                 chord([t.add.s(1), chain(t.mul.s(2), t.add.s(1))], t.total.s()))
    # 2 -> [3, 6] -> 9 -> [10, 19] -> 29
    assert flow().get(timeout=15) == 29
    # chord whose header holds a group and a chord, and whose body is a chain
    inner = chord([t.add.s(1, 1), t.add.s(2, 2)], t.total.s())
    outer = chord([group(t.add.s(1, 1), t.add.s(1, 2)), inner, t.add.s(0, 5)],
                  chain(t.total.s(), t.mul.s(2)))
    # [[2, 3], 6, 5] -> 16 -> 32
    assert outer().get(timeout=15) == 32
    # a chain ending in a group gives the group's results
    assert chain(t.add.s(1, 1), group(t.add.s(1), t.add.s(2)))().get(timeout=10) == [3, 4]


def test_failure_inside_a_nested_header_reaches_the_outer_chord(
        app: Conveyor, t: Any, worker: Consumer) -> None:
    outer = chord([chain(t.add.s(1, 1), t.fail.s(), t.add.s(1)), t.add.s(1, 1)], t.total.s())
    with pytest.raises(ChordError, match="middle failed"):
        outer().get(timeout=10)


def test_deep_chain_and_wide_chord(app: Conveyor, t: Any, worker: Consumer) -> None:
    assert chain(t.add.s(0, 1), *[t.add.s(1) for _ in range(300)])().get(timeout=60) == 301
    result = chord([t.add.s(i, 0) for i in range(2000)], t.total.s())()
    assert result.get(timeout=60) == sum(range(2000))


def test_links_several_per_task_and_errbacks_in_both_shapes(
        app: Conveyor, t: Any, worker: Consumer) -> None:
    ok = t.add.apply_async((1, 2), link=[t.record.s("a"), t.record.s("b")])
    assert ok.get(timeout=10) == 3
    _wait(lambda: {(3, "a"), (3, "b")} <= set(t.calls))
    bad = t.fail.apply_async(link_error=[t.on_error.s(), t.old_errback.s()])
    with pytest.raises(BoomError):
        bad.get(timeout=10)
    _wait(lambda: ("old", bad.id) in t.calls)
    _wait(lambda: ("errback", bad.id, "BoomError", "middle failed") in t.calls)


def test_workflow_callbacks_and_chord_called_with_its_body(
        app: Conveyor, t: Any, worker: Consumer) -> None:
    flow = chain(t.add.s(1, 1), t.add.s(1))
    assert flow.apply_async(link=t.record.s("chain")).get(timeout=10) == 3
    _wait(lambda: (3, "chain") in t.calls)
    assert chord([t.add.s(1, 1), t.add.s(2, 2)])(t.total.s()).get(timeout=10) == 6
    single = t.add.s(2, 2).apply_async(link=t.record.s("one"))
    assert single.get(timeout=10) == 4
    _wait(lambda: (4, "one") in t.calls)


def test_failing_callback_is_recorded_like_any_task(app: Conveyor, t: Any,
                                                    worker: Consumer) -> None:
    link = t.fail.s()
    link.freeze()
    parent = t.add.apply_async((1, 2), link=link)
    assert parent.get(timeout=10) == 3
    callback_id = _callback_id(link, parent.id)
    with pytest.raises(BoomError):
        app.AsyncResult(callback_id).get(timeout=10)


def test_replace_continues_the_chain_with_the_replacements_result(
        app: Conveyor, t: Any, worker: Consumer) -> None:
    result = chain(t.replacer.s(4), t.add.s(1))()
    # replacer(4) -> (4 + 1) * 10 = 50 under replacer's own id -> 51
    assert result.get(timeout=10) == 51
    assert result.parent.get(timeout=10) == 50


def test_replace_by_a_group_gives_the_list_under_the_tasks_id(
        app: Conveyor, t: Any, worker: Consumer) -> None:
    assert t.fan_out.delay(1).get(timeout=10) == [2, 3]
    assert chain(t.fan_out.s(1), t.total.s())().get(timeout=10) == 5


def test_replaying_a_dead_lettered_chain_step_runs_the_rest_of_the_chain(
        app: Conveyor, t: Any, worker: Consumer) -> None:
    from conveyor.dlq import replay

    result = chain(t.until_fixed.s(5), t.add.s(1), t.add.s(1))()
    with pytest.raises(BoomError):
        result.get(timeout=10)
    t.broken["on"] = False
    letters = app.broker.dead_letters(app.conf.task_default_queue)
    assert replay(app, letters).replayed == 1
    assert app.AsyncResult(result.id).get(timeout=10) == 7


def test_request_knows_its_place_in_the_workflow(app: Conveyor, t: Any,
                                                 worker: Consumer) -> None:
    result = chain(t.add.s(1, 1), chord([t.ids.s()], t.ident.s()))()
    (info,) = result.get(timeout=10)
    first = result.parent.parent
    assert info["root"] == first.id
    assert info["parent"] == first.id
    assert info["group"] == result.parent.id
    assert info["chord"] == {"id": result.parent.id, "n": 1}


def test_group_result_save_and_restore(app: Conveyor, t: Any, worker: Consumer) -> None:
    result = group(t.add.s(1, 1), group(t.add.s(2, 2), t.add.s(3, 3)))()
    result.save()
    again = GroupResult.restore(result.id, app=app)
    assert again is not None and again.id == result.id
    assert again.get(timeout=10) == [2, [4, 6]]
    assert again.ready() and again.successful() and not again.failed()
    assert again.completed_count() == 3


def test_handle_rebuilt_from_an_id_finds_its_parents(app: Conveyor, t: Any,
                                                     worker: Consumer) -> None:
    sent = chain(t.add.s(1, 1), chord([t.add.s(1), t.add.s(2)], t.total.s()))()
    assert sent.get(timeout=10) == 7
    again = app.AsyncResult(sent.id)
    header = again.parent
    assert isinstance(header, GroupResult) and header.id == sent.parent.id
    assert header.get(timeout=10) == [3, 4]
    assert header.parent.id == sent.parent.parent.id
    assert app.AsyncResult(header.parent.id).parent is None
    first = app.AsyncResult(sent.parent.parent.id)
    (child,) = first.children  # read from its record: the chord's header
    assert isinstance(child, GroupResult) and child.id == header.id
    from conveyor.canvas.tree import render, workflow

    assert any(line.startswith(f"child: {header.id} chord header 2 of 2 done")
               for line in render(workflow(app, first.id)))


def test_collect_walks_the_workflow(app: Conveyor, t: Any, worker: Consumer) -> None:
    result = chain(t.add.s(1, 1), t.add.s(1))()
    first = result.parent
    assert [v for _, v in first.collect(timeout=10)] == [2, 3]


def test_duplicate_delivery_of_a_finished_step_sends_the_next_step(
        app: Conveyor, t: Any, worker: Consumer) -> None:
    """The crash window: a step's outcome was stored, then its worker died before sending
    the next step. The redelivery is not run again, but it sends the next step."""
    from conveyor.record import TaskRecord

    flow = chain(t.add.s(1, 1), t.mul.s(10))
    result = flow.freeze()
    first = result.parent.id
    app.backend.store(TaskRecord(first, "SUCCESS", result=7).to_stored(), ttl=None)
    flow.apply_async()
    assert result.get(timeout=10) == 70  # from the stored 7: add(1, 1) did not run again


def test_duplicate_of_a_finished_chord_member_reissues_the_join_once(
        app: Conveyor, t: Any) -> None:
    """A worker that died after storing a header task's outcome, before joining: the
    redelivered duplicate joins for it; repeated joins count once; the body id is fixed."""
    from conveyor.canvas import followups
    from conveyor.canvas.engine import Launcher, freeze, push_down
    from conveyor.record import TaskRecord

    flow = chord([t.add.s(1, 1), t.add.s(2, 2)], t.record.s("body"))
    push_down(flow, "default")
    freeze(flow)
    launcher = Launcher(app, root="root")
    launcher.launch(flow.to_dict(), input=None, parent=None)
    members = [o.message for o in launcher.finish(lambda op: op())]
    for msg, value in zip(members, (2, 4), strict=True):
        app.backend.store(TaskRecord(msg.id, "SUCCESS", result=value).to_stored(), ttl=None)

    def reissue(msg: Any) -> list[str]:
        sent = followups.reissue(app, msg, app.backend.get(msg.id), lambda op: op())
        return [o.message.id for o in sent]

    assert reissue(members[0]) == []
    assert reissue(members[0]) == []  # the same member again: still one of two
    assert reissue(members[1]) == [flow.body.id]
    assert reissue(members[1]) == [flow.body.id]  # re-sent under the same id: runs once


def test_workflow_tree_shows_parents_and_chord_progress(app: Conveyor, t: Any,
                                                       worker: Consumer) -> None:
    from conveyor.canvas.tree import render, workflow

    result = chain(t.add.s(1, 1), chord([t.add.s(1), t.fail.s()], t.total.s()))()
    with pytest.raises(ChordError):
        result.get(timeout=10)
    header = result.parent
    tree = workflow(app, header.results[1].id)
    assert tree["parents"][0]["id"] == header.parent.id
    chord_info = tree["chord"]
    assert (chord_info["done"], chord_info["size"]) == (2, 2)
    assert chord_info["failed"] == [header.results[1].id]
    assert chord_info["body"] == result.id and chord_info["body_state"] == "FAILURE"
    lines = render(tree)
    assert any("2 of 2 header tasks done, 1 failed" in line for line in lines)


# -- eager --------------------------------------------------------------------------------------
def test_apply_runs_here_and_returns_an_eager_result(t: Any) -> None:
    ran = t.add.apply((1, 2))
    assert ran.get() == 3 and ran.successful() and ran.state == "SUCCESS"
    assert isinstance(ran, AsyncResult) and ran.name == t.add.name and ran.retries == 0
    assert t.flaky.apply().get() == 3  # autoretry_for runs again at once in eager mode
    failed = t.fail.apply()
    assert failed.failed() and isinstance(failed.result, BoomError)
    with pytest.raises(BoomError):
        failed.get()


def test_always_eager_runs_whole_workflows_in_process(app: Conveyor, t: Any) -> None:
    app.conf.task_always_eager = True
    assert t.add.delay(1, 2).get() == 3
    flow = chain(t.add.s(1, 1), group(t.add.s(1), t.mul.s(3)), t.total.s())
    assert flow.delay().get() == 9
    assert chord([t.add.s(1, 1), t.fail.s()], t.total.s())().failed()
    assert chain(t.replacer.s(4), t.add.s(1))().get() == 51
    app.conf.task_eager_propagates = True
    with pytest.raises(BoomError):
        t.fail.delay()


def _callback_id(link: Signature, parent: str) -> str:
    from conveyor.canvas.engine import derived_id

    assert link.id is not None
    return derived_id(link.id, parent)


def _wait(predicate: Any, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_cli_result_shows_the_workflow(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys
    import textwrap
    import threading
    import uuid

    from click.testing import CliRunner

    from conveyor.cli import cli

    name = f"canvascli_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
        from conveyor import Conveyor
        app = Conveyor("cli", broker="memory://{name}", backend="memory://{name}",
                       worker_poll_wait=0.2)

        @app.task
        def add(a, b):
            return a + b

        @app.task
        def fail(*args):
            raise ValueError("bad \\x1b[31m[red]input[/red]")

        @app.task
        def total(values):
            return sum(values)
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module(name)
    consumer = Consumer(mod.app, concurrency=2)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        result = chain(mod.add.s(1, 1), chord([mod.add.s(1), mod.fail.s()], mod.total.s()))()
        with pytest.raises(ChordError):
            result.get(timeout=10)
        failed = result.parent.results[1].id
        out = CliRunner().invoke(cli, ["result", failed, "-A", f"{name}:app"],
                                 catch_exceptions=False).output
        assert "2 of 2 header tasks done, 1 failed" in out
        assert f"body: {result.id}" in out and "\x1b" not in out
        data = json.loads(CliRunner().invoke(
            cli, ["result", result.id, "-A", f"{name}:app", "--json"]).output)
        assert data["workflow"]["chord"]["failed"] == [failed]
        assert data["workflow"]["parents"][0]["task"] == "chord header"
    finally:
        consumer.stop()
        thread.join(10)
        sys.modules.pop(name, None)
