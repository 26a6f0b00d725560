"""The Celery side of the benchmark: the same no-op task with Celery's defaults.

``bench/run.py`` sets ``BENCH_CELERY_BROKER_URL`` and ``BENCH_CELERY_BACKEND_URL`` (Redis
databases of their own, or for ``--pg-peers`` kombu's SQLAlchemy transport
``sqla+postgresql+psycopg://`` and the ``db+postgresql+psycopg://`` result backend).
``BENCH_CELERY_POLLING_INTERVAL`` (seconds), when set, is the SQLAlchemy transport's
``polling_interval`` (kombu's default is 1 s, which an idle worker sleeps between polls);
nothing else is configured.
"""

import os

from celery import Celery

app = Celery("celery_app",
             broker=os.environ.get("BENCH_CELERY_BROKER_URL", "redis://127.0.0.1:6379/2"),
             backend=os.environ.get("BENCH_CELERY_BACKEND_URL", "redis://127.0.0.1:6379/3"))
if os.environ.get("BENCH_CELERY_POLLING_INTERVAL"):
    # The SQLAlchemy transport hands every transport option to create_engine(), which
    # refuses ``polling_interval``; the transport class's own default is set instead.
    from kombu.transport.sqlalchemy import Transport

    Transport.polling_interval = float(os.environ["BENCH_CELERY_POLLING_INTERVAL"])


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
