"""The batch send path (``Task.map`` through ``Conveyor.build_many``) and the encoders it
uses: each message is what sending it alone would give, and the wire form is unchanged."""

from __future__ import annotations

import gc
import json
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.exceptions import SerializationError, TaskOptionError
from conveyor.message import Message
from conveyor.record import TaskRecord
from conveyor.serialization import Signer, dumps_json

#: Message's fields with their defaults, as the encoder before the template wrote them.
_DEFAULTS = {"content_type": "json", "retries": 0, "eta": None, "expires": None,
             "max_retries": None, "callbacks": (), "chain_ids": (), "group": None,
             "parent": None, "history": (), "priority": 0, "canvas": None, "argsrepr": None,
             "kwargsrepr": None, "message_group": None}


def _dict_encoding(msg: Message) -> bytes:
    """The wire form as one ``json`` encode of a dict (what older producers sent)."""
    data: dict[str, Any] = {"v": 1, "id": msg.id, "task": msg.task, "args": msg.args,
                            "kwargs": msg.kwargs, "sent_at": msg.sent_at}
    for name, default in _DEFAULTS.items():
        value = getattr(msg, name)
        if value != default and not (default == () and not value):
            data[name] = value
    return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()


@pytest.mark.parametrize("msg", [
    Message(id="a", task="t", sent_at=1.5),
    Message(id='q " \\ é 漢', task="t\u2028x", args=[1, "x", None, 2.5, [True]],
            kwargs={"k": {"n": [1]}}, sent_at=12, content_type="pickle", retries=2, eta=3.0,
            expires=4.0, max_retries=5, callbacks=({"a": 1},), chain_ids=("c",), group="g",
            parent="p", history=({"n": 1},), priority=3, canvas={"root": "r"},
            argsrepr="(..)", kwargsrepr="{}", message_group="mg"),
])
def test_the_wire_form_is_byte_for_byte_the_dict_encoding(msg: Message) -> None:
    body = msg.encode(Signer(None))
    assert body == _dict_encoding(msg)
    back = Message.decode(body, Signer(None))
    assert (back.id, back.task, back.args, back.kwargs, back.group) == (
        msg.id, msg.task, msg.args, msg.kwargs, msg.group)


@pytest.mark.parametrize("bad", [
    Message(id="a", task="t", args=[object()]),
    Message(id="a", task="t", kwargs={"x": float("inf")}),
    Message(id="a", task="t", sent_at=float("nan")),
])
def test_unencodable_messages_raise_serialization_error(bad: Message) -> None:
    with pytest.raises(SerializationError, match="cannot encode as JSON"):
        bad.encode(Signer(None))


def test_a_value_containing_itself_is_refused_and_later_encodes_still_work() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(SerializationError, match="contains itself"):
        dumps_json({"a": loop})
    # Nothing of the failed encode is left behind: the same objects encode once fixed.
    loop.pop()
    assert dumps_json({"a": loop}) == b'{"a":[1]}'


def test_map_sends_what_one_build_message_per_argument_tuple_gives() -> None:
    app = Conveyor("t", broker="memory://batch-same", backend="memory://batch-same")
    batch = app.build_many("tasks.add", [(1, 2), [3], None, ()], queue="q", countdown=5,
                           priority=4, expires=60, max_retries=2, argsrepr="(...)",
                           group="g", parent="p")
    alone = app.build_message("tasks.add", (1, 2), None, queue="q", countdown=5, priority=4,
                              expires=60, max_retries=2, argsrepr="(...)", group="g",
                              parent="p")
    assert [o.message.args for o in batch] == [[1, 2], [3], [], []]
    assert len({o.message.id for o in batch}) == 4
    skip = {"id", "args", "sent_at", "eta", "expires"}
    for o in batch:
        assert (o.queue, o.delay) == pytest.approx((alone.queue, alone.delay), abs=0.5)
        for name in Message.__slots__:
            if name not in skip:
                assert getattr(o.message, name) == getattr(alone.message, name), name
        assert o.message.eta == pytest.approx(alone.message.eta, abs=0.5)
        assert o.message.expires == pytest.approx(alone.message.expires, abs=0.5)


def test_build_many_checks_options_and_refuses_one_id_for_many() -> None:
    app = Conveyor("t", broker="memory://batch-opts", backend="memory://batch-opts")
    with pytest.raises(TaskOptionError, match="own id"):
        app.build_many("t", [(1,), (2,)], task_id="same")
    with pytest.raises(TaskOptionError, match="countdown"):
        app.build_many("t", [(1,)], countdown=-1)
    with pytest.raises(TaskOptionError, match="queue"):
        app.build_many("t", [(1,)], queue=" ")
    assert app.build_many("t", []) == []


def test_build_many_routes_each_message_on_its_arguments() -> None:
    app = Conveyor("t", broker="memory://batch-routes", backend="memory://batch-routes")

    def by_size(name: str, args: Any, kwargs: Any, options: Any, task: Any = None,
                **kw: Any) -> dict[str, Any]:
        return {"queue": "big" if args[0] > 10 else "small", "priority": 7}

    app.conf.task_routes = [by_size]
    batch = app.build_many("t", [(1,), (50,), (2,)])
    assert [o.queue for o in batch] == ["small", "big", "small"]
    assert {o.message.priority for o in batch} == {7}


def test_map_sends_every_message_with_its_pending_record() -> None:
    app = Conveyor("t", broker="memory://batch-map", backend="memory://batch-map")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    result = add.map([(i, i) for i in range(50)], queue="mq")
    ids = [r.id for r in result]
    assert len(set(ids)) == 50
    taken = app.broker.reserve(["mq"], lease=30, limit=100)
    messages = {m.id: m for m in (Message.decode(r.body, app.signer) for r in taken)}
    assert set(messages) == set(ids)
    assert all(messages[i].group == result.id for i in ids)
    assert [messages[i].args for i in ids] == [[i, i] for i in range(50)]
    app.flush_pending()
    for task_id in ids:
        record = app.record(task_id)
        assert record is not None
        assert (record.state, record.queue, record.group) == ("PENDING", "mq", result.id)


def test_pending_records_of_a_mixed_batch_each_carry_their_own_fields() -> None:
    app = Conveyor("t", broker="memory://batch-pending", backend="memory://batch-pending")
    outs = [app.build_message("a", [], None, queue="q1", group="g1"),
            app.build_message("a", [], None, queue="q1", group="g1"),
            app.build_message("b", [], None, queue="q2", parent="p"),
            *app.build_many("c", [(1,), (2,)], queue="q3", group="g3")]
    records = [TaskRecord.from_stored(s) for s in app.pending_records(outs)]
    assert [(r.task_id, r.task, r.queue, r.group, r.parent) for r in records] == [
        (o.message.id, o.message.task, o.queue, o.message.group, o.message.parent)
        for o in outs]
    assert [r.updated_at for r in records] == [o.message.sent_at for o in outs]


def test_map_leaves_the_cyclic_collector_as_it_found_it() -> None:
    app = Conveyor("t", broker="memory://batch-gc", backend="memory://batch-gc")

    @app.task
    def echo(x: Any) -> Any:
        return x

    assert gc.isenabled()
    echo.map([(1,), (2,)])
    assert gc.isenabled()
    with pytest.raises(SerializationError):
        echo.map([(1,), (object(),)])
    assert gc.isenabled()
    gc.disable()
    try:
        echo.map([(1,)])
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_build_many_builds_the_same_messages_by_keyword(monkeypatch: pytest.MonkeyPatch) -> None:
    # The keyword form is what build_many falls back to if Message's fields are reordered.
    import conveyor.app

    app = Conveyor("t", broker="memory://batch-kw", backend="memory://batch-kw")
    fast = app.build_many("t", [(1,), (2,)], queue="q", priority=3, group="g")
    monkeypatch.setattr(conveyor.app, "_POSITIONAL", False)
    slow = app.build_many("t", [(1,), (2,)], queue="q", priority=3, group="g")
    for a, b in zip(fast, slow, strict=True):
        for name in Message.__slots__:
            if name not in {"id", "sent_at"}:
                assert getattr(a.message, name) == getattr(b.message, name), name
