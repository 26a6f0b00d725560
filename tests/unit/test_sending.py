"""What a producer writes: ids, the wire form of messages and PENDING records."""

from __future__ import annotations

import uuid

from conveyor import Conveyor
from conveyor.ids import new_id
from conveyor.message import Message
from conveyor.record import TaskRecord
from conveyor.serialization import Signer


def test_new_ids_are_distinct_canonical_uuid4_strings() -> None:
    ids = [new_id() for _ in range(20000)]
    assert len(set(ids)) == len(ids)
    for text in ids[:2000]:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_pending_records_survive_awkward_names() -> None:
    app = Conveyor("t", broker="memory://pending-names", backend="memory://pending-names")
    awkward = 'quote " back \\ tab \t newline \n é 漢 \x01'
    task_id = 'quote " back \\ é 漢'  # control characters are refused in task ids
    out = app.build_message(awkward, [1], None, queue=awkward, task_id=task_id,
                            group=awkward + "g", parent=awkward + "p")
    [stored] = app.pending_records([out, app.build_message("plain", [], None)])[:1]
    record = TaskRecord.from_stored(stored)
    assert (record.task_id, record.state, record.task, record.queue) == (
        task_id, "PENDING", awkward, awkward)
    assert (record.group, record.parent) == (awkward + "g", awkward + "p")
    assert record.updated_at == out.message.sent_at


def test_a_message_round_trips_with_every_field_set_and_with_none() -> None:
    signer = Signer(None)
    full = Message(id="i", task="t", args=[1, "x"], kwargs={"k": [2]}, content_type="json",
                   retries=2, eta=12.5, expires=99.0, max_retries=5,
                   callbacks=[{"task": "n"}], chain_ids=["c"], group="g", parent="p",
                   history=[{"number": 1}], sent_at=3.25)
    back = Message.decode(full.encode(signer), signer)
    assert (back.id, back.task, back.args, back.kwargs) == ("i", "t", [1, "x"], {"k": [2]})
    assert [back.callbacks, back.chain_ids, back.history] == [
        list(full.callbacks), list(full.chain_ids), list(full.history)]
    assert (back.retries, back.eta, back.expires, back.max_retries, back.group,
            back.parent, back.sent_at) == (2, 12.5, 99.0, 5, "g", "p", 3.25)
    bare = Message(id="i", task="t", args=[], kwargs={})
    # Fields at their defaults are left off the wire, and read back as their defaults.
    wire = bare.encode(signer)
    assert wire == b'{"v":1,"id":"i","task":"t","args":[],"kwargs":{},"sent_at":0.0}'
    again = Message.decode(wire, signer)
    assert (again.retries, again.eta, again.callbacks, again.history) == (0, None, (), ())
