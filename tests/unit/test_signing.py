"""Signed messages expire: a captured message cannot be replayed for ever."""

from __future__ import annotations

import time
import uuid

import pytest

from conveyor import Conveyor
from conveyor.exceptions import MessageDecodeError
from conveyor.message import Message
from conveyor.serialization import Signer
from conveyor.worker import TaskRunner


def _app(**settings: object) -> Conveyor:
    name = uuid.uuid4().hex
    return Conveyor("sign", broker=f"memory://{name}", backend=f"memory://{name}",
                    task_signing_key="k", task_default_queue="q", **settings)


def test_a_signed_message_older_than_task_signing_max_age_is_dead_lettered_not_run() -> None:
    app = _app(task_signing_max_age=0.3)
    ran: list[int] = []

    @app.task
    def transfer() -> None:
        ran.append(1)

    transfer.delay()
    time.sleep(0.5)  # e.g. captured, and sent again later
    [res] = app.broker.reserve(["q"], lease=5)
    TaskRunner(app, hostname="test").handle(res)
    assert ran == []
    [letter] = app.broker.dead_letters("q")
    assert "task_signing_max_age" in letter.reason


def test_a_delayed_signed_message_counts_its_age_from_its_eta() -> None:
    app = _app(task_signing_max_age=0.3)
    ran: list[int] = []

    @app.task
    def later() -> None:
        ran.append(1)

    later.apply_async(countdown=0.6)
    time.sleep(0.7)
    [res] = app.broker.reserve(["q"], lease=5)
    TaskRunner(app, hostname="test").handle(res)
    assert ran == [1]


def test_the_signing_time_cannot_be_changed_without_the_key() -> None:
    signer = Signer("k", max_age=60)
    data = signer.sign(b'{"v":1}')
    head, _, body = data.partition(b":")[2].partition(b":")
    digest = head.partition(b".")[0]
    forged = b"conveyor-hmac1:" + digest + b"." + repr(time.time() + 1000).encode() + b":" + body
    with pytest.raises(MessageDecodeError, match="does not verify"):
        signer.verify(forged)
    assert signer.verify(data) == body


def test_without_max_age_old_signed_messages_still_decode() -> None:
    signer = Signer("k")
    msg = Message(id="i", task="t", sent_at=1.0)
    assert Message.decode(msg.encode(signer), signer).id == "i"
