"""The procrastinate side of the PostgreSQL comparison: one no-op task, and its worker.

    BENCH_PROCRASTINATE_DSN=postgresql://... python procrastinate_app.py

``BENCH_PROCRASTINATE_DSN`` names the database, for the worker and for producers alike.
The worker is procrastinate's own (``App.run_worker_async``) with ``concurrency=2`` on the
``default`` queue; everything else is its default (LISTEN/NOTIFY on, finished jobs kept
with status ``succeeded``, no return value stored).
"""

from __future__ import annotations

import asyncio
import os

from procrastinate import App, PsycopgConnector

app = App(connector=PsycopgConnector(conninfo=os.environ.get("BENCH_PROCRASTINATE_DSN", "")))


@app.task(name="add", queue="default")
async def add(x: int, y: int) -> int:
    """Return ``x + y``: the work is nil, so the figures measure the queue."""
    return x + y


async def serve() -> None:
    async with app.open_async():
        await app.run_worker_async(queues=["default"], concurrency=2)


if __name__ == "__main__":
    asyncio.run(serve())
