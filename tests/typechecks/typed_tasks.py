"""Checked by mypy (tests/unit/test_typing.py), never run: what the task decorators carry."""

from __future__ import annotations

from typing import Any, assert_type

from conveyor import AsyncResult, Conveyor, Task, shared_task

app = Conveyor("typed", broker="memory://typed", backend="memory://typed")


@app.task
def add(a: int, b: int) -> int:
    return a + b


@app.task(queue="mail", max_retries=3)
def send(to: str, *, subject: str = "") -> bool:
    return bool(to and subject)


@app.task(bind=True)
def bound(self: Task[Any, Any], order: int) -> str:
    return f"{self.name}:{order}"


@shared_task
def shared(x: float) -> list[float]:
    return [x]


@shared_task(bind=True)
def shared_bound(self: Any, x: int) -> int:
    return x


assert_type(add(1, 2), int)
assert_type(add.delay(1, 2), AsyncResult[int])
assert_type(add.delay(1, 2).get(timeout=1), int)
assert_type(add.delay(1, 2).get(propagate=False), int | BaseException)
assert_type(add.apply_async((1, 2), countdown=5), AsyncResult[int])
assert_type(send.delay("a@b", subject="hi").get(), bool)
assert_type(bound.delay(7), AsyncResult[str])
assert_type(bound(7), str)
assert_type(shared.delay(1.5).get(), list[float])
assert_type(shared_bound.delay(1).get(), int)
assert_type(app.AsyncResult("some-id").get(), Any)
assert_type(app.send_task("typed.add", (1, 2)).get(), Any)
