"""Tasks run by the end-to-end workers. The worker imports this with ``-A e2e_tasks:app``
from this directory; URLs come from ``CONVEYOR_BROKER_URL`` / ``CONVEYOR_BACKEND_URL``."""

from __future__ import annotations

import os
import time
from pathlib import Path

from conveyor import Conveyor
from conveyor.testing import e2e_tasks as shipped

app = Conveyor("e2e")

# The shipped end-to-end conformance tasks' bodies (conveyor.testing.e2e_tasks), registered on
# this app under this module's names (e2e_tasks.add, ...), which the tests and the dashboard's
# filters use; always_fails retries 3 times here, 2 in the shipped suite.
add = app.task(name="e2e_tasks.add")(shipped.add.fn)
mul = app.task(name="e2e_tasks.mul")(shipped.mul.fn)
nap = app.task(name="e2e_tasks.nap")(shipped.nap.fn)
always_fails = app.task(name="e2e_tasks.always_fails", bind=True,
                        max_retries=3)(shipped.always_fails.fn)


@app.task(autoretry_for=(KeyError,), max_retries=2, retry_backoff=0.1, retry_jitter=False)
def flaky_until(marker: str, failures: int) -> int:
    """Fails with KeyError ``failures`` times (counted in ``marker``), then succeeds."""
    path = Path(marker)
    count = int(path.read_text()) if path.exists() else 0
    path.write_text(str(count + 1))
    if count < failures:
        raise KeyError(f"attempt {count + 1}")
    return count + 1


import canvas_tasks  # noqa: E402, F401 - registers the canvas tests' tasks on this app


# -- the task runtime (tests/e2e/test_runtime.py) ---------------------------------------------
@app.task(soft_time_limit=0.5)
def soft_limited() -> str:
    from conveyor.exceptions import SoftTimeLimitExceeded

    try:
        for _ in range(1000):
            time.sleep(0.01)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "never limited"


@app.task(time_limit=1.0)
def stuck(marker: str) -> None:
    """Blocks in one long C call: only the hard limit can end it."""
    Path(marker).write_text(str(os.getpid()))
    time.sleep(60)


@app.task(rate_limit="5/s")
def limited() -> float:
    return time.time()


@app.task
def ranked(tag: str) -> float:
    time.sleep(0.05)
    return time.time()


@app.task(bind=True)
def reports_progress(self, marker: str) -> str:  # type: ignore[no-untyped-def]
    self.update_state(state="PROGRESS", meta={"step": 1})
    path = Path(marker)
    while not path.exists():
        time.sleep(0.05)
    return "done"


@app.task
def counted(marker: str) -> int:
    """Appends a line to ``marker`` on every run; returns the lines so far."""
    with open(marker, "a") as f:
        f.write("ran\n")
    return len(Path(marker).read_text().splitlines())


def _log_signal(signal: object, sender: object, **kw: object) -> None:
    with open(os.environ["CONVEYOR_E2E_SIGNAL_LOG"], "a") as log:
        log.write(f"{getattr(signal, 'name', signal)}\n")


if os.environ.get("CONVEYOR_E2E_SIGNAL_LOG"):
    from conveyor import signals as _signals

    for _sig in (_signals.worker_process_init, _signals.worker_ready, _signals.task_prerun,
                 _signals.task_success, _signals.task_postrun, _signals.worker_shutdown):
        _sig.connect(_log_signal)


# -- poison messages (tests/e2e/test_faults.py) ----------------------------------------------
@app.task
def kill_worker(marker: str) -> None:
    """Kills the worker process running it, on every delivery: a poison message."""
    with open(marker, "a") as f:
        f.write("ran\n")
    os._exit(1)


# -- revoke(terminate=True) (tests/e2e/test_runtime.py) --------------------------------------
@app.task
def runs_until_ended(marker: str) -> str:
    """Writes "started", then runs for up to 60 s in short steps (Python code between them, so
    an exception raised into its thread lands), then writes "finished"."""
    path = Path(marker)
    path.write_text("started\n")
    for _ in range(1200):
        time.sleep(0.05)
    with path.open("a") as f:
        f.write("finished\n")
    return "finished"
