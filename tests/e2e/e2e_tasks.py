"""Tasks run by the end-to-end workers. The worker imports this with ``-A e2e_tasks:app``
from this directory; URLs come from ``CONVEYOR_BROKER_URL`` / ``CONVEYOR_BACKEND_URL``."""

from __future__ import annotations

import os
import time
from pathlib import Path

from conveyor import Conveyor

app = Conveyor("e2e")


@app.task
def add(a: int, b: int) -> int:
    return a + b


@app.task
def mul(a: int, b: int) -> int:
    return a * b


@app.task
def nap(seconds: float, marker: str | None = None) -> dict[str, float | str]:
    """Sleep, reporting when it ran and where; touches ``marker`` when it starts."""
    started = time.time()
    if marker:
        Path(marker).write_text(str(os.getpid()))
    time.sleep(seconds)
    return {"started": started, "finished": time.time(), "pid": str(os.getpid())}


@app.task(bind=True, max_retries=3)
def always_fails(self, countdown: float) -> None:  # type: ignore[no-untyped-def]
    try:
        raise ValueError("boom")
    except ValueError as exc:
        raise self.retry(exc=exc, countdown=countdown) from exc


@app.task(autoretry_for=(KeyError,), max_retries=2, retry_backoff=0.1, retry_jitter=False)
def flaky_until(marker: str, failures: int) -> int:
    """Fails with KeyError ``failures`` times (counted in ``marker``), then succeeds."""
    path = Path(marker)
    count = int(path.read_text()) if path.exists() else 0
    path.write_text(str(count + 1))
    if count < failures:
        raise KeyError(f"attempt {count + 1}")
    return count + 1
