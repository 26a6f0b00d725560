"""Tasks the end-to-end conformance class runs (:mod:`conveyor.testing.e2e`).

Shipped in the package so ``conveyor worker -A conveyor.testing.e2e_tasks:app`` works from
any installation. URLs come from the environment (``CONVEYOR_BROKER_URL`` /
``CONVEYOR_BACKEND_URL``), as for any worker.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from conveyor import Conveyor

app = Conveyor("conveyor-conformance")


@app.task
def add(a: int, b: int) -> int:
    """a + b."""
    return a + b


@app.task
def mul(a: int, b: int) -> int:
    """a * b."""
    return a * b


@app.task
def nap(seconds: float, marker: str | None = None) -> dict[str, float | str]:
    """Sleep ``seconds``; touch ``marker`` (holding the pid) first. Says when and where."""
    started = time.time()
    if marker:
        Path(marker).write_text(str(os.getpid()))
    time.sleep(seconds)
    return {"started": started, "finished": time.time(), "pid": str(os.getpid())}


@app.task(bind=True, max_retries=2)
def always_fails(self, countdown: float) -> None:  # type: ignore[no-untyped-def]
    """Raise ValueError('boom') and retry after ``countdown`` s, until retries run out."""
    try:
        raise ValueError("boom")
    except ValueError as exc:
        raise self.retry(exc=exc, countdown=countdown) from exc
