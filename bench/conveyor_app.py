"""The conveyor side of the benchmark: one no-op task.

``bench/run.py`` points it at the server under test through ``CONVEYOR_BROKER_URL`` and
``CONVEYOR_BACKEND_URL``; everything else is conveyor's defaults (late ack, leases, STARTED
and results stored, PENDING stored at send time).
"""

from conveyor import Conveyor

app = Conveyor("bench")


@app.task
def add(x: int, y: int) -> int:
    """Return ``x + y``: the work is nil, so the figures measure the queue."""
    return x + y


@app.task
def stamp(i: int) -> float:
    """A no-op chord header task: returns when it ran."""
    import time

    return time.time()


@app.task
def chord_body(values: list[float]) -> dict[str, float]:
    """A chord body: when it started, and when the last header task finished."""
    import time

    return {"started": time.time(), "header_done": max(values, default=0.0), "n": len(values)}
