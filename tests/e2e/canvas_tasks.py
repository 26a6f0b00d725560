"""Tasks for the canvas end-to-end tests (registered on ``e2e_tasks.app``, which imports
this module so the workers know them)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from e2e_tasks import app


class CanvasTestError(Exception):
    """The failure the canvas tests expect to see again."""


@app.task
def total(values: list[Any]) -> int:
    return sum(v if isinstance(v, int) else sum(v) for v in values)


@app.task
def explode(*args: Any) -> None:
    raise CanvasTestError("exploded on purpose")


@app.task
def note(*args: Any, path: str) -> list[Any]:
    """Append one line to ``path`` per run (to count runs across processes)."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()} {args!r}\n")
    return list(args)


@app.task
def errback(request: Any, exc: BaseException, traceback: str | None, *, path: str) -> str:
    with open(path, "a") as f:
        f.write(f"{request.id} {type(exc).__name__} {exc}\n")
    return str(request.id)


@app.task
def slow_add(a: int, b: int, seconds: float, marker: str | None = None) -> int:
    if marker:
        Path(marker).touch()
    time.sleep(seconds)
    return a + b


@app.task(bind=True)
def replaced_by_chain(self: Any, x: int) -> None:
    from e2e_tasks import add, mul

    from conveyor import chain

    raise self.replace(chain(add.s(x, 1), mul.s(10)))
