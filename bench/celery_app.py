"""The Celery side of the benchmark: the same no-op task with Celery's defaults.

``bench/run.py`` sets ``BENCH_CELERY_BROKER_URL`` and ``BENCH_CELERY_BACKEND_URL`` (Redis
databases of their own); nothing else is configured.
"""

import os

from celery import Celery

app = Celery("celery_app",
             broker=os.environ.get("BENCH_CELERY_BROKER_URL", "redis://127.0.0.1:6379/2"),
             backend=os.environ.get("BENCH_CELERY_BACKEND_URL", "redis://127.0.0.1:6379/3"))


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
