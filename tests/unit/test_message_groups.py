"""``message_group``: carried by the message, passed only to brokers declaring it."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.exceptions import TaskOptionError
from conveyor.message import Message
from conveyor.serialization import Signer


def test_group_travels_in_the_message_and_only_declaring_brokers_get_the_keyword() -> None:
    app = Conveyor("groups", broker="memory://groups-core", backend="memory://")
    sent: list[dict[str, Any]] = []
    broker = app.broker
    original = broker.enqueue

    def spy(queue: str, message: bytes, **options: Any) -> str:
        sent.append(options)
        return original(queue, message, **options)

    broker.enqueue = spy  # type: ignore[method-assign]

    @app.task(message_group="orders")
    def place(n: int) -> int:
        return n

    place.delay(1)
    place.apply_async((2,), message_group="customer-7")
    assert broker.capabilities.message_groups is False
    assert all("message_group" not in options for options in sent)  # memory lacks groups
    [first, second] = [Message.decode(r.body, Signer(None))
                       for r in broker.reserve(["default"], lease=5, limit=2)]
    assert (first.message_group, second.message_group) == ("orders", "customer-7")
    with pytest.raises(TaskOptionError, match="message_group"):
        place.apply_async((3,), message_group="has space")
    app.close()
