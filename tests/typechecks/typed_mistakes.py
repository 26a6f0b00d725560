"""Checked by mypy (tests/unit/test_typing.py), never run: each line marked ``# error:`` must
be rejected, with that error code, and no other line may be."""

from __future__ import annotations

from typing import Any

from conveyor import Conveyor, Task, shared_task

app = Conveyor("typed", broker="memory://typed", backend="memory://typed")


@app.task
def add(a: int, b: int) -> int:
    return a + b


@app.task(bind=True)
def bound(self: Task[Any, Any], order: int) -> str:
    return str(order)


@shared_task
def shared(x: float) -> float:
    return x


add.delay("a", "b")  # error: arg-type
add.delay(1)  # error: call-arg
add.delay(1, 2, 3)  # error: call-arg
add.delay(1, c=2)  # error: call-arg
add(1, "2")  # error: arg-type
text: str = add.delay(1, 2).get()  # error: assignment
bound.delay("seven")  # error: arg-type
bound.delay()  # error: call-arg
length: int = bound.delay(7).get()  # error: assignment
shared.delay("x")  # error: arg-type
